"""Command line: parse arguments and hand over; user errors become one line and exit 2."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from poller import __version__
from poller.config import Config, describe, json_schema, load_config, resolve_config_path
from poller.errors import UserError
from poller.states import DeliveryState
from poller.timeutil import parse_instant, utcnow

EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace, Config], int]


def _config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    return load_config(resolve_config_path(args.config, environ), environ)


def _configure_logs(config: Config) -> None:
    from poller.log import configure_logs

    configure_logs(config)


def _show(config: Config, text: str) -> None:
    """Print ``text`` for the operator, every configured secret masked.

    Why even reports: they quote what the store holds (a room's last error comes
    from the API, a delivery's from the receiver), and either may echo a secret.
    """
    from poller.redaction import redactor_of

    print(redactor_of(config)(text))


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    from poller import app

    _configure_logs(config)
    runner = asyncio.Runner()
    runner.run(app.run(config))
    _exit_past_stuck_store(runner)
    return 0


def _exit_past_stuck_store(runner: asyncio.Runner) -> None:
    """Close the loop, or exit at once if a store operation that was cut off is stuck.

    Why: the stop has completed (what poller owes is in the store or handed back),
    but a store call blocked in the driver's thread (SQLite waiting on a file another
    process holds, for its busy_timeout) ignores cancellation, and aiosqlite's
    non-daemon thread would hold the exit; closing the loop would wait for both.
    """
    import threading

    leftover = [t for t in asyncio.all_tasks(runner.get_loop()) if not t.done()]
    if not leftover:
        runner.close()
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if leftover or any(t.is_alive() and not t.daemon for t in others):
        _exit_now()


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    """Validate the config and print a summary with secrets masked."""
    _show(config, describe(config))
    print("config OK")
    return 0


def cmd_config_schema() -> int:
    """Print the JSON Schema of the config file (for editors; needs no config)."""
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    """Bring the store schema up to date."""
    from poller.parts import open_configured_store

    async def migrate() -> str | None:
        async with open_configured_store(config) as store:
            current, _ = await store.schema_revisions()
            return current

    _configure_logs(config)
    revision = asyncio.run(migrate())
    _show(config, f"store {config.store.masked_url()} is at schema revision {revision}")
    return 0


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    """Print room poll states and outbox counts."""
    from poller import report

    _configure_logs(config)
    _show(config, asyncio.run(report.status(config, as_json=args.json)))
    return 0


def cmd_deliveries(args: argparse.Namespace, config: Config) -> int:
    """List deliveries, show one with its attempts, or retry dead ones."""
    from poller import report
    from poller.store.repo import DeliveryFilter

    _configure_logs(config)
    ids: list[int] = [*args.ids, *args.id]
    if args.action == "purge":
        return _purge(args, config, ids)
    if args.action == "retry":
        text = report.retry(config, ids=ids, webhook=args.webhook, all_dead=args.dead)
    elif args.action == "show":
        if len(ids) != 1:
            raise UserError("deliveries show takes one delivery id")
        text = report.show(config, ids[0], as_json=args.json)
    else:
        if ids:
            raise UserError("deliveries list takes no ids (see deliveries show ID)")
        now = utcnow()
        where = DeliveryFilter(
            state=args.state,
            webhook=args.webhook,
            room_id=args.room,
            since=_instant(args.since, "--since", now),
            until=_instant(args.until, "--until", now),
        )
        text = report.deliveries(config, where, limit=args.limit, as_json=args.json)
    _show(config, asyncio.run(text))
    return 0


def _purge(args: argparse.Namespace, config: Config, ids: list[int]) -> int:
    from poller import webhooks

    if ids or args.webhook is None:
        raise UserError("deliveries purge takes --webhook W and no ids")
    print(asyncio.run(webhooks.purge_preview(config, args.webhook)))
    if not _confirmed("purge", args.yes):
        return 1
    _show(config, asyncio.run(webhooks.purge(config, args.webhook)))
    return 0


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    """Deliver stored events to a webhook again, after showing how many and confirming."""
    from poller import report

    _configure_logs(config)
    webhook = report.configured_webhook(config, args.webhook)
    now = utcnow()
    which = report.replay_filter(
        webhook,
        room_id=args.room,
        event_type=args.type,
        since=_instant(args.since, "--since", now),
        until=_instant(args.until, "--until", now),
    )
    count = asyncio.run(report.replay_count(config, webhook.name, which))
    print(report.replay_preview(webhook.name, count))
    if not count:
        return 0
    if not _confirmed("replay", args.yes):
        return 1
    _show(config, asyncio.run(report.replay(config, webhook.name, which)))
    return 0


def _confirmed(verb: str, yes: bool) -> bool:
    """``--yes``, or the operator's answer on a terminal (anything else refuses)."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UserError(f"{verb} asks for confirmation: pass --yes when stdin is not a terminal")
    if input(f"{verb} them? [y/N] ").strip().lower() in ("y", "yes"):
        return True
    print(f"nothing {verb}d" if verb.endswith("e") else f"nothing {verb}ed")
    return False


