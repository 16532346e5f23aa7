"""A fast webhook receiver for benchmarks, run in its own process.

``python -m bench.sink --hook NAME=SECRET ...`` prints ``PORT <n>`` once it
listens on 127.0.0.1, answers every ``POST /hooks/<name>`` with 204 at once
and records the receipt time (``time.monotonic()``) of each ``webhook-id``.
It verifies a sample of the signatures (the first 50 per webhook, then every
``--verify-every``-th) with poller's own ``SigningKey``.

- ``GET /_stats``: counts, duplicates, first/last receipt, verified/invalid
- ``GET /_receipts``: ``{webhook-id: first receipt time}`` (all webhooks)
- ``POST /_reset``: forget everything (between runs)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from aiohttp import web

from bench.procs import serve_until_signalled
from poller.signing import InvalidSignature, SigningKey

_VERIFY_FIRST = 50


class Sink:
    """Counts deliveries per webhook, first receipt per id, and signature checks."""

    def __init__(self, keys: dict[str, SigningKey], verify_every: int) -> None:
        self.keys = keys
        self.verify_every = verify_every
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.per_hook: dict[str, int] = dict.fromkeys(self.keys, 0)
        self.seen: set[tuple[str, str]] = set()
        self.duplicates = 0
        self.receipts: dict[str, float] = {}
        self.first: float | None = None
        self.last: float | None = None
        self.verified = 0
        self.invalid = 0
        self.unknown = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self.hook)
        app.router.add_get("/_stats", self.stats)
        app.router.add_get("/_receipts", self.receipt_times)
        app.router.add_post("/_reset", self.reset_handler)
        return app

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic()
        name = request.match_info["name"]
        key = self.keys.get(name)
        if key is None:
            self.unknown += 1
            return web.Response(status=404)
        msg_id = request.headers.get("webhook-id", "")
        n = self.per_hook[name]
        self.per_hook[name] = n + 1
        self.count += 1
        if self.first is None:
            self.first = now
        self.last = now
        if (name, msg_id) in self.seen:
            self.duplicates += 1
        else:
            self.seen.add((name, msg_id))
        self.receipts.setdefault(msg_id, now)
        if n < _VERIFY_FIRST or n % self.verify_every == 0:
            try:
                key.verify(request.headers, body)
                self.verified += 1
            except InvalidSignature:
                self.invalid += 1
        return web.Response(status=204)

    async def stats(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "count": self.count,
                "unique": len(self.seen),
                "per_hook": self.per_hook,
                "duplicates": self.duplicates,
                "first": self.first,
                "last": self.last,
                "verified": self.verified,
                "invalid": self.invalid,
                "unknown": self.unknown,
            }
        )

    async def receipt_times(self, _request: web.Request) -> web.Response:
        return web.json_response(self.receipts)

    async def reset_handler(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.Response(status=204)


async def serve(sink: Sink, port: int) -> None:
    await serve_until_signalled(sink.app(), port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hook", action="append", default=[], help="NAME=whsec_... (repeat)")
    parser.add_argument("--verify-every", type=int, default=200)
    args = parser.parse_args(argv)
    keys = {}
    for spec in args.hook:
        name, _, secret = spec.partition("=")
        keys[name] = SigningKey.from_secret(secret)
    asyncio.run(serve(Sink(keys, max(1, args.verify_every)), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
