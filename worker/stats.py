"""``rota stats``: what an operator asks first. The streams (length, pending, lag, consumers:
each inbound partition and their total), dead letters by error, webhook deliveries, the
accounts whose customers wait in a queue and, for one account, its queue, each number's
eligible users, next user, cursor and queue, and the chats each user got today."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from worker import admin, backlog, chats, clock, config_redis, index, keys
from worker.backlog import Backlog, text
from worker.settings import Settings

DEAD_SCAN_LIMIT = 100_000  # dead letters read to count them by error


def _lag(client: Any, stream: Backlog) -> int | None:
    """Redis 7 reports the lag; on 6.2 it is 0 when the group has read up to the last entry
    and unknown (None) otherwise."""
    if stream.lag is not None or not stream.grouped:
        return stream.lag
    last = text(client.xinfo_stream(stream.stream)["last-generated-id"])
    return 0 if last == stream.last_delivered else None


def _consumers(client: Any, settings: Settings, streams: list[Backlog]) -> list[list[Any]]:
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        if stream.grouped:
            pipe.xinfo_consumers(stream.stream, settings.group)
    replies = iter(pipe.execute())
    return [next(replies) if stream.grouped else [] for stream in streams]


def _stream(stream: Backlog, group_name: str, consumers: list[Any]) -> dict[str, Any]:
    """One inbound stream: its length and, once the group exists, pending, lag, consumers."""
    shown: dict[str, Any] = {"stream": stream.stream, "length": stream.length}
    if not stream.grouped:
        return {**shown, "group": None}
    return {
        **shown,
        "group": group_name,
        "pending": stream.pending,
        "lag": stream.lag,
        "consumers": [
            {"name": text(c["name"]), "pending": int(c["pending"]), "idle_ms": int(c["idle"])}
            for c in consumers
        ],
    }


def _merged(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each consumer once over every partition: pending summed, idle the least."""
    merged: dict[str, dict[str, Any]] = {}
    for stream in shown:
        for consumer in stream.get("consumers", []):
            seen = merged.setdefault(consumer["name"], {**consumer, "pending": 0})
            seen["pending"] += consumer["pending"]
            seen["idle_ms"] = min(seen["idle_ms"], consumer["idle_ms"])
    return [merged[name] for name in sorted(merged)]


def inbound(client: Any, settings: Settings) -> dict[str, Any]:
    """The inbound stream and its group; with partitions, the totals over every partition
    and each partition under ``partitions``."""
    backlogs = [replace(b, lag=_lag(client, b)) for b in backlog.read(client, settings)]
    consumers = _consumers(client, settings, backlogs)
    shown = [_stream(b, settings.group, c) for b, c in zip(backlogs, consumers, strict=True)]
    if settings.inbound_partitions == 1:
        return shown[0]
    total: dict[str, Any] = {
        "stream": settings.inbound_stream,
        "length": sum(b.length for b in backlogs),
        "group": None,
    }
    if any(b.grouped for b in backlogs):
        total.update(
            group=settings.group,
            pending=backlog.total_pending(backlogs),
            lag=backlog.total_lag(backlogs),
            consumers=_merged(shown),
        )
    return {**total, "partitions": shown}


def dead_by_error(client: Any, settings: Settings) -> dict[str, int]:
    tally: Counter[str] = Counter()
    start = "-"
    while sum(tally.values()) < DEAD_SCAN_LIMIT:
        page = client.xrange(settings.dead_stream, min=start, count=1000)
        if not page:
            break
        for _, fields in page:
            tally[text(fields.get("error", fields.get(b"error", "unknown")))] += 1
        start = "(" + text(page[-1][0])
    return dict(sorted(tally.items()))


def streams(client: Any, settings: Settings) -> dict[str, Any]:
    return {
        "inbound": inbound(client, settings),
        "assignments": {
            "stream": settings.events_stream,
            "length": client.xlen(settings.events_stream),
        },
        "dead_letters": {
            "stream": settings.dead_stream,
            "count": client.xlen(settings.dead_stream),
            "by_error": dead_by_error(client, settings),
        },
    }


def queues(client: Any, accounts: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per account (the given ones, else every indexed one): ``queue``, the customers waiting
    on all its numbers, and ``oldest_wait_ms``, how long the one queued first has waited (None
    when nobody waits). A few pipelines for all the accounts together, whatever their number:
    the numbers, then each queue's length and head, then (when any waits) the heads' times."""
    wanted = sorted(client.smembers(keys.accounts()) if accounts is None else accounts)
    pipe = client.pipeline(transaction=False)
    for name in wanted:
        pipe.smembers(keys.indexed_numbers(name))
    numbers = [(a, n) for a, found in zip(wanted, pipe.execute(), strict=True) for n in found]
    pipe = client.pipeline(transaction=False)
    for name, number in numbers:
        pipe.llen(keys.queue(name, number))
        pipe.lindex(keys.queue(name, number), 0)
    replies = iter(pipe.execute())
    shown: dict[str, dict[str, Any]] = {a: {"queue": 0, "oldest_wait_ms": None} for a in wanted}
    heads = []
    for name, number in numbers:
        length, head = next(replies), next(replies)
        shown[name]["queue"] += length
        if head is not None:
            heads.append((name, number, head))
    if not heads:
        return shown
    pipe = client.pipeline(transaction=False)
    for name, number, head in heads:
        pipe.hget(keys.queued(name, number), head)
    now_ms = clock.server_ms(client)
    for (name, _, _), stored in zip(heads, pipe.execute(), strict=True):
        queued_at = config_redis.unix_ms(stored)  # None: served meanwhile, or edited by hand
        if queued_at is not None:
            waited, oldest = max(0, now_ms - queued_at), shown[name]["oldest_wait_ms"]
            shown[name]["oldest_wait_ms"] = waited if oldest is None else max(oldest, waited)
    return shown


def waiting(client: Any) -> dict[str, dict[str, Any]]:
    """The accounts with customers waiting, as ``queues`` shows them."""
    return {name: queue for name, queue in queues(client).items() if queue["queue"]}


def account(client: Any, account_name: str) -> dict[str, Any]:
    """One account: its queue (its numbers' together), chats per user today and, per number,
    who is eligible and next and its queue."""
    now_ms = clock.server_ms(client)  # the day the workers count on
    numbers = {}
    found = sorted(index.names(client, [account_name]).get(account_name, {}).get("number", ()))
    for number in found:
        shown = admin.show_number(client, account_name, number)
        if shown is not None:
            numbers[number] = {
                "eligible_now": shown["eligible_now"],
                "next": shown["next"],
                "cursor": shown["cursor"],
                "queue": shown["queue"],
                "oldest_wait_ms": shown["oldest_wait_ms"],
            }
    waits = [shown["oldest_wait_ms"] for shown in numbers.values()]
    return {
        "account": account_name,
        "queue": sum(shown["queue"] for shown in numbers.values()),
        "oldest_wait_ms": max((wait for wait in waits if wait is not None), default=None),
        "day": chats.day(now_ms),
        "chats_today": chats.today(client, account_name, now_ms),
        "numbers": numbers,
    }
