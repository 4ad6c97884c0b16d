"""Entries deleted from an inbound stream while pending (an XTRIM or XDEL by hand, a producer's
MAXLEN): their fields are gone, so they cannot be decided again, and a decision made for one
is found only by its account, number and message_id, which were among those fields.

A worker therefore keeps the decisions it made but could not publish, by inbound id, and
publishes one when its entry turns out to have vanished; every other vanished entry is
dead-lettered ``vanished`` with its inbound id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KEPT = 10_000  # unpublished decisions remembered; the oldest are forgotten first
DETAIL = (
    "deleted from the stream while pending; a decision made for it, if any, is published "
    "when its message is sent again with the same message_id within the de-duplication window"
)


class Unpublished:
    """Decisions whose publishing failed, by inbound id, until they are published."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._events: dict[str, dict[str, Any]] = {}

    def remember(self, events: Sequence[dict[str, Any]]) -> None:
        for event in events:
            self._events[event["inbound_id"]] = event
        while len(self._events) > self._kept:
            del self._events[next(iter(self._events))]

    def forget(self, events: Sequence[dict[str, Any]]) -> None:
        if self._events:  # nearly always empty: the hot path pays one check
            for event in events:
                self._events.pop(event["inbound_id"], None)

    def take(self, inbound_id: str) -> dict[str, Any] | None:
        return self._events.pop(inbound_id, None)
