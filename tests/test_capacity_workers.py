"""A number's capacity under 4 workers: never exceeded at any instant, counts always exact.

Prints its figures (run with ``pytest -s``): entries, samples, decisions by reason, time.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.capacity import (
    Sampler,
    assert_decided_within_capacity,
    given_capacity_number,
    given_customers_and_closes,
)
from tests.conftest import ForkedWorkers
from tests.redis_server import RedisServer

CUSTOMERS = 20_000
WORKERS = 4
DRAIN_AT_MOST_S = 120


@pytest.mark.chaos
def test_four_workers_never_put_a_user_above_capacity_and_keep_open_counts_exact(
    rd: Any, redis_server: RedisServer, forked_workers: ForkedWorkers
) -> None:
    # Given a number of 8 members with capacity 5 and an admin, and 20,000 distinct customers'
    # first messages with a `closed` entry of an earlier customer after most of them
    given_capacity_number(rd)
    traffic = given_customers_and_closes(rd, CUSTOMERS, seed=12)

    # When 4 burst workers drain the stream together, while the test snapshots the open
    # conversations and open counts over and over
    started = time.monotonic()
    live = [forked_workers.start(redis_server.url, "--burst") for _ in range(WORKERS)]
    sampler = Sampler()
    while any(p.is_alive() for p in live):
        assert time.monotonic() - started < DRAIN_AT_MOST_S, "workers still running"
        sampler.sample(rd)
    elapsed = time.monotonic() - started
    for process in live:
        process.join()
    assert [p.exitcode for p in live] == [0] * WORKERS, forked_workers.stderr()[-2_000:]

    # Then no snapshot had a rotation user above capacity, a negative count, or counts that
    # differ from the open conversations, and users did fill up (the test tested something)
    assert sampler.samples >= 10
    reasons = assert_decided_within_capacity(rd, traffic, sampler)
    print(
        f"\ncapacity: {CUSTOMERS:,} messages and {traffic.closes:,} closes, {WORKERS} workers, "
        f"{sampler.samples:,} snapshots; {dict(reasons)}; drained in {elapsed:.1f} s"
    )
