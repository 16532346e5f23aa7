"""The baseline: the same HTTP work as the daemon, with no store and no scheduler.

Run in its own process so that its CPU is measured exactly like the daemon's::

    python -m bench.baseline poll --api URL --rooms N --concurrency 32 --duration S
    python -m bench.baseline deliver --sink URL --hook NAME=SECRET ... --events N

It prints ``READY`` when set up, starts on a ``go`` line on stdin, prints
``DONE <count> <seconds>`` when finished and exits at the next line or EOF,
so the parent can read ``/proc/<pid>/stat`` around exactly the measured work.

- poll: rounds over every room, one GET per room (following ``next``), the
  JSON parsed, at most ``--concurrency`` requests in flight.
- deliver: one Standard Webhooks-signed POST per (event, webhook), at most
  ``--concurrency`` in flight per webhook, like the daemon's per-webhook limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp

from bench.events import EVENT_TYPE, backlog, compact, room_ids
from poller import __version__
from poller.signing import SigningKey

USER_AGENT = f"poller-baseline/{__version__}"


async def _line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def poll(api: str, rooms: list[str], concurrency: int, duration: float) -> int:
    """GET every room's events round after round for ``duration`` seconds; return the polls."""
    url = api.rstrip("/") + "/analytics/events"
    timeout = aiohttp.ClientTimeout(total=10)
    polls = 0
    position = 0
    deadline = time.monotonic() + duration
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency * 2),
        headers={"User-Agent": USER_AGENT},
    ) as session:

        async def worker() -> None:
            nonlocal polls, position
            while time.monotonic() < deadline:
                room = rooms[position % len(rooms)]
                position += 1
                query = [("room_id", room), ("type", EVENT_TYPE), ("limit", "100")]
                start: str | None = None
                for _ in range(1000):  # pages of one poll, bounded
                    params = query if start is None else [*query, ("start", start)]
                    async with session.get(
                        url,
                        params=params,
                        headers={"Authorization": "Bearer baseline"},
                        timeout=timeout,
                    ) as resp:
                        body = await resp.read()
                    doc = json.loads(body)
                    start = doc.get("next") or None
                    if start is None:
                        break
                polls += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return polls


async def deliver(
    sink: str, hooks: dict[str, SigningKey], bodies: list[tuple[str, bytes]], concurrency: int
) -> int:
    """POST every body to every webhook, signed; return the 2xx answers."""
    timeout = aiohttp.ClientTimeout(total=10)
    ok = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency * len(hooks) + 4)
    ) as session:

        async def worker(url: str, key: SigningKey, queue: list[tuple[str, bytes]]) -> None:
            nonlocal ok
            while queue:
                msg_id, body = queue.pop()
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    **key.headers(msg_id, body),
                }
                async with session.post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    await resp.content.read(64 * 1024)
                    if 200 <= resp.status < 300:
                        ok += 1

        workers = []
        for name, key in hooks.items():
            queue = list(reversed(bodies))
            url = f"{sink.rstrip('/')}/hooks/{name}"
            workers += [worker(url, key, queue) for _ in range(concurrency)]
        await asyncio.gather(*workers)
    return ok


async def _run(work: Callable[[], Awaitable[int]]) -> None:
    print("READY", flush=True)
    await _line()
    started = time.monotonic()
    count = await work()
    print(f"DONE {count} {time.monotonic() - started:.6f}", flush=True)
    await _line()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("poll")
    p.add_argument("--api", required=True)
    p.add_argument("--rooms", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, required=True)
    d = sub.add_parser("deliver")
    d.add_argument("--sink", required=True)
    d.add_argument("--hook", action="append", default=[], help="NAME=whsec_... (repeat)")
    d.add_argument("--events", type=int, required=True)
    d.add_argument("--backlog-rooms", type=int, default=100)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)

    if args.mode == "poll":
        rooms = room_ids(args.rooms)
        asyncio.run(_run(lambda: poll(args.api, rooms, args.concurrency, args.duration)))
        return 0
    hooks = {}
    for spec in args.hook:
        name, _, secret = spec.partition("=")
        hooks[name] = SigningKey.from_secret(secret)
    events = backlog(room_ids(args.backlog_rooms), args.events, args.seed)
    bodies = [(event["id"], compact(event).encode()) for _, event in events]
    asyncio.run(_run(lambda: deliver(args.sink, hooks, bodies, args.concurrency)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
