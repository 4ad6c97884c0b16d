"""Inbound stream fields -> a message ready to decide, or the dead-letter reason. No Redis here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from worker import words

MAX_MESSAGE_ID_BYTES = 256


@dataclass(frozen=True, slots=True)
class Message:
    inbound_id: str
    account: str
    number: str
    customer: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an entry cannot be decided: a contract dead-letter code and a one-line detail."""

    error: str
    detail: str


Fields = dict[bytes, bytes]
_FIELD_KEYS = {name: name.encode() for name in ("account", "number", "from", "message_id")}


def _text(fields: Fields, name: str) -> str | None:
    raw = fields.get(_FIELD_KEYS[name])
    if not raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise words.InvalidWord(f"{name} is not UTF-8") from None


def _customer(text: str) -> str:
    """The sender's number; a detail shows it masked as the logs do (people read dead
    letters; the letter's own ``from`` keeps it whole for a replay)."""
    try:
        return words.phone(text, "from")
    except words.InvalidWord:
        form = "6-15 digits after +, spaces, dashes, dots, brackets"
        raise words.InvalidWord(f"from {words.mask(text)!r} must be {form}") from None


def _parse(inbound_id: str, fields: Fields) -> Message | Rejection:
    number, customer = _text(fields, "number"), _text(fields, "from")
    missing = [name for name, value in (("number", number), ("from", customer)) if value is None]
    if missing or number is None or customer is None:
        return Rejection("missing_field", f"{' and '.join(missing)} required")
    message_id = _text(fields, "message_id") or inbound_id
    if len(message_id.encode()) > MAX_MESSAGE_ID_BYTES:
        return Rejection("invalid_field", f"message_id longer than {MAX_MESSAGE_ID_BYTES} bytes")
    return Message(
        inbound_id=inbound_id,
        account=words.account(_text(fields, "account") or words.DEFAULT_ACCOUNT),
        number=words.phone(number),
        customer=_customer(customer),
        message_id=message_id,
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
