"""Presence as the CRM writes it (HSET, any case, padded): what counts as available, and
reading statuses without copying values too long to be one.

lua/decide.lua reads presence the same way; the property test holds the two together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker import keys

AVAILABLE = "available"
# A value longer than this is no status: unavailable, and never read (lua/decide.lua has the
# same figure). The longest status is "unavailable"; the rest is room for padding.
MAX_STATUS_BYTES = 64
_LUA_SPACE = " \t\n\v\f\r"  # what Lua's %s trims, no more (not Unicode spaces)


def is_available(status: str | None) -> bool:
    """``available`` once the whitespace around it is trimmed, in any (ASCII) case."""
    if status is None or len(status) > MAX_STATUS_BYTES:  # characters <= bytes: no encode
        return False
    if len(status.encode()) > MAX_STATUS_BYTES:
        return False
    trimmed = status.strip(_LUA_SPACE)
    return trimmed.isascii() and trimmed.lower() == AVAILABLE


def statuses(client: Any, account: str, users: Sequence[str]) -> dict[str, str]:
    """user -> stored status, for the users whose value is short enough to be a status; a
    longer value is measured (HSTRLEN), never read. From a decoding client."""
    if not users:
        return {}
    key = keys.presence(account)
    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.hstrlen(key, user)
    short = [u for u, n in zip(users, pipe.execute(), strict=True) if 0 < n <= MAX_STATUS_BYTES]
    values = client.hmget(key, short) if short else []
    return {user: value for user, value in zip(short, values, strict=True) if value is not None}
