"""The published decision, one entry on the events stream: the one definition of its fields
(the contract's "Decisions published"), for the worker that writes it and whatever reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.assign import Decision
    from worker.messages import Message

REASONS = (
    "owner",
    "unknown_disabled",
    "round_robin",
    "admin_fallback",
    "no_admin",
    "queued",
    "transfer",
    "reply_timeout",
)
FIELDS = ("account", "number", "customer", "message_id", "inbound_id", "user", "reason", "at")
EVENT_FIELDS = ("previous", "event_id")  # a conversation event's, besides FIELDS


class InvalidRecord(ValueError):
    """Stream fields that are not a published decision; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Record:
    account: str
    number: str
    customer: str
    message_id: str
    inbound_id: str
    user: str  # "" for unknown_disabled and no_admin
    reason: str
    at: int  # unix ms of the message's first decision
    # A conversation event's (a change of user without a new message): who had it, its id.
    previous: str = ""
    event_id: str = ""

    @classmethod
    def of(cls, message: Message, decision: Decision) -> Record:
        """The entry a decision publishes; a transfer's is an event, without a message_id."""
        return cls(
            message.account,
            message.number,
            message.customer,
            "" if decision.event_id else message.message_id,
            message.inbound_id,
            decision.user,
            decision.reason,
            decision.at,
            decision.previous,
            decision.event_id,
        )

    def to_fields(self) -> dict[str, str | int]:
        """The stream entry's fields (and the webhook job's JSON object)."""
        fields: dict[str, str | int] = {
            "account": self.account,
            "number": self.number,
            "customer": self.customer,
            "message_id": self.message_id,
            "inbound_id": self.inbound_id,
            "user": self.user,
            "reason": self.reason,
            "at": self.at,
        }
        if self.event_id:
            fields["previous"] = self.previous
            fields["event_id"] = self.event_id
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> Record:
        """From a stream entry read by a bytes or a decoding client, or a job's JSON object;
        a conversation event's ``previous`` and ``event_id`` too, other fields left out."""
        account, number, customer, message_id, inbound_id, user, reason, at = (
            _text(fields, name) for name in FIELDS
        )
        if not at.isascii() or not at.isdigit():
            raise InvalidRecord(f"at must be unix milliseconds, not {at[:20]!r}")
        previous, event_id = (_text(fields, name, "") for name in EVENT_FIELDS)
        return cls(
            account,
            number,
            customer,
            message_id,
            inbound_id,
            user,
            reason,
            int(at),
            previous,
            event_id,
        )


def _text(fields: Mapping[Any, Any], name: str, missing: str | None = None) -> str:
    value = fields.get(name, fields.get(name.encode()))
    if value is None and missing is not None:
        return missing
    if value is None:
        raise InvalidRecord(f"{name} missing")
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    return str(value)
