"""New chats per user per UTC day, per account: what ``rota stats`` and ``number show`` report.

A new chat is a decision that made someone the customer's owner (``round_robin`` or
``admin_fallback``). The worker counts them in the pipeline that publishes a batch (one HINCRBY
per account and user), outside decide.lua. Only decisions made in the batch are counted: a
repeated message gets its first decision back, which the decision says (``Decision.new``
false), and is not counted again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from worker import keys
from worker.record import Record
from worker.transport import Command

NEW_CHAT_REASONS = frozenset({"round_robin", "admin_fallback"})
KEEP_DAYS = 8  # a day's hash expires this many days after the day starts
DAY_MS = 86_400_000


def day(at_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at_ms // 1000))


def count(decided_now: Sequence[Record], now_ms: int) -> list[Command]:
    """The commands that add new chats, sent with the publish round trip, from the records of
    the decisions made in this batch (not those repeated)."""
    tally = Counter(
        (record.account, record.user) for record in decided_now if record.reason in NEW_CHAT_REASONS
    )
    if not tally:
        return []
    today = day(now_ms)
    expire_at_s = (now_ms // DAY_MS + KEEP_DAYS) * DAY_MS // 1000
    commands: list[Command] = [
        ("HINCRBY", keys.chats(account, today), user, chats)
        for (account, user), chats in tally.items()
    ]
    for account in {account for account, _ in tally}:
        commands.append(("EXPIREAT", keys.chats(account, today), expire_at_s))
    return commands


def today(client: Any, account: str, now_ms: int) -> dict[str, int]:
    """user -> new chats so far today (UTC), from a decoding client."""
    counts = client.hgetall(keys.chats(account, day(now_ms)))
    return {user: int(chats) for user, chats in sorted(counts.items())}
