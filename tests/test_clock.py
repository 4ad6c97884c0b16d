"""One clock: workers date decisions, de-duplication records and chat days by the Redis server's
TIME, so a worker on a machine whose clock is days off agrees with every other worker."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.helpers import (
    ACCOUNT,
    NUMBER,
    events,
    given_five_available_users,
    run_burst,
    send,
)
from worker import chats, keys
from worker.clock import server_ms
from worker.settings import Settings

DAY_MS = 86_400_000


def given_machine_clock_off_by(monkeypatch: pytest.MonkeyPatch, offset_ms: int) -> None:
    """This process's wall clock runs ``offset_ms`` ahead (negative: behind); monotonic time
    and the Redis server's clock are untouched, as on a machine whose clock was set wrong."""
    real_ns, real_s = time.time_ns, time.time
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + offset_ms * 1_000_000)
    monkeypatch.setattr(time, "time", lambda: real_s() + offset_ms / 1000)


def without_inbound_id(event: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in event.items() if k != "inbound_id"}


@pytest.mark.parametrize("skew_days", [-3, 2, -10])
def test_worker_whose_clock_is_days_off_dates_everything_by_the_servers_clock(
    rd: Any, rb: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch, skew_days: int
) -> None:
    # Given a message decided by a worker whose clock is right
    given_five_available_users(rd)
    send(rd, settings, "447700900001", message_id="wamid.first")
    assert run_burst(rb, settings, consumer="right") == 0

    # When a worker whose machine is `skew_days` days off decides a new message, and the first
    # one again
    given_machine_clock_off_by(monkeypatch, skew_days * DAY_MS)
    send(rd, settings, "447700900002", message_id="wamid.second")
    send(rd, settings, "447700900001", message_id="wamid.first")
    assert run_burst(rb, settings, consumer="skewed") == 0
    monkeypatch.undo()
    # and the worker whose clock is right gets the new message again
    send(rd, settings, "447700900002", message_id="wamid.second")
    assert run_burst(rb, settings, consumer="right") == 0

    # Then both workers agree: each repeat is the message's first decision, unchanged
    first, second, first_again, second_again = events(rd, settings)
    assert (first["user"], second["user"]) == ("A", "B")
    assert without_inbound_id(first_again) == without_inbound_id(first)
    assert without_inbound_id(second_again) == without_inbound_id(second)
    # and the skewed worker's decision is dated by the server
    now = server_ms(rd)
    assert abs(int(second["at"]) - now) < 60_000, "the decision's `at` is the server's time"
    # its de-duplication record is in the server's current bucket and lives a window or more
    window_ms = settings.dedup_window_s * 1000
    bucket = next(
        b for b in (now // window_ms, now // window_ms - 1) if rd.exists(keys.dedup(ACCOUNT, b))
    )
    assert rd.hexists(keys.dedup(ACCOUNT, bucket), f"{NUMBER}:wamid.second")
    assert rd.pttl(keys.dedup(ACCOUNT, bucket)) > window_ms - 60_000
    # and the new chat it made is counted on the server's day, kept for days
    today = keys.chats(ACCOUNT, chats.day(now))
    assert rd.hgetall(today) == {"A": "1", "B": "1"}
    assert rd.ttl(today) > (chats.KEEP_DAYS - 1) * DAY_MS // 1000
