"""Child processes for the benchmark: spawning, /proc sampling, READY, clean-up.

Every child runs in its own session (process group), is registered with a
``Children`` registry and is killed with its whole group when the registry
closes, whatever happened: no benchmark leaves a process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not be run (a child died, a wait timed out)."""


@dataclass(frozen=True, slots=True)
class Usage:
    """A process's CPU time so far and memory, from /proc."""

    cpu_s: float  # utime + stime
    rss_kb: int  # VmRSS
    hwm_kb: int  # VmHWM: peak resident set size


def usage(pid: int) -> Usage:
    """Read utime+stime from /proc/<pid>/stat and VmRSS/VmHWM from /proc/<pid>/status."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces or parentheses: fields start after the last ')'.
    fields = stat.rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return Usage(ticks / CLK_TCK, rss, hwm)


@dataclass
class Child:
    """One child process in its own process group, with line-wise stdout."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None
    _buffer: bytes = field(default=b"", repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def usage(self) -> Usage:
        return usage(self.pid)

    def read_line(self, timeout: float) -> str:
        """The next stdout line; BenchError when the child dies or is silent for ``timeout``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no output within {timeout:g}s{self.tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(f"{self.name} exited ({self.proc.wait()}){self.tail()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()

    def send_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return "\n  " + "\n  ".join(text) if text else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the child, wait up to ``timeout``, then kill its whole group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the child's process group (it leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Children:
    """Spawns children and kills every one of them on close."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._children: list[Child] = []

    def spawn(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        stdout: bool = True,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``python <args>`` from the repo in a new session; stderr goes to a log file."""
        return self.spawn_exe(
            name, [sys.executable, *args], env=env, stdin=stdin, stdout=stdout, cwd=cwd
        )

    def spawn_exe(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        stdout: bool = False,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``argv`` from the repo in a new session; stderr goes to ``<name>.log``."""
        log = self.workdir / f"{name}.log"
        with log.open("ab") as err:
            proc = subprocess.Popen(
                argv,
                cwd=cwd or REPO,
                env={**os.environ, **(env or {})},
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self._children.append(child)
        return child

    def close(self) -> None:
        for child in reversed(self._children):
            child.stop(timeout=5.0)
        self._children.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NotifySocket:
    """A ``$NOTIFY_SOCKET`` of our own: the daemon says READY=1 on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))

    def wait_for(self, word: str, timeout: float, child: Child | None = None) -> float:
        """Wait for a datagram holding ``word`` (like ``READY=1``); return its monotonic time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                tail = child.tail() if child else ""
                raise BenchError(f"no {word} within {timeout:g}s{tail}")
            self._sock.settimeout(min(left, 0.2))
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                if child is not None and child.proc.poll() is not None:
                    raise BenchError(
                        f"{child.name} exited ({child.proc.returncode}) before {word}{child.tail()}"
                    ) from None
                continue
            if word.encode() in data.split(b"\n"):
                return time.monotonic()

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def port_of(child: Child, timeout: float = 30.0) -> int:
    """Read the ``PORT <n>`` line a helper prints once it listens."""
    line = child.read_line(timeout)
    word, _, port = line.partition(" ")
    if word != "PORT":
        raise BenchError(f"{child.name}: expected 'PORT <n>', got {line!r}")
    return int(port)


def get_json(url: str, timeout: float = 30.0) -> Any:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("benchmark traffic stays on 127.0.0.1")
    # The scheme and host are checked just above.
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
        return json.loads(resp.read())


def post(url: str, timeout: float = 10.0) -> int:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("benchmark traffic stays on 127.0.0.1")
    req = urllib.request.Request(url, data=b"", method="POST")  # noqa: S310
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        return int(resp.status)


async def serve_until_signalled(app: web.Application, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` (0: any), print ``PORT n`` for port_of(),
    and run until SIGTERM or SIGINT (a helper process's main loop)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
