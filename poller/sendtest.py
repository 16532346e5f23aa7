"""``poller send-test``: one sample event, signed like every delivery, to one webhook."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import aiohttp

from poller.config import Config, WebhookConfig
from poller.delivery.sender import Attempt, Sender, Target
from poller.parts import USER_AGENT
from poller.sample_events import object_id, recording_event

# Receivers can tell a test from a real event (whose webhook-id is the event's id).
TEST_ID_PREFIX = "test_"


@dataclass(frozen=True, slots=True)
class SendTestResult:
    """What the receiver made of the sample event."""

    webhook: str
    msg_id: str
    attempt: Attempt

    def text(self) -> str:
        """A few lines for a terminal."""
        a = self.attempt
        answer = f"HTTP {a.status}" if a.status is not None else "no answer"
        verdict = "accepted" if a.ok else f"refused ({a.error})"
        lines = [
            f"sent a sample beam.recording.success to {self.webhook} as {self.msg_id}",
            f"{answer} in {a.duration * 1000:.0f} ms: {verdict}",
        ]
        if a.response:
            lines.append(f"answer: {a.response[:200].decode('utf-8', 'replace')!r}")
        return "\n".join(lines)

    def json(self) -> str:
        """Stable keys for scripts."""
        a = self.attempt
        return json.dumps(
            {
                "webhook": self.webhook,
                "webhook_id": self.msg_id,
                "ok": a.ok,
                "status": a.status,
                "error": a.error,
                "duration_ms": round(a.duration * 1000, 1),
                "response": a.response.decode("utf-8", "replace"),
            },
            indent=2,
            ensure_ascii=False,
        )


async def send_test(config: Config, webhook: WebhookConfig) -> SendTestResult:
    """POST a sample recording event to ``webhook`` with the daemon's sender and headers."""
    rng = random.Random()
    room = sorted(webhook.rooms)[0] if webhook.rooms else config.rooms[0].id
    event = recording_event(rng, room, template_id=object_id(rng))
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    msg_id = TEST_ID_PREFIX + event["id"]
    async with aiohttp.ClientSession() as session:
        sender = Sender(session, timeout=config.delivery.timeout, user_agent=USER_AGENT)
        attempt = await sender.send(Target.from_config(webhook), msg_id, body)
    return SendTestResult(webhook.name, msg_id, attempt)
