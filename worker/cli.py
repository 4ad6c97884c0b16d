"""The ``rota`` command: parsing, formatting and exit codes only.

Exit 0 on success; 2 and one line on stderr for bad input; 1 and one line for a runtime
failure (Redis unreachable, ...). ``--traceback`` or ROTA_TRACEBACK=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import pydantic
import redis
from redis.exceptions import RedisClusterException

from worker import admin, config_redis, connection, dead, embedded, partitions, words
from worker.client import Refused, Rota
from worker.config import WHEN_NOBODY
from worker.settings import Settings


class BadInput(Exception):
    """Exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadInput(message)


def _list(text: str) -> list[str]:
    try:
        return words.members(text)
    except words.InvalidWord as invalid:
        raise argparse.ArgumentTypeError(str(invalid)) from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"count {text!r} must be a whole number of at least 1")
    return int(text)


def _whole(text: str) -> int:
    """Seconds or a capacity: 0 turns the setting off."""
    from worker.config import MAX_WHOLE

    if not text.isascii() or not text.isdigit() or int(text) > MAX_WHOLE:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number from 0 to {MAX_WHOLE}")
    return int(text)


def _word(parse: Callable[[str], str]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        try:
            return parse(text)
        except words.InvalidWord as invalid:
            raise argparse.ArgumentTypeError(str(invalid)) from None

    convert.__name__ = parse.__name__
    return convert


def _whatsapp_id(text: str) -> str:
    """Meta's phone number id; empty removes it."""
    from worker.config import whatsapp_phone_number_id

    return "" if text == "" else _word(whatsapp_phone_number_id)(text)


ACCOUNT, NUMBER, USER = _word(words.account), _word(words.phone), _word(words.user)
CUSTOMER = _word(lambda text: words.phone(text, "customer"))
GROUP, STATUS = _word(words.group), _word(words.status)


def build_parser() -> Parser:
    parser = Parser(prog="rota", description="Round-robin chat assignment on Redis.")
    parser.add_argument("--traceback", action="store_true", help="show tracebacks on failure")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    worker = commands.add_parser("worker", help="consume inbound messages until stopped")
    worker.add_argument("--burst", action="store_true", help="exit when nothing is left")
    worker.set_defaults(run=cmd_worker)

    account = commands.add_parser("account").add_subparsers(dest="verb", required=True)
    account_set = account.add_parser("set", help="account settings")
    account_set.add_argument("account", type=ACCOUNT)
    account_set.add_argument("--admin", type=USER)
    account_set.add_argument(
        "--presence-ttl", type=_whole, metavar="S", help="seconds presence stays fresh; 0: off"
    )
    account_set.set_defaults(run=cmd_account_set)

    number = commands.add_parser("number").add_subparsers(dest="verb", required=True)
    number_set = number.add_parser("set", help="number settings")
    number_set.add_argument("account", type=ACCOUNT)
    number_set.add_argument("number", type=NUMBER)
    number_set.add_argument("--members", type=_list, help="users and group:NAME, in order")
    number_set.add_argument("--access", type=_list, help="users and group:NAME who use it")
    number_set.add_argument("--assign-unknown", action=argparse.BooleanOptionalAction)
    number_set.add_argument("--online-only", action=argparse.BooleanOptionalAction)
    number_set.add_argument("--admin", type=USER)
    number_set.add_argument(
        "--capacity", type=_whole, metavar="N", help="open conversations per user; 0: no limit"
    )
    number_set.add_argument("--owner-online-only", action=argparse.BooleanOptionalAction)
    number_set.add_argument(
        "--when-nobody",
        choices=WHEN_NOBODY,
        help="nobody eligible: the admin gets the chat, or it waits in the queue",
    )
    number_set.add_argument(
        "--queue-max-wait",
        type=_whole,
        metavar="S",
        help="seconds a queued chat waits before the admin gets it; 0: no limit",
    )
    number_set.add_argument(
        "--reply-timeout",
        type=_whole,
        metavar="S",
        help="seconds a user has to reply before the chat moves on; 0: off",
    )
    number_set.add_argument(
        "--whatsapp-phone-number-id",
        type=_whatsapp_id,
        metavar="ID",
        help="the WhatsApp Cloud API's id of the number (rota serve's webhook); '': none",
    )
    number_set.set_defaults(run=cmd_number_set)
    number_show = number.add_parser("show", help="settings, eligible users, who is next")
    number_show.add_argument("account", type=ACCOUNT)
    number_show.add_argument("number", type=NUMBER)
    number_show.set_defaults(run=cmd_number_show)

    group = commands.add_parser("group").add_subparsers(dest="verb", required=True)
    group_set = group.add_parser("set", help="a group's users, in order")
    group_set.add_argument("account", type=ACCOUNT)
    group_set.add_argument("group", type=GROUP)
    group_set.add_argument("users", type=USER, nargs="*")
    group_set.set_defaults(run=cmd_group_set)

    presence = commands.add_parser("presence").add_subparsers(dest="verb", required=True)
    presence_set = presence.add_parser("set", help="a user's status")
    presence_set.add_argument("account", type=ACCOUNT)
    presence_set.add_argument("user", type=USER)
    presence_set.add_argument("status", type=STATUS)
    presence_set.set_defaults(run=cmd_presence_set)
    heartbeat = presence.add_parser("heartbeat", help="a user's client is alive")
    heartbeat.add_argument("account", type=ACCOUNT)
    heartbeat.add_argument("user", type=USER)
    heartbeat.set_defaults(run=cmd_presence_heartbeat)

    conversation = commands.add_parser("conversation").add_subparsers(dest="verb", required=True)
    for verb, run, what, with_user in (
        ("show", cmd_conversation_show, "JSON: who has it, its state, replied", False),
        ("replied", cmd_conversation_replied, "USER answered the customer", True),
        ("close", cmd_conversation_close, "close the conversation", False),
        ("transfer", cmd_conversation_transfer, "USER takes the conversation now", True),
    ):
        parser_ = conversation.add_parser(verb, help=what)
        parser_.add_argument("account", type=ACCOUNT)
        parser_.add_argument("number", type=NUMBER)
        parser_.add_argument("customer", type=CUSTOMER)
        if with_user:
            parser_.add_argument("user", type=USER)
        parser_.set_defaults(run=run)

    owner = commands.add_parser("owner").add_subparsers(dest="verb", required=True)
    owner_set = owner.add_parser("set", help="mark a known contact")
    owner_set.add_argument("account", type=ACCOUNT)
    owner_set.add_argument("number", type=NUMBER)
    owner_set.add_argument("customer", type=CUSTOMER)
    owner_set.add_argument("user", type=USER)
    owner_set.set_defaults(run=cmd_owner_set)

    partition = commands.add_parser("partition", help="the inbound stream of an account")
    partition.add_argument("account", type=ACCOUNT)
    partition.set_defaults(run=cmd_partition)

    send = commands.add_parser("send", help="push one inbound message")
    send.add_argument("--account", type=ACCOUNT, default=words.DEFAULT_ACCOUNT)
    send.add_argument("number", type=NUMBER)
    send.add_argument("customer", metavar="FROM", type=CUSTOMER)
    send.add_argument("--message-id")
    send.add_argument("--text")
    send.set_defaults(run=cmd_send)

    dead = commands.add_parser("dead").add_subparsers(dest="verb", required=True)
    dead_list = dead.add_parser("list", help="dead letters as JSON lines, oldest first")
    dead_list.add_argument("--count", type=_count, default=100)
    dead_list.add_argument(
        "--unmasked", action="store_true", help="show customer numbers in full (masked: last 4)"
    )
    dead_list.set_defaults(run=cmd_dead_list)
    dead_replay = dead.add_parser("replay", help="put dead letters back on the inbound stream")
    dead_replay.add_argument("--count", type=_count, default=1_000_000)
    dead_replay.set_defaults(run=cmd_dead_replay)

    apply = commands.add_parser("apply", help="write accounts, groups, numbers from a TOML file")
    apply.add_argument("file", type=Path)
    apply.add_argument(
        "--prune",
        action="store_true",
        help="also remove the listed accounts' groups and numbers the file leaves out",
    )
    apply.add_argument("--check", action="store_true", help="validate only; write nothing")
    apply.set_defaults(run=cmd_apply)

    export = commands.add_parser("export", help="print the configuration as a TOML file")
    export.add_argument("--account", type=ACCOUNT, action="append", help="only these (repeatable)")
    export.set_defaults(run=cmd_export)

    reindex = commands.add_parser(
        "reindex", help="list existing accounts, numbers, groups in the index (SCAN; once)"
    )
    reindex.set_defaults(run=cmd_reindex)

    serve = commands.add_parser(
        "serve", help="the HTTP side: the WhatsApp webhook, the API, the console"
    )
    serve.set_defaults(run=cmd_serve)

    stats = commands.add_parser("stats", help="streams, pending, dead letters, chats today")
    stats.add_argument("account", type=ACCOUNT, nargs="?", help="also this account's numbers")
    stats.set_defaults(run=cmd_stats)

    webhooks = commands.add_parser("webhooks", help="deliver decisions to ROTA_WEBHOOK_URL")
    webhooks.add_argument("--burst", action="store_true", help="exit when nothing is left")
    webhooks.set_defaults(run=cmd_webhooks)

    demo = commands.add_parser("demo", help="the product sheet's four cases, end to end")
    demo.set_defaults(run=cmd_demo)

    server = commands.add_parser("embedded").add_subparsers(dest="verb", required=True)
    server.add_parser("url", help="start the embedded Redis if needed, print its URL").set_defaults(
        run=cmd_embedded_url
    )
    server.add_parser("stop", help="stop this folder's embedded Redis").set_defaults(
        run=cmd_embedded_stop
    )
    return parser


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.log import logger, redacted_url
    from worker.metrics import Metrics, QueueGauges, StreamGauges
    from worker.runner import Runner, handle_signals

    log = logger(settings)
    client = connection.connect(settings, blocking=True)
    metrics = Metrics()
    metrics.watch(StreamGauges(client, settings))
    metrics.watch(QueueGauges(connection.connect(settings, decode=True)))
    runner = Runner(client, settings, log, metrics=metrics)
    if runner.webhooks is not None:
        from worker.webhook import WebhookGauges

        metrics.watch(WebhookGauges(runner.webhooks))
    log.info(
        "worker starting",
        redis=redacted_url(connection.url(settings)),
        webhooks=runner.webhooks is not None,
    )
    server = metrics.serve(settings)
    if server is not None:
        log.info("metrics served", addr=settings.metrics_addr, port=server.port)
    handle_signals(runner)
    # What start-up made lives as long as the process: out of the cyclic collector's sight, so
    # a batch's short-lived objects do not make it walk them again and again.
    gc.freeze()
    try:
        return runner.run(burst=args.burst)
    finally:
        if server is not None:
            server.close()
        client.close()  # the pool's connections; the runner closed its own


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from worker.http import serve

    return serve.run(settings)


def cmd_webhooks(args: argparse.Namespace, settings: Settings) -> int:
    from worker import webhook
    from worker.log import logger

    client = connection.connect(settings) if settings.webhook_url else None
    return webhook.run(client, settings, logger(settings), burst=args.burst)


def cmd_apply(args: argparse.Namespace, settings: Settings) -> int:
    from worker import config

    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as error:
        raise BadInput(f"{args.file}: {error}") from None
    try:
        parsed = config.parse(text, str(args.file))
    except config.ConfigError as invalid:
        raise BadInput(str(invalid)) from None
    for warning in config.warnings(parsed):
        print(f"rota: warning: {warning}", file=sys.stderr)
    numbers = sum(len(account.numbers) for account in parsed.values())
    summary = f"{len(parsed)} accounts, {numbers} numbers"
    if args.check:
        print(f"{args.file}: valid ({summary})")
        return 0
    config_redis.apply(connection.connect(settings, decode=True), parsed, prune=args.prune)
    print(f"applied {args.file}: {summary}")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from worker import config

    loaded = config_redis.load(connection.connect(settings, decode=True), args.account)
    print(config.render(loaded), end="")
    return 0


def cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from worker import index

    client = connection.connect(settings, decode=True)
    found = index.rebuild(client)
    numbers = sum(len(kinds["number"]) for kinds in found.values())
    groups = sum(len(kinds["group"]) for kinds in found.values())
    listed = config_redis.rebuild_whatsapp(
        client, {account: kinds["number"] for account, kinds in found.items()}
    )
    whatsapp = f", whatsapp ids {listed}" if listed else ""
    print(f"indexed: accounts {len(found)}, numbers {numbers}, groups {groups}{whatsapp}")
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from worker import redis_setup, stats

    client = connection.connect(settings, decode=True)
    shown = stats.streams(client, settings)
    shown["queues"] = stats.waiting(client)
    shown["redis"] = redis_setup.describe(client)
    if settings.webhook_url:
        from worker.webhook import Webhooks

        shown["webhooks"] = Webhooks(connection.connect(settings), settings).counts()
    if args.account:
        shown["account"] = stats.account(client, args.account)
    print(json.dumps(shown, indent=2))
    return 0


def cmd_account_set(args: argparse.Namespace, settings: Settings) -> int:
    if args.admin is None and args.presence_ttl is None:
        raise BadInput("account set needs --admin or --presence-ttl")
    client = connection.connect(settings, decode=True)
    admin.set_account(client, args.account, args.admin, args.presence_ttl)
    return 0


def cmd_number_set(args: argparse.Namespace, settings: Settings) -> int:
    warnings = admin.set_number(
        connection.connect(settings, decode=True),
        args.account,
        args.number,
        members=args.members,
        access=args.access,
        assign_unknown=args.assign_unknown,
        online_only=args.online_only,
        admin=args.admin,
        capacity=args.capacity,
        owner_online_only=args.owner_online_only,
        when_nobody=args.when_nobody,
        queue_max_wait_s=args.queue_max_wait,
        reply_timeout_s=args.reply_timeout,
        whatsapp_phone_number_id=args.whatsapp_phone_number_id,
    )
    for warning in warnings:
        print(f"rota: warning: {warning}", file=sys.stderr)
    return 0


def cmd_number_show(args: argparse.Namespace, settings: Settings) -> int:
    shown = admin.show_number(connection.connect(settings, decode=True), args.account, args.number)
    if shown is None:
        raise BadInput(f"no settings for account {args.account} number {args.number}")
    print(json.dumps(shown, indent=2))
    return 0


def cmd_group_set(args: argparse.Namespace, settings: Settings) -> int:
    admin.set_group(connection.connect(settings, decode=True), args.account, args.group, args.users)
    return 0


def _rota(settings: Settings) -> Rota:
    return Rota(connection.connect(settings, decode=True), settings)


def cmd_presence_set(args: argparse.Namespace, settings: Settings) -> int:
    _rota(settings).set_presence(args.account, args.user, args.status)
    return 0


def cmd_presence_heartbeat(args: argparse.Namespace, settings: Settings) -> int:
    print(_rota(settings).heartbeat(args.account, args.user))
    return 0


def cmd_conversation_show(args: argparse.Namespace, settings: Settings) -> int:
    shown = _rota(settings).show_conversation(args.account, args.number, args.customer)
    print(json.dumps(shown, indent=2))
    return 0


def cmd_conversation_replied(args: argparse.Namespace, settings: Settings) -> int:
    print(_rota(settings).replied(args.account, args.number, args.customer, args.user))
    return 0


def cmd_conversation_close(args: argparse.Namespace, settings: Settings) -> int:
    print(_rota(settings).close(args.account, args.number, args.customer))
    return 0


def cmd_conversation_transfer(args: argparse.Namespace, settings: Settings) -> int:
    print(_rota(settings).transfer(args.account, args.number, args.customer, args.user))
    return 0


def cmd_owner_set(args: argparse.Namespace, settings: Settings) -> int:
    client = connection.connect(settings, decode=True)
    admin.set_owner(client, args.account, args.number, args.customer, args.user)
    return 0


def cmd_partition(args: argparse.Namespace, settings: Settings) -> int:
    print(partitions.inbound_stream(settings, args.account))
    return 0


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    extra = {"text": args.text} if args.text else {}
    entry_id = _rota(settings).send(
        args.number, args.customer, message_id=args.message_id, account=args.account, **extra
    )
    print(entry_id)
    return 0


def cmd_dead_list(args: argparse.Namespace, settings: Settings) -> int:
    for dead_id, fields in dead.letters(connection.connect(settings), settings, args.count):
        print(json.dumps(dead.shown(dead_id, fields, unmasked=args.unmasked)))
    return 0


def cmd_dead_replay(args: argparse.Namespace, settings: Settings) -> int:
    moved = dead.replay(connection.connect(settings), settings, args.count)
    where = partitions.inbound_streams(settings)
    onto = where[0] if len(where) == 1 else f"{settings.inbound_stream}:0..{len(where) - 1}"
    print(f"replayed {len(moved)} dead letters onto {onto}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from worker.demo import run_demo

    return run_demo(settings)


def cmd_embedded_url(args: argparse.Namespace, settings: Settings) -> int:
    print(embedded.ensure(Path(settings.home)))
    return 0


def cmd_embedded_stop(args: argparse.Namespace, settings: Settings) -> int:
    stopped = embedded.stop(Path(settings.home))
    print("stopped" if stopped else "not running")
    return 0


def _fail(code: int, message: str, show_traceback: bool) -> int:
    if show_traceback:
        import traceback

        traceback.print_exc()
    print(f"rota: {message}".splitlines()[0], file=sys.stderr)
    return code


def _invalid_setting(invalid: pydantic.ValidationError) -> str:
    """``ROTA_X: why`` (checks of several settings name their variables themselves)."""
    error = invalid.errors()[0]
    why = error["msg"].removeprefix("Value error, ")
    return f"ROTA_{str(error['loc'][0]).upper()}: {why}" if error["loc"] else why


def _runtime_failure(failure: Exception) -> str:
    refused = connection.refusal(failure)
    if refused is not None:
        return f"redis refused: {refused}"  # the server's own code: WRONGPASS, NOPERM ...
    if isinstance(failure, redis.ConnectionError | redis.TimeoutError):
        return f"redis unreachable: {failure}"
    return str(failure)


def main(argv: Sequence[str] | None = None) -> int:
    show_traceback = os.environ.get("ROTA_TRACEBACK") == "1"
    try:
        args = build_parser().parse_args(argv)
        show_traceback = show_traceback or args.traceback
        settings = Settings()
        code: int = args.run(args, settings)
        return code
    # Refused: what the worker would only dead-letter; Conflict: an id another number has
    except (BadInput, Refused, config_redis.Conflict) as bad:
        return _fail(2, f"error: {bad}", show_traceback)
    except pydantic.ValidationError as invalid:
        return _fail(2, f"error: {_invalid_setting(invalid)}", show_traceback)
    except (redis.RedisError, RedisClusterException, embedded.EmbeddedError, OSError) as failure:
        return _fail(1, f"error: {_runtime_failure(failure)}", show_traceback)
    except KeyboardInterrupt:
        return 130


def entry() -> NoReturn:
    sys.exit(main())
