"""``poller webhooks``: each webhook's delivery state, and pausing, resuming, enabling it;
``poller deliveries purge``: dropping an orphaned webhook's deliveries.

The commands only touch the store: a running daemon (every instance on the store) sees a
change within a second (``poller.delivery.guard.REFRESH``) and logs it.
"""

from __future__ import annotations

from poller.config import Config
from poller.errors import UserError
from poller.parts import open_configured_store
from poller.report import configured_webhook, dumps, webhook_json
from poller.snapshot import describe_state, webhook_views
from poller.states import DeliveryState, WebhookMode, WebhookState
from poller.store.repo import WebhookRow
from poller.timeutil import utcnow

__all__ = ["list_webhooks", "purge", "purge_preview", "set_mode"]


async def list_webhooks(config: Config, *, as_json: bool = False) -> str:
    """Every webhook (configured, or with deliveries in the store) and its state."""
    now = utcnow()
    async with open_configured_store(config, apply_migrations=False) as store:
        views = await webhook_views(store, config)
    if as_json:
        return dumps([webhook_json(v) for v in views])
    lines = [f"{'webhook':<20} {'pending':>8} {'delivered':>10} {'dead':>6}  state"]
    for v in views:
        lines.append(
            f"{v.name:<20} {v.pending:>8} {v.delivered:>10} {v.dead:>6}  {describe_state(v, now)}"
        )
        extra = [f"url {v.url}"] if v.url else ["not configured"]
        if v.rate_limit:
            extra.append(f"rate limit {v.rate_limit:g}/s")
        lines.append(f"{'':<20} {', '.join(extra)}")
    return "\n".join(lines)


# What each command does: the mode it sets, the modes it applies to, and the verb.
_CHANGES = {
    "pause": (WebhookMode.PAUSED, (WebhookMode.ACTIVE,), "paused"),
    "resume": (WebhookMode.ACTIVE, (WebhookMode.PAUSED,), "resumed"),
    "enable": (WebhookMode.ACTIVE, (WebhookMode.DISABLED,), "enabled"),
}


async def set_mode(config: Config, action: str, name: str) -> str:
    """``pause``, ``resume`` or ``enable`` the configured webhook ``name``."""
    configured_webhook(config, name)
    mode, only_from, verb = _CHANGES[action]
    now = utcnow()
    async with open_configured_store(config, apply_migrations=False) as store:
        paused = mode is WebhookMode.PAUSED
        reason = f"paused by hand at {now:%Y-%m-%dT%H:%M:%SZ}" if paused else None
        changed = await store.set_webhook_mode(
            name, mode, reason=reason, now=now, only_from=only_from
        )
        row = (await store.webhook_states())[name]
        # An open breaker is not a pause, but "resume" means "try it now": take a probe.
        probing = (
            action == "resume"
            and not changed
            and row.state is WebhookState.BREAKER_OPEN
            and await store.probe_now(name, now=now)
        )
    if probing:
        return (
            f"{name}'s breaker is open: its next probe is due now (a running daemon follows "
            "within 1s); a 2xx closes it"
        )
    if changed:
        held = "kept pending" if mode is WebhookMode.PAUSED else "resume"
        return f"{name} {verb}: its deliveries {held} (a running daemon follows within 1s)"
    if row.mode is mode:
        return f"{name} is already {row.mode.value}"
    raise UserError(_refusal(action, name, row))


def _refusal(action: str, name: str, row: WebhookRow) -> str:
    if row.mode is WebhookMode.DISABLED:
        return f"{name} is disabled ({row.mode_reason}): `poller webhooks enable {name}`"
    if row.mode is WebhookMode.PAUSED:
        return f"{name} is paused, not disabled: `poller webhooks resume {name}`"
    return f"{name} is {row.mode.value}: nothing to {action}"


async def purge_preview(config: Config, name: str) -> str:
    """A line saying how many deliveries ``purge`` would drop; refuses a webhook
    that is in the config (its deliveries are owed) or that the store does not know."""
    if name in {w.name for w in config.webhooks}:
        raise UserError(
            f"{name} is in the config: its deliveries are owed and are not purged. "
            f"Remove it from the config first, or `poller webhooks pause {name}`"
        )
    async with open_configured_store(config, apply_migrations=False) as store:
        counts = await store.outbox_counts()
    stored = sorted({w for w, _ in counts} - {w.name for w in config.webhooks})
    if name not in {w for w, _ in counts}:
        known = ", ".join(stored) if stored else "none"
        raise UserError(f"no deliveries of webhook {name!r} in the store (orphaned: {known})")
    by_state = {state: counts.get((name, state), 0) for state in DeliveryState}
    total = sum(by_state.values())
    detail = ", ".join(f"{n} {state}" for state, n in by_state.items())
    return f"webhook {name} (not in the config) has {total} deliveries: {detail}"


async def purge(config: Config, name: str) -> str:
    """Drop every delivery of the orphaned webhook ``name`` (``poller deliveries purge``)."""
    await purge_preview(config, name)  # the same refusals, checked again
    async with open_configured_store(config, apply_migrations=False) as store:
        dropped = await store.purge_webhook(name)
    return f"purged {dropped} deliveries of {name}"
