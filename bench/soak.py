"""``python -m bench.soak``: the real daemon for an hour at a realistic rate, with faults.

Run by hand (``--minutes 60`` is the default; ``--minutes 5`` for a quick look). In one
process: poller's simulator of the 100ms API, with events arriving all along and API
faults injected every few seconds, and a signature-verifying receiver that is down for
30 s every 5 minutes. The daemon is ``poller run`` in a subprocess on SQLite. Every
``--sample`` seconds its RSS and open file descriptors are read from /proc; at the end
publishing stops, the outbox drains, the daemon gets SIGTERM, and the script prints the
samples, the events lost (must be 0) and whether RSS and descriptors stayed flat (the
last sample against the median of the second quarter of the run: at most 10 % and 8
descriptors more).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from poller.receiver import Receiver
from poller.signing import generate_secret
from poller.simulator import Simulator

ACCESS_KEY = "soak-access-key"
APP_SECRET = "soak-app-secret-0123456789abcdef"
WEBHOOK = "soak"


@dataclass(frozen=True)
class Sample:
    minute: float
    rss_mib: float
    fds: int
    published: int
    delivered: int


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _config(simulator: Simulator, receiver: Receiver, workdir: Path, rooms: list[str]) -> Path:
    room_tables = "\n".join(f'[[rooms]]\nid = "{room}"\n' for room in rooms)
    path = workdir / "soak.toml"
    path.write_text(
        f"""
[hms]
base_url = "{simulator.base_url}"
access_key = "{ACCESS_KEY}"
app_secret = "{APP_SECRET}"

[poll]
interval = "2s"

[store]
url = "sqlite+aiosqlite:///{workdir / "soak.db"}"

[delivery]
timeout = "2s"
retry_schedule = ["1s", "5s", "15s", "30s", "1m", "2m", "5m"]

[log]
level = "warning"
format = "json"

{room_tables}
[[webhooks]]
name = "{WEBHOOK}"
url = "{receiver.url(WEBHOOK)}"
secret = "{receiver.secrets[WEBHOOK]}"
"""
    )
    return path


async def soak(minutes: float, rooms: int, rate: float, sample_every: float) -> int:
    """Run the soak; 0 when nothing was lost and RSS and descriptors stayed flat."""
    rng = random.Random(1)
    simulator = Simulator(access_key=ACCESS_KEY, app_secret=APP_SECRET)
    receiver = Receiver({WEBHOOK: generate_secret()})
    await simulator.start()
    await receiver.start()
    room_ids = [f"soak-room-{i:03d}" for i in range(rooms)]
    published: set[str] = set()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="poller-soak-") as tmp:
        workdir = Path(tmp)
        log = (workdir / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "poller",
                "run",
                "-c",
                str(_config(simulator, receiver, workdir, room_ids)),
            ],
            stdout=log,
            stderr=log,
        )
        started = time.monotonic()
        deadline = started + minutes * 60
        next_sample = started
        receiver_down_until = 0.0
        try:
            while time.monotonic() < deadline:
                now = time.monotonic()
                published.add(simulator.add_event(rng.choice(room_ids))["id"])
                if rng.random() < 0.02:
                    simulator.inject(rng.choice(["500", "429", "bad_json", "hang"]))
                # The receiver is down for 30 s in every 5 minutes.
                if now - started > 60 and int((now - started) // 300) != int(
                    (now - started - 1 / rate) // 300
                ):
                    receiver.fail(WEBHOOK, times=None, status=503)
                    receiver_down_until = now + 30
                if receiver_down_until and now > receiver_down_until:
                    receiver.heal(WEBHOOK)
                    receiver_down_until = 0.0
                if now >= next_sample:
                    samples.append(_sample(daemon.pid, started, published, receiver))
                    print(_row(samples[-1]), flush=True)
                    next_sample += sample_every
                if daemon.poll() is not None:
                    print(f"the daemon exited {daemon.returncode}", file=sys.stderr)
                    return 1
                await asyncio.sleep(1 / rate)
            receiver.heal(WEBHOOK)
            samples.append(_sample(daemon.pid, started, published, receiver))
            print(_row(samples[-1]), flush=True)
            drained = await receiver.wait_for(
                lambda: published <= {r.msg_id for r in receiver.delivered()}, 600
            )
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(60)
            log.close()
            await receiver.stop()
            await simulator.stop()
    lost = len(published - {r.msg_id for r in receiver.delivered()})
    return _verdict(samples, lost, drained, daemon.returncode)


def _sample(pid: int, started: float, published: set[str], receiver: Receiver) -> Sample:
    return Sample(
        minute=(time.monotonic() - started) / 60,
        rss_mib=_rss_mib(pid),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        published=len(published),
        delivered=len({r.msg_id for r in receiver.delivered()}),
    )


def _row(s: Sample) -> str:
    return (
        f"{s.minute:6.1f} min  rss {s.rss_mib:7.1f} MiB  fds {s.fds:4d}  "
        f"published {s.published:7d}  delivered {s.delivered:7d}"
    )


def _verdict(samples: list[Sample], lost: int, drained: bool, code: int | None) -> int:
    quarter = samples[len(samples) // 4 : max(len(samples) // 2, len(samples) // 4 + 1)]
    base_rss = statistics.median(s.rss_mib for s in quarter)
    base_fds = statistics.median(s.fds for s in quarter)
    last = samples[-1]
    rss_growth = (last.rss_mib - base_rss) / base_rss if base_rss else 0.0
    flat = rss_growth <= 0.10 and last.fds - base_fds <= 8
    print(
        f"events {last.published}, lost {lost}, drained {drained}, SIGTERM exit {code}; "
        f"rss {base_rss:.1f} -> {last.rss_mib:.1f} MiB ({rss_growth:+.1%}), "
        f"fds {base_fds:.0f} -> {last.fds}: {'FLAT' if flat else 'GROWING'}"
    )
    return 0 if lost == 0 and drained and code == 0 and flat else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the soak."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--rate", type=float, default=5.0, help="events per second")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    args = parser.parse_args(argv)
    return asyncio.run(soak(args.minutes, args.rooms, args.rate, args.sample))


if __name__ == "__main__":
    sys.exit(main())
