"""One clock for every worker: the Redis server's.

De-duplication buckets and their expiry, a decision's ``at`` and the day a chat is counted on
are all derived from "now", so two workers whose machines disagree about the time would
disagree about them too (a worker days behind writes records that expire at once; one ahead
looks for repeats in buckets nobody wrote). Every worker therefore reads the server's TIME and
counts forward from it on its own monotonic clock, which never jumps when the machine's clock
is stepped; it reads TIME again every SYNC_EVERY_S to follow the server. Scripts still get
"now" in ARGV (the dedup key names depend on it, and tests control it by injecting a Clock).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

SYNC_EVERY_S = 5.0


class Clock(Protocol):
    def now_ms(self) -> int:
        """Unix milliseconds."""
        ...

    def sync_if_due(self) -> None:
        """Called by the loop where a Redis round trip is harmless (before a read)."""
        ...


def local_ms() -> int:
    """This machine's clock: what a test or the benchmark uses on the server's own machine."""
    return time.time_ns() // 1_000_000


def server_ms(client: Any) -> int:
    """The server's TIME once, in unix milliseconds (commands that read "today")."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


class ServerClock:
    """The server's clock, read with TIME every ``sync_every_s`` and carried forward in between
    by ``time.monotonic``."""

    def __init__(self, client: Any, sync_every_s: float = SYNC_EVERY_S) -> None:
        self._client = client
        self._sync_every_s = sync_every_s
        self._at_ms = 0  # the server's time at the monotonic instant _at_mono
        self._at_mono = 0.0
        self._next_sync = -1.0

    def sync(self) -> None:
        before = time.monotonic()
        server = server_ms(self._client)
        after = time.monotonic()
        # TIME was read somewhere in the round trip: its middle is the best guess.
        self._at_ms, self._at_mono = server, (before + after) / 2
        self._next_sync = after + self._sync_every_s

    def sync_if_due(self) -> None:
        if time.monotonic() >= self._next_sync:
            self.sync()

    def now_ms(self) -> int:
        if self._next_sync < 0:
            self.sync()  # never read yet: nothing to count forward from
        return self._at_ms + int((time.monotonic() - self._at_mono) * 1000)
