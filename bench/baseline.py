"""The baseline: the same HTTP work as the daemon, with no store and no scheduler.

Run in its own process so that its CPU is measured exactly like the daemon's::

    python -m bench.baseline poll --api URL --rooms N --concurrency 32 --duration S
    python -m bench.baseline walk --api URL --rooms N --duration S --interval I
    python -m bench.baseline walk-deliver --api URL --rooms N --sink URL --hook NAME=SECRET
    python -m bench.baseline deliver --sink URL --hook NAME=SECRET ... --events N

It prints ``READY`` when set up, starts on a ``go`` line on stdin, prints
``DONE <count> <seconds>`` when finished and exits at the next line or EOF,
so the parent can read ``/proc/<pid>/stat`` around exactly the measured work.

- poll: rounds over every room, one query per room (every page, following
  ``next``), each page parsed, at most ``--concurrency`` requests in flight.
  Counts queries.
- walk: the same queries, but each room walked once every ``--interval``
  seconds (starts spread evenly, as the daemon's are). Counts pages.
- walk-deliver: every room walked once; every event of every page POSTed,
  signed, to every webhook (``--deliver-concurrency`` in flight per webhook)
  as soon as its page is parsed. Counts 2xx answers.
- deliver: one Standard Webhooks-signed POST per (event, webhook), at most
  ``--concurrency`` in flight per webhook, like the daemon's per-webhook limit.

Pages are parsed with ``msgspec.json.decode`` (``--parser json``: the stdlib),
the library the daemon parses with, so a ratio measures our own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp
import msgspec

from bench.events import EVENT_TYPE, backlog, compact, room_ids
from poller import __version__
from poller.signing import SigningKey

USER_AGENT = f"poller-baseline/{__version__}"
PARSERS: dict[str, Callable[[bytes], Any]] = {"msgspec": msgspec.json.decode, "json": json.loads}
_TIMEOUT = aiohttp.ClientTimeout(total=10)
_MAX_PAGES = 1000  # pages of one query, bounded

Parse = Callable[[bytes], Any]


async def _line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit), headers={"User-Agent": USER_AGENT}
    )


async def _walk(
    session: aiohttp.ClientSession, url: str, room: str, parse: Parse
) -> AsyncIterator[dict[str, Any]]:
    """Every page of one fresh query for ``room``, parsed."""
    query = [("room_id", room), ("type", EVENT_TYPE), ("limit", "100")]
    start: str | None = None
    for _ in range(_MAX_PAGES):
        params = query if start is None else [*query, ("start", start)]
        async with session.get(
            url, params=params, headers={"Authorization": "Bearer baseline"}, timeout=_TIMEOUT
        ) as resp:
            body = await resp.read()
        doc: dict[str, Any] = parse(body)
        yield doc
        start = doc.get("next") or None
        if start is None:
            return


async def _count_pages(session: aiohttp.ClientSession, url: str, room: str, parse: Parse) -> int:
    pages = 0
    async for _ in _walk(session, url, room, parse):
        pages += 1
    return pages


def _events_url(api: str) -> str:
    return api.rstrip("/") + "/analytics/events"


async def poll(api: str, rooms: list[str], concurrency: int, duration: float, parse: Parse) -> int:
    """Query every room round after round for ``duration`` seconds; return the queries."""
    url = _events_url(api)
    polls = 0
    position = 0
    deadline = time.monotonic() + duration
    async with _session(concurrency * 2) as session:

        async def worker() -> None:
            nonlocal polls, position
            while time.monotonic() < deadline:
                room = rooms[position % len(rooms)]
                position += 1
                await _count_pages(session, url, room, parse)
                polls += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return polls


async def walk(
    api: str, rooms: list[str], concurrency: int, duration: float, interval: float, parse: Parse
) -> int:
    """Walk room i at i/len(rooms) of ``interval``, then every ``interval``, for ``duration``
    seconds, at most ``concurrency`` requests in flight; return the pages."""
    if interval <= 0:
        raise ValueError("walk needs an interval > 0")
    url = _events_url(api)
    pages = 0
    slots = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with _session(concurrency * 2) as session:

        async def room_loop(i: int, room: str) -> None:
            nonlocal pages
            due = started + interval * i / len(rooms)
            while due < started + duration:
                await asyncio.sleep(max(0.0, due - loop.time()))
                async with slots:
                    walked = await _count_pages(session, url, room, parse)
                pages += walked  # not `pages += await ...`: that reads pages before the await
                due = max(due + interval, loop.time())  # no overlap, like the daemon's jobs

        await asyncio.gather(*(room_loop(i, room) for i, room in enumerate(rooms)))
    return pages


async def _post(
    session: aiohttp.ClientSession, url: str, key: SigningKey, msg_id: str, body: bytes
) -> bool:
    """One signed webhook POST, as the daemon sends it; whether it got a 2xx."""
    headers = {"Content-Type": "application/json", **key.headers(msg_id, body)}
    async with session.post(
        url, data=body, headers=headers, timeout=_TIMEOUT, allow_redirects=False
    ) as resp:
        await resp.content.read(64 * 1024)
        return 200 <= resp.status < 300


def _hook_urls(sink: str, hooks: dict[str, SigningKey]) -> list[tuple[str, SigningKey]]:
    return [(f"{sink.rstrip('/')}/hooks/{name}", key) for name, key in hooks.items()]


async def walk_deliver(
    api: str,
    rooms: list[str],
    sink: str,
    hooks: dict[str, SigningKey],
    concurrency: int,
    deliver_concurrency: int,
    parse: Parse,
) -> int:
    """Walk every room once, POST every event to every webhook; return the 2xx answers."""
    url = _events_url(api)
    targets = _hook_urls(sink, hooks)
    queues: list[asyncio.Queue[tuple[str, bytes] | None]] = [asyncio.Queue() for _ in targets]
    ok = 0
    limit = concurrency * 2 + deliver_concurrency * len(targets) + 4
    async with _session(limit) as session:

        async def walker(offset: int) -> None:
            for room in rooms[offset::concurrency]:
                async for doc in _walk(session, url, room, parse):
                    for event in doc["events"]:
                        item = (event["id"], msgspec.json.encode(event))
                        for queue in queues:
                            queue.put_nowait(item)

        async def poster(hook_url: str, key: SigningKey, queue: asyncio.Queue[Any]) -> None:
            nonlocal ok
            while (item := await queue.get()) is not None:
                if await _post(session, hook_url, key, *item):
                    ok += 1

        posters = [
            asyncio.create_task(poster(hook_url, key, queue))
            for (hook_url, key), queue in zip(targets, queues, strict=True)
            for _ in range(deliver_concurrency)
        ]
        await asyncio.gather(*(walker(k) for k in range(concurrency)))
        for queue in queues:
            for _ in range(deliver_concurrency):
                queue.put_nowait(None)
        await asyncio.gather(*posters)
    return ok


async def deliver(
    sink: str, hooks: dict[str, SigningKey], bodies: list[tuple[str, bytes]], concurrency: int
) -> int:
    """POST every body to every webhook, signed; return the 2xx answers."""
    ok = 0
    async with _session(concurrency * len(hooks) + 4) as session:

        async def worker(url: str, key: SigningKey, queue: list[tuple[str, bytes]]) -> None:
            nonlocal ok
            while queue:
                if await _post(session, url, key, *queue.pop()):
                    ok += 1

        workers = []
        for url, key in _hook_urls(sink, hooks):
            queue = list(reversed(bodies))
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


def _keys(specs: list[str]) -> dict[str, SigningKey]:
    keys = {}
    for spec in specs:
        name, _, secret = spec.partition("=")
        keys[name] = SigningKey.from_secret(secret)
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    sub = parser.add_subparsers(dest="mode", required=True)
    modes = {name: sub.add_parser(name) for name in ("poll", "walk", "walk-deliver", "deliver")}
    for name in ("poll", "walk", "walk-deliver"):
        p = modes[name]
        p.add_argument("--api", required=True)
        p.add_argument("--rooms", type=int, required=True)
        p.add_argument("--concurrency", type=int, default=32)
        p.add_argument("--parser", choices=sorted(PARSERS), default="msgspec")
    for name in ("poll", "walk"):
        modes[name].add_argument("--duration", type=float, required=True)
    modes["walk"].add_argument("--interval", type=float, required=True)
    for name in ("walk-deliver", "deliver"):
        modes[name].add_argument("--sink", required=True)
        modes[name].add_argument("--hook", action="append", default=[], help="NAME=whsec_...")
    modes["walk-deliver"].add_argument("--deliver-concurrency", type=int, default=64)
    d = modes["deliver"]
    d.add_argument("--events", type=int, required=True)
    d.add_argument("--backlog-rooms", type=int, default=100)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)

    work: Callable[[], Awaitable[int]]
    if args.mode == "deliver":
        events = backlog(room_ids(args.backlog_rooms), args.events, args.seed)
        bodies = [(event["id"], compact(event).encode()) for _, event in events]
        work = partial(deliver, args.sink, _keys(args.hook), bodies, args.concurrency)
    else:
        rooms = room_ids(args.rooms)
        parse = PARSERS[args.parser]
        if args.mode == "poll":
            work = partial(poll, args.api, rooms, args.concurrency, args.duration, parse)
        elif args.mode == "walk":
            work = partial(
                walk, args.api, rooms, args.concurrency, args.duration, args.interval, parse
            )
        else:
            work = partial(
                walk_deliver,
                args.api,
                rooms,
                args.sink,
                _keys(args.hook),
                args.concurrency,
                args.deliver_concurrency,
                parse,
            )
    asyncio.run(_run(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
