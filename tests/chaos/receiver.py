"""A webhook receiver that misbehaves at random: errors, hangs past the timeout, resets.

It verifies every request with the reference ``standardwebhooks`` package, not with
poller's own signer, and records each one (``Received``) as poller's test receiver does,
so ``delivered()`` and ``wait_for()`` work the same; only a request answered 2xx counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import socket
import struct
import time
from collections import Counter

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from poller.receiver import Received, Receiver


class Answer(enum.StrEnum):
    """What the receiver does with one request."""

    OK = "ok"
    ERROR_500 = "500"
    UNAVAILABLE_503 = "503"
    HANG = "hang"  # past the delivery timeout, then a 504 nobody reads
    RESET = "reset"  # the TCP connection reset before any answer


# The chaos mix: a request has about a one-in-three chance of failing somehow.
_MIX = (
    (Answer.ERROR_500, 0.10),
    (Answer.UNAVAILABLE_503, 0.08),
    (Answer.HANG, 0.07),
    (Answer.RESET, 0.08),
)


class ChaosReceiver(Receiver):
    """A ``Receiver`` whose answers are drawn from a seeded random mix until ``heal_all()``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rng = random.Random(0)
        self.hang = 5.0
        self.healthy = False
        self.answers: Counter[Answer] = Counter()
        self._webhooks = {name: Webhook(secret) for name, secret in self.secrets.items()}

    def configure(self, *, seed: int, hang: float) -> None:
        """Seed the mix; ``hang`` must outlast the daemon's ``delivery.timeout``."""
        self.rng = random.Random(seed)
        self.hang = hang

    def heal_all(self) -> None:
        """Answer every request from now on with 204."""
        self.healthy = True

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._chaos)
        return app

    def _draw(self) -> Answer:
        if self.healthy:
            return Answer.OK
        roll = self.rng.random()
        for answer, share in _MIX:
            if roll < share:
                return answer
            roll -= share
        return Answer.OK

    async def _chaos(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        arrived = time.time()
        body = await request.read()
        headers = dict(request.headers)
        webhook = self._webhooks.get(name)
        try:
            if webhook is None:
                raise WebhookVerificationError(f"unknown webhook {name!r}")
            webhook.verify(body, headers, json_parse=False)
            valid = True
        except WebhookVerificationError:
            valid = False
        answer = self._draw() if valid else Answer.ERROR_500
        self.answers[answer] += 1
        msg_id = headers.get("webhook-id", "")
        status = {Answer.OK: 204, Answer.ERROR_500: 500, Answer.UNAVAILABLE_503: 503}.get(answer)
        if not valid:
            status = 401
        if answer is Answer.RESET:
            status = 0
            _reset(request)
        elif answer is Answer.HANG:
            status = 504
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.hang)
        assert status is not None
        await self._record(
            Received(name, msg_id, body, headers, valid, status, time.time(), arrived)
        )
        if answer is Answer.RESET:
            return web.Response(status=204)  # never written: the transport is gone
        return web.Response(status=status)


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST, as a crashing proxy would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST rather than FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
