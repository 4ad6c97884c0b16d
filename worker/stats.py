"""``rota stats``: what an operator asks first. The streams (length, pending, lag, consumers),
dead letters by error, webhook deliveries and, for one account, each number's eligible users,
next user and cursor and the chats each user got today."""

from __future__ import annotations

from collections import Counter
from typing import Any

from worker import admin, chats, clock, index
from worker.settings import Settings

DEAD_SCAN_LIMIT = 100_000  # dead letters read to count them by error


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def group(client: Any, settings: Settings) -> dict[str, Any] | None:
    """The consumer group's pending, lag and consumers; None before the group exists.

    Redis 7 reports the lag; on 6.2 it is 0 when the group has read up to the last entry
    and unknown (None) otherwise."""
    name = settings.inbound_stream
    if not client.exists(name):
        return None
    found = [g for g in client.xinfo_groups(name) if _text(g["name"]) == settings.group]
    if not found:
        return None
    info = found[0]
    lag = info.get("lag")
    if lag is None:
        last = _text(client.xinfo_stream(name)["last-generated-id"])
        lag = 0 if last == _text(info["last-delivered-id"]) else None
    consumers = client.xinfo_consumers(name, settings.group)
    return {
        "group": settings.group,
        "pending": int(info["pending"]),
        "lag": None if lag is None else int(lag),
        "consumers": [
            {
                "name": _text(c["name"]),
                "pending": int(c["pending"]),
                "idle_ms": int(c["idle"]),
            }
            for c in consumers
        ],
    }


def dead_by_error(client: Any, settings: Settings) -> dict[str, int]:
    tally: Counter[str] = Counter()
    start = "-"
    while sum(tally.values()) < DEAD_SCAN_LIMIT:
        page = client.xrange(settings.dead_stream, min=start, count=1000)
        if not page:
            break
        for _, fields in page:
            tally[_text(fields.get("error", fields.get(b"error", "unknown")))] += 1
        start = "(" + _text(page[-1][0])
    return dict(sorted(tally.items()))


def streams(client: Any, settings: Settings) -> dict[str, Any]:
    return {
        "inbound": {
            "stream": settings.inbound_stream,
            "length": client.xlen(settings.inbound_stream),
            **(group(client, settings) or {"group": None}),
        },
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


def account(client: Any, account_name: str) -> dict[str, Any]:
    """One account: chats per user today and, per number, who is eligible and next."""
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
            }
    return {
        "account": account_name,
        "day": chats.day(now_ms),
        "chats_today": chats.today(client, account_name, now_ms),
        "numbers": numbers,
    }
