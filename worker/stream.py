"""Thin Redis verbs on the streams: group creation, read, claim, publish and acknowledge."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from worker.connection import is_cluster
from worker.messages import Fields
from worker.settings import Settings


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


def ensure_group(client: Any, settings: Settings) -> None:
    """Creates the consumer group (and the stream) unless it exists; only BUSYGROUP is fine."""
    try:
        client.xgroup_create(settings.inbound_stream, settings.group, id="0", mkstream=True)
    except ResponseError as error:
        if not str(error).startswith("BUSYGROUP"):
            raise


def read_new(client: Any, settings: Settings, consumer: str, block_ms: int | None) -> list[Entry]:
    reply = client.xreadgroup(
        settings.group,
        consumer,
        {settings.inbound_stream: ">"},
        count=settings.batch_size,
        block=block_ms,
    )
    if not reply:
        return []
    _, entries = reply[0]
    return [Entry(_id(entry_id), fields, 1) for entry_id, fields in entries]


class Claimer:
    """XPENDING (for the delivery counts poison detection needs) + XCLAIM, with a cursor that
    walks the pending list instead of restarting at its head each time."""

    def __init__(self, settings: Settings, consumer: str) -> None:
        self._settings = settings
        self._consumer = consumer
        self._start = "-"

    def claim(self, client: Any) -> Claimed:
        settings = self._settings
        pending = client.xpending_range(
            settings.inbound_stream,
            settings.group,
            min=self._start,
            max="+",
            count=settings.batch_size,
            idle=settings.claim_idle_ms,
        )
        full = len(pending) == settings.batch_size
        self._start = "(" + _id(pending[-1]["message_id"]) if full else "-"
        if not pending:
            return Claimed([], [], more=False)
        delivered = {_id(p["message_id"]): int(p["times_delivered"]) for p in pending}
        # XCLAIM re-checks the idle time, so of two workers claiming at once only one wins.
        taken = client.xclaim(
            settings.inbound_stream,
            settings.group,
            self._consumer,
            settings.claim_idle_ms,
            list(delivered),
        )
        retry, poison = [], []
        for entry_id, fields in taken:
            inbound_id = _id(entry_id)
            seen = delivered.get(inbound_id, 0)
            if seen >= settings.max_deliveries:
                poison.append(Entry(inbound_id, fields or {}, seen))
            else:
                retry.append(Entry(inbound_id, fields or {}, seen + 1))
        return Claimed(retry, poison, more=full)


def defer(client: Any, settings: Settings, consumer: str, entries: Sequence[Entry]) -> None:
    """Keeps entries whose decision met a passing cluster condition (a slot mid-migration, a
    failover) pending with this consumer, with the delivery count they had before this try:
    they are claimed again after ROTA_CLAIM_IDLE_MS like any pending entry, but such tries
    never bring them closer to ``poison``."""
    by_count: dict[int, list[str]] = {}
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
    client: Any,
    settings: Settings,
    events: Iterable[dict[str, Any]],
    dead: Iterable[dict[Any, Any]],
    done: Sequence[str],
) -> None:
    """Events and dead letters first, then the acknowledgement, in one round trip: a crash in
    between redelivers the entries, whose decisions then repeat (at least once).

    On a Redis Cluster the three streams may live on different masters, and a cluster
    pipeline writes to every master before it reads any reply, so the XACK waits for the
    events and dead letters to be written (a second round trip) rather than overtake them."""
    pipe = client.pipeline(transaction=False)
    maxlen = settings.events_maxlen or None
    for event in events:
        pipe.xadd(settings.events_stream, event, maxlen=maxlen, approximate=True)
    for letter in dead:
        pipe.xadd(settings.dead_stream, letter)
    if done and is_cluster(client):
        pipe.execute()
        client.xack(settings.inbound_stream, settings.group, *done)
        return
    if done:
        pipe.xack(settings.inbound_stream, settings.group, *done)
    pipe.execute()


def _id(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id
