"""What a worker's sweep decides: the due timers and the waiting queues of every account in
``rota:swept``, as sweep entries for decide.lua, and the outbox entries a crashed worker left
unpublished.

Every worker sweeps every ROTA_SWEEP_EVERY_MS. The reads here only say what may be due: the
script checks each timer again as it fires it, so two workers sweeping at once never fire one
twice, and a timer due while no worker ran fires at the first sweep after.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker import keys
from worker.messages import Fields, Message
from worker.stream import check_replies, pairs, stream_id
from worker.transport import Command, Transport

# Timers and outbox entries read per account per sweep; a sweep that reaches it goes again at
# once.
DUE_PER_SWEEP = 500
# An outbox entry this old lost the worker that wrote it (a worker publishes its own within
# milliseconds): the sweep publishes it. A slow worker may then publish it twice, which the
# event_id de-duplicates. Short, so that it is published before the conversation's next move
# (a reply timer is 1 s at least) would follow it: a late entry would otherwise be the last
# one on the stream for its customer and name a user who no longer holds the conversation.
STRANDED_AFTER_MS = 500


@dataclass(frozen=True, slots=True)
class Stranded:
    account: str
    outbox_id: str
    fields: Fields


@dataclass(slots=True)
class Due:
    entries: list[Message] = field(default_factory=list)  # timer and queue entries
    stranded: list[Stranded] = field(default_factory=list)
    more: bool = False  # some account had more than DUE_PER_SWEEP


def entry(account: str, member: str) -> Message:
    """The sweep entry of a timers member: ``NUMBER:CUSTOMER`` a timer, ``NUMBER`` a queue."""
    number, _, customer = member.partition(":")
    return Message("", account, number, customer, "", "timer" if customer else "queue")


def due(transport: Transport, now_ms: int) -> Due:
    """Two round trips: the accounts, then each one's due timers and stranded outbox."""
    [accounts] = transport.execute([("SMEMBERS", keys.swept_accounts())])
    check_replies([accounts])
    assert isinstance(accounts, list | set)  # a set through a cluster client's callbacks
    names = sorted(name.decode() for name in accounts)
    commands: list[Command] = []
    for account in names:
        limit = ("LIMIT", 0, DUE_PER_SWEEP)
        commands.append(("ZRANGEBYSCORE", keys.timers(account), "-inf", now_ms, *limit))
        old = now_ms - STRANDED_AFTER_MS
        commands.append(("XRANGE", keys.outbox(account), "-", old, "COUNT", DUE_PER_SWEEP))
    replies = transport.execute(commands)
    check_replies(replies)
    found = Due()
    for k, account in enumerate(names):
        members, outbox = replies[2 * k], replies[2 * k + 1]
        assert isinstance(members, list) and isinstance(outbox, list)
        found.entries.extend(entry(account, bytes(m).decode()) for m in members)
        found.stranded.extend(
            Stranded(account, stream_id(entry_id), pairs(flat)) for entry_id, flat in outbox
        )
        found.more = found.more or DUE_PER_SWEEP in (len(members), len(outbox))
    return found


def delete_published(transport: Transport, by_account: dict[str, list[str]]) -> None:
    """The outbox entries now on the events stream, deleted."""
    commands: list[Command] = [
        ("XDEL", keys.outbox(account), *ids) for account, ids in by_account.items() if ids
    ]
    if commands:
        check_replies(transport.execute(commands))


def mark_swept(accounts: set[str]) -> Command:
    return ("SADD", keys.swept_accounts(), *sorted(accounts))


def forget(transport: Transport, gone: list[Message]) -> None:
    """Timers of numbers that no longer have settings: nothing can fire them."""
    commands: list[Command] = [
        ("ZREM", keys.timers(m.account), keys.timer(m.number, m.customer)) for m in gone
    ]
    if commands:
        check_replies(transport.execute(commands))
