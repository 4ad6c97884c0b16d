"""Thin Redis verbs on the streams: group creation, read, claim, publish and acknowledge."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.commands.core import Script
from redis.exceptions import ResponseError
from redis.typing import StreamIdT

from worker import keys
from worker.messages import Fields
from worker.settings import Settings
from worker.transport import Command, RedisClient, Transport


@dataclass(frozen=True, slots=True)
class Entry:
    inbound_id: str
    fields: Fields
    deliveries: int  # including this one


@dataclass(frozen=True, slots=True)
class Claimed:
    """Entries taken over from idle consumers, split by whether they may be tried again."""

    retry: list[Entry]
    poison: list[Entry]
    more: bool  # the pending list may hold more idle entries past these
    vanished: list[Entry]  # deleted from the stream while pending (XTRIM, XDEL): no fields


def ensure_group(client: RedisClient, settings: Settings) -> str | None:
    """Creates the consumer group (and the stream) unless it exists: after the id up to which
    a lost group had published every entry (noted by worker.retention), else at the stream's
    start. The id it was created at; None when it existed (only BUSYGROUP is fine)."""
    noted = client.get(keys.published(settings.inbound_stream))
    start = stream_id(noted) if noted else "0"
    try:
        client.xgroup_create(settings.inbound_stream, settings.group, id=start, mkstream=True)
    except ResponseError as error:
        if not str(error).startswith("BUSYGROUP"):
            raise
        return None
    return start


def delete_consumer(
    client: RedisClient, script: Script, settings: Settings, consumer: str, idle_ms: int = 0
) -> bool:
    """Removes the consumer if it holds nothing and was idle ``idle_ms`` or more, checked and
    done in one script (lua/delconsumer.lua); whether it was removed."""
    args: list[str | int] = [settings.group, consumer, idle_ms]
    return bool(script(keys=[settings.inbound_stream], args=args, client=client) == 1)


def read_new(
    transport: Transport,
    settings: Settings,
    consumer: str,
    block_ms: int | None,
    acks: Sequence[str] = (),
) -> list[Entry]:
    """Acknowledges ``acks`` (the last batch, published), then reads up to a batch of new
    entries, waiting at most block_ms (None: not at all), in one round trip. Sent raw: at low
    traffic this is once per message, and redis-py's per-command overhead would be most of
    the latency."""
    block = ("BLOCK", block_ms) if block_ms is not None else ()
    command = ("XREADGROUP", "GROUP", settings.group, consumer, "COUNT", settings.batch_size)
    read = (*command, *block, "STREAMS", settings.inbound_stream, ">")
    replies = transport.execute([_xack(settings, acks), read] if acks else [read])
    check_replies(replies)
    return _entries(replies[-1])


def _entries(reply: object) -> list[Entry]:
    """XREADGROUP's reply for one stream: RESP3 answers a map of stream -> entries, RESP2 a
    list of [stream, entries] pairs, nothing new a nil."""
    if isinstance(reply, dict):
        entries = next(iter(reply.values()))
    elif isinstance(reply, list) and reply:
        entries = reply[0][1]
    else:
        return []
    return [Entry(stream_id(entry_id), pairs(fields), 1) for entry_id, fields in entries]


def pairs(flat: list[bytes] | Fields | None) -> Fields:
    """XREADGROUP's flat field/value list as a dict (a cluster pipeline's reply callbacks
    have made it one already); None (a deleted entry) as no fields."""
    if not flat:
        return {}
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))


class Claimer:
    """XPENDING (for the delivery counts poison detection needs) + XCLAIM, with a cursor that
    walks the pending list instead of restarting at its head each time."""

    def __init__(self, settings: Settings, consumer: str) -> None:
        self._settings = settings
        self._consumer = consumer
        self._start = "-"

    def claim(self, transport: Transport) -> Claimed:
        settings, client = self._settings, transport.client
        pending: list[dict[str, Any]] = client.xpending_range(
            settings.inbound_stream,
            settings.group,
            min=self._start,
            max="+",
            count=settings.batch_size,
            idle=settings.claim_idle_ms,
        )
        full = len(pending) == settings.batch_size
        self._start = "(" + stream_id(pending[-1]["message_id"]) if full else "-"
        if not pending:
            return Claimed([], [], more=False, vanished=[])
        delivered = {stream_id(p["message_id"]): int(p["times_delivered"]) for p in pending}
        # Deleted entries stay pending until acknowledged after their dead letter: Redis 7's
        # XCLAIM would drop them from the pending list unseen.
        gone = set(missing(transport, settings, list(delivered)))
        wanted = [i for i in delivered if i not in gone]
        # XCLAIM re-checks the idle time, so of two workers claiming at once only one wins.
        taken = self._xclaim(client, wanted) if wanted else []
        retry, poison, returned = [], [], set()
        for entry_id, fields in taken:
            inbound_id = stream_id(entry_id)
            returned.add(inbound_id)
            seen = delivered.get(inbound_id, 0)
            if not fields:
                gone.add(inbound_id)  # deleted since the check (Redis 6.2 claims it so)
            elif seen >= settings.max_deliveries:
                poison.append(Entry(inbound_id, fields, seen))
            else:
                retry.append(Entry(inbound_id, fields, seen + 1))
        # Not returned: another worker's now, or deleted since the check (Redis 7).
        gone.update(missing(transport, settings, [i for i in wanted if i not in returned]))
        vanished = [Entry(i, {}, count) for i, count in delivered.items() if i in gone]
        return Claimed(retry, poison, more=full, vanished=vanished)

    def _xclaim(self, client: RedisClient, inbound_ids: Sequence[str]) -> list[Any]:
        settings = self._settings
        taken: list[Any] = client.xclaim(
            settings.inbound_stream,
            settings.group,
            self._consumer,
            settings.claim_idle_ms,
            list[StreamIdT](inbound_ids),
        )
        return taken


def missing(transport: Transport, settings: Settings, inbound_ids: Sequence[str]) -> list[str]:
    """Which of these ids have no entry on the inbound stream any more, in one round trip."""
    replies = transport.execute([("XRANGE", settings.inbound_stream, i, i) for i in inbound_ids])
    check_replies(replies)
    return [i for i, reply in zip(inbound_ids, replies, strict=True) if not reply]


def defer(client: RedisClient, settings: Settings, consumer: str, entries: Sequence[Entry]) -> None:
    """Keeps entries whose decision met a passing cluster condition (a slot mid-migration, a
    failover) pending with this consumer, with the delivery count they had before this try:
    they are claimed again after ROTA_CLAIM_IDLE_MS like any pending entry, but such tries
    never bring them closer to ``poison``."""
    by_count: dict[int, list[StreamIdT]] = {}
    for entry in entries:
        by_count.setdefault(entry.deliveries - 1, []).append(entry.inbound_id)
    for count, ids in by_count.items():
        client.xclaim(
            settings.inbound_stream,
            settings.group,
            consumer,
            0,
            ids,
            retrycount=count,
            justid=True,
        )


def publish(
    transport: Transport,
    settings: Settings,
    events: Iterable[dict[str, Any]],
    dead: Iterable[dict[Any, Any]],
    extra: Sequence[Command] = (),
    also: Sequence[Callable[[Any], None]] = (),
) -> None:
    """Events, dead letters and ``extra`` commands (counters) in one round trip, then ``also``
    (callbacks that queue on a redis-py pipeline: rq's webhook jobs). Raises the first error.

    The caller acknowledges the entries only after this returns (see read_new): an XADD
    refused (out of memory, a wrong type) must not leave its entry acknowledged. A crash in
    between redelivers the entries, whose decisions then repeat unchanged (at least once).
    """
    trim = ("MAXLEN", "~", settings.events_maxlen) if settings.events_maxlen else ()
    writes: list[Command] = [
        ("XADD", settings.events_stream, *trim, "*", *_flat(event)) for event in events
    ]
    writes.extend(("XADD", settings.dead_stream, "*", *_flat(letter)) for letter in dead)
    writes.extend(extra)
    check_replies(transport.execute(writes))
    if also:
        pipe = transport.client.pipeline(transaction=False)
        for add in also:
            add(pipe)
        pipe.execute()


def ack(transport: Transport, settings: Settings, inbound_ids: Sequence[str]) -> None:
    if inbound_ids:
        check_replies(transport.execute([_xack(settings, inbound_ids)]))


def _xack(settings: Settings, inbound_ids: Sequence[str]) -> Command:
    return ("XACK", settings.inbound_stream, settings.group, *inbound_ids)


def check_replies(replies: Sequence[object]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _flat(fields: dict[Any, Any]) -> list[Any]:
    return [part for pair in fields.items() for part in pair]


def stream_id(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id
