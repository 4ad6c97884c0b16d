"""Inbound stream fields -> a message ready to decide, or the dead-letter reason. No Redis here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from worker import words

MAX_MESSAGE_ID_BYTES = 256


MESSAGE = "message"
# The CRM's activity on the inbound stream, and the fields each needs besides the account.
ACTIVITY: dict[str, tuple[str, ...]] = {
    "heartbeat": ("user",),
    "replied": ("number", "customer", "user"),
    "closed": ("number", "customer"),
    "transfer": ("number", "customer", "user"),
}
# The entries a worker's sweep decides (worker.sweep), never read from a stream: a
# conversation's timer, and a number's queue.
SWEEP = ("timer", "queue")


@dataclass(frozen=True, slots=True)
class Message:
    """An inbound entry to decide: a message (kind ``message``) or the CRM's activity."""

    inbound_id: str
    account: str
    number: str  # "" for a heartbeat
    customer: str  # "" for a heartbeat
    message_id: str
    kind: str = MESSAGE
    user: str = ""  # the activity's user: heartbeat, replied, transfer

    @property
    def dedup_field(self) -> str:
        """What one message is, however often it is delivered: NUMBER:MESSAGE_ID for a
        message, KIND:NUMBER:MESSAGE_ID for activity (its ids are the CRM's, not Meta's)."""
        if self.kind == MESSAGE:
            return f"{self.number}:{self.message_id}"
        return f"{self.kind}:{self.number}:{self.message_id}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an entry cannot be decided: a contract dead-letter code and a one-line detail."""

    error: str
    detail: str


Fields = dict[bytes, bytes]
_FIELD_KEYS = {
    name: name.encode()
    for name in ("account", "number", "from", "message_id", "type", "customer", "user")
}


def _text(fields: Fields, name: str) -> str | None:
    raw = fields.get(_FIELD_KEYS[name])
    if not raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise words.InvalidWord(f"{name} is not UTF-8") from None


def customer(text: str, name: str = "from") -> str:
    """The sender's number; a detail shows it masked as the logs do (people read dead
    letters; the letter's own ``from`` keeps it whole for a replay)."""
    try:
        return words.phone(text, name)
    except words.InvalidWord:
        form = "6-15 digits after +, spaces, dashes, dots, brackets"
        raise words.InvalidWord(f"{name} {words.mask(text)!r} must be {form}") from None


def _parse(inbound_id: str, fields: Fields) -> Message | Rejection:
    kind = _text(fields, "type") or MESSAGE
    if kind != MESSAGE and kind not in ACTIVITY:
        known = ", ".join((MESSAGE, *ACTIVITY))
        return Rejection("invalid_field", f"type {kind[:40]!r} is none of {known}")
    needed = ("number", "from") if kind == MESSAGE else ACTIVITY[kind]
    values = {name: _text(fields, name) for name in needed}
    missing = [name for name in needed if values[name] is None]
    if missing:
        for_kind = "" if kind == MESSAGE else f" for {kind}"
        return Rejection("missing_field", f"{' and '.join(missing)} required{for_kind}")
    message_id = _text(fields, "message_id") or inbound_id
    if len(message_id.encode()) > MAX_MESSAGE_ID_BYTES:
        return Rejection("invalid_field", f"message_id longer than {MAX_MESSAGE_ID_BYTES} bytes")
    account = words.account(_text(fields, "account") or words.DEFAULT_ACCOUNT)
    number, user = values.get("number"), values.get("user")
    customer_text, name = (
        (values["from"], "from") if kind == MESSAGE else (values.get("customer"), "customer")
    )
    return Message(
        inbound_id,
        account,
        words.phone(number) if number else "",
        customer(customer_text, name) if customer_text else "",
        message_id,
        kind,
        words.user(user) if user else "",
    )


def parse(inbound_id: str, fields: Fields, max_bytes: int) -> Message | Rejection:
    """A message without ``message_id`` is identified by its inbound entry id."""
    size = sum(map(len, fields)) + sum(map(len, fields.values()))
    if size > max_bytes:
        return Rejection("too_large", f"{size} bytes, limit {max_bytes}")
    try:
        return _parse(inbound_id, fields)
    except words.InvalidWord as invalid:
        return Rejection("invalid_field", str(invalid))


def check(fields: Mapping[str, str], max_bytes: int) -> Rejection | None:
    """What the worker would dead-letter the entry for, before it is written (``rota send``):
    the same checks as ``parse``. The inbound id is not known yet; it only stands in for a
    missing ``message_id``, which passes."""
    try:
        encoded = {name.encode(): value.encode() for name, value in fields.items()}
    except UnicodeEncodeError:
        return Rejection("invalid_field", "not UTF-8")
    parsed = parse("0-0", encoded, max_bytes)
    return parsed if isinstance(parsed, Rejection) else None