def cmd_send_test(args: argparse.Namespace, config: Config) -> int:
    """POST a sample event to a webhook; 0 when it answers 2xx."""
    from poller import report
    from poller.sendtest import send_test

    _configure_logs(config)
    result = asyncio.run(send_test(config, report.configured_webhook(config, args.webhook)))
    # The receiver's answer may echo a header value (a token): masked like a report.
    _show(config, result.json() if args.json else result.text())
    return 0 if result.attempt.ok else 1


def cmd_webhooks(args: argparse.Namespace, config: Config) -> int:
    """List webhooks and their states, or pause, resume or enable one."""
    from poller import webhooks

    _configure_logs(config)
    if args.action == "list":
        if args.name is not None:
            raise UserError("webhooks list takes no webhook name")
        text = webhooks.list_webhooks(config, as_json=args.json)
    else:
        if args.name is None:
            raise UserError(f"webhooks {args.action} needs a webhook name")
        text = webhooks.set_mode(config, args.action, args.name)
    _show(config, asyncio.run(text))
    return 0


def cmd_gen_secret() -> int:
    """Print a new webhook secret (needs no config)."""
    from poller.signing import generate_secret

    print(generate_secret())
    return 0


def _instant(value: str | None, option: str, now: dt.datetime) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value, now=now)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """A command's parser whose usage errors are one line (exit 2), like every user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_healthcheck(args: argparse.Namespace, config: Config) -> int:
    """Ask the running daemon's /healthz (for container HEALTHCHECKs); 0 when healthy."""
    import urllib.error
    import urllib.request

    if config.server is None:
        print("healthcheck needs [server] listen in the config", file=sys.stderr)
        return 1
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard listen is reachable on loopback
    elif ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{config.server.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(), file=sys.stderr)
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``-c`` is accepted before or after the command."""
    config_help = "config file (default: $POLLER_CONFIG, else /etc/poller/config.toml)"
    common = _OneLineParser(add_help=False)
    # SUPPRESS keeps a -c given before the command from being reset by the subparser.
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, help=config_help)

    parser = argparse.ArgumentParser(
        prog="poller", description="Turns the 100ms analytics events API into signed webhooks."
    )
    parser.add_argument("-c", "--config", default=None, help=config_help)
    parser.add_argument("--version", action="version", version=f"poller {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_OneLineParser
    )

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    add("run", cmd_run, "run the daemon until SIGTERM or SIGINT")
    add("check-config", cmd_check_config, "validate the config and print a summary")
    add("migrate", cmd_migrate, "bring the store schema up to date")
    status = add("status", cmd_status, "show instances, room poll states and the outbox")
    status.add_argument("--json", action="store_true", help="print JSON (keys in the README)")
    hc = add("healthcheck", cmd_healthcheck, "exit 0 when the running daemon's /healthz is OK")
    hc.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    dl = add(
        "deliveries",
        cmd_deliveries,
        "list deliveries, show one, retry dead ones, or purge an orphaned webhook's",
    )
    dl.add_argument(
        "action",
        choices=["list", "show", "retry", "purge"],
        nargs="?",
        default="list",
        help="list (default), show ID, retry ID... | --dead, or purge --webhook W",
    )
    dl.add_argument("ids", type=int, nargs="*", metavar="ID", help="delivery ids")
    # The older spelling of ``retry ID...``, kept so that scripts keep working.
    dl.add_argument("--id", type=int, action="append", default=[], help=argparse.SUPPRESS)
    dl.add_argument("--state", choices=[state.value for state in DeliveryState])
    dl.add_argument("--webhook", help="only this webhook")
    dl.add_argument("--room", help="only events of this room")
    since_help = "created at or after T: RFC 3339 (2026-12-01T08:00:00Z) or a duration ago (2h)"
    dl.add_argument("--since", metavar="T", help=since_help)
    dl.add_argument("--until", metavar="T", help="created before T (as --since)")
    dl.add_argument("--limit", type=_positive, default=50, help="rows to list (default 50)")
    dl.add_argument("--dead", action="store_true", help="retry: every dead delivery")
    dl.add_argument("--json", action="store_true", help="print JSON")
    dl.add_argument("--yes", action="store_true", help="purge: do not ask for confirmation")

    rp = add("replay", cmd_replay, "deliver stored events to a webhook again")
    rp.add_argument("--webhook", required=True, help="the webhook to deliver to")
    rp.add_argument("--room", help="only events of this room")
    rp.add_argument("--type", help="only events of this type")
    seen_help = "seen at or after T: RFC 3339 (2026-12-01T08:00:00Z) or a duration ago (2h)"
    rp.add_argument("--since", metavar="T", help=seen_help)
    rp.add_argument("--until", metavar="T", help="seen before T (as --since)")
    rp.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    st = add("send-test", cmd_send_test, "post a signed sample event to a webhook")
    st.add_argument("--webhook", required=True, help="the webhook to test")
    st.add_argument("--json", action="store_true", help="print JSON")

    wh = add("webhooks", cmd_webhooks, "list webhooks and their states; pause, resume, enable")
    wh.add_argument(
        "action",
        choices=["list", "pause", "resume", "enable"],
        nargs="?",
        default="list",
        help="list (default); pause W (deliveries kept pending), resume W; enable W "
        "(after the receiver answered 410 Gone)",
    )
    wh.add_argument("name", nargs="?", metavar="W", help="the webhook")
    wh.add_argument("--json", action="store_true", help="list: print JSON")

    # -c is accepted (and not needed) so that a wrapper passing it to every command works.
    sub.add_parser(
        "config-schema",
        parents=[common],
        help="print the JSON Schema of the config file",
        description="Prints the JSON Schema of config.toml, for editors that validate and "
        "complete TOML with one (Taplo, VS Code's Even Better TOML).",
    )
    sub.add_parser(
        "gen-secret",
        parents=[common],
        help="print a new webhook secret",
        description="Prints a new Standard Webhooks secret (whsec_ and 32 random bytes).",
    )
    demo = sub.add_parser(
        "demo",
        help="run poller against a built-in 100ms simulator and receiver",
        description="Runs the real daemon against a local 100ms API simulator and a "
        "signature-verifying receiver, with a temporary store. Needs no credentials.",
    )
    demo.add_argument("--events", type=int, default=8, help="events to publish (default 8)")
    demo.add_argument("--timeout", type=float, default=60.0, help="give up after (s)")
    demo.add_argument("--verbose", action="store_true", help="show the daemon's own logs")
    demo.set_defaults(handler=None)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``poller`` console script."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    config: Config | None = None
    try:
        if args.command == "demo":
            from poller.demo import run_demo

            return run_demo(events=args.events, timeout=args.timeout, verbose=args.verbose)
        if args.command == "config-schema":
            return cmd_config_schema()
        if args.command == "gen-secret":
            return cmd_gen_secret()
        handler: Handler = args.handler
        config = _config(args, env)
        return handler(args, config)
    except UserError as exc:
        message = str(exc)
        if config is not None:
            from poller.redaction import redactor_of

            message = redactor_of(config)(message)
        print(f"poller: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
