"""Entries deleted from an inbound stream while pending (an XTRIM or XDEL by hand, a producer's
MAXLEN): their fields are gone, so they cannot be decided again, and a decision made for one
is found only by its account, number and message_id, which were among those fields.

A worker therefore keeps the decisions it made but could not publish, by inbound id, and
publishes one when its entry turns out to have vanished; every other vanished entry is
dead-lettered ``vanished`` with its inbound id.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.record import Record

KEPT = 10_000  # unpublished decisions remembered; the oldest are forgotten first
DETAIL = (
    "deleted from the stream while pending; a decision made for it, if any, is published "
    "when its message is sent again with the same message_id within the de-duplication window"
)


class Unpublished:
    """Decisions whose publishing failed, by inbound id, until they are published."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._records: dict[str, Record] = {}

    def remember(self, records: Sequence[Record]) -> None:
        for record in records:
            self._records[record.inbound_id] = record
        while len(self._records) > self._kept:
            del self._records[next(iter(self._records))]

    def forget(self, records: Sequence[Record]) -> None:
        if self._records:  # nearly always empty: the hot path pays one check
            for record in records:
                self._records.pop(record.inbound_id, None)

    def take(self, inbound_id: str) -> Record | None:
        return self._records.pop(inbound_id, None)
