"""The recent decisions of one account (optionally one number): the newest entries of the
decisions stream, read newest first and filtered, with bounded work whatever the stream holds.

The stream is shared by every account, so an account's last N decisions may lie anywhere in
it: the search reads pages newest first and stops at N matches, at the stream's start, or
after ``SCAN_LIMIT`` entries, whichever comes first (``Recent.searched_all`` says which)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.record import InvalidRecord, Record
from worker.settings import Settings

MAX_LIMIT = 100  # decisions one call returns at most
SCAN_LIMIT = 10_000  # entries one call looks at at most, newest first
_FIRST_PAGE, _LARGEST_PAGE = 100, 1_000


@dataclass
class Recent:
    decisions: list[tuple[str, Record]] = field(default_factory=list)  # (entry id, record)
    scanned: int = 0  # entries looked at
    searched_all: bool = False  # the stream's oldest entry was reached: nothing older matches


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def recent(
    client: Any, settings: Settings, account: str, number: str | None = None, limit: int = 20
) -> Recent:
    """Up to ``limit`` (at most MAX_LIMIT) decisions and conversation events of ``account``
    (and ``number``), newest first, each with its entry id; an entry that is no published
    record (written by hand) is looked at and skipped."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit {limit} must be from 1 to {MAX_LIMIT}")
    found = Recent()
    newest, page = "+", _FIRST_PAGE
    while found.scanned < SCAN_LIMIT:
        count = min(page, SCAN_LIMIT - found.scanned)
        entries = client.xrevrange(settings.events_stream, max=newest, min="-", count=count)
        for entry_id, fields in entries:
            found.scanned += 1
            try:
                record = Record.from_fields(fields)
            except InvalidRecord:
                continue
            if record.account == account and number in (None, record.number):
                found.decisions.append((_text(entry_id), record))
                if len(found.decisions) == limit:
                    return found
        if len(entries) < count:
            found.searched_all = True
            return found
        newest = "(" + _text(entries[-1][0])  # exclusive (Redis 6.2): the page after this one
        page = min(page * 4, _LARGEST_PAGE)  # the account is rare here: read faster
    return found
