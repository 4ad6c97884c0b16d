"""Chaos: workers killed with SIGKILL again and again while they drain a large stream.

Prints its figures (run with ``pytest -s`` to see them): messages, kills, total time, time from
the last kill until every message was decided.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from typing import Any

import pytest

from tests.capacity import (
    Sampler,
    assert_decided_within_capacity,
    given_capacity_number,
    given_customers_and_closes,
)
from tests.conftest import ForkedWorkers
from tests.helpers import (
    USERS,
    cursor,
    drained,
    given_five_available_users,
    given_new_customers,
    pending_count,
    the_decisions,
    wait_until,
)
from tests.redis_server import RedisServer

MESSAGES = 100_000
WORKERS = 4
KILL_EVERY_S = 0.2
KILL_UNTIL = 0.9  # of the messages decided; then the survivors finish
KILLING_AT_MOST_S = 90  # a machine too slow to get that far stops killing anyway
DRAIN_AT_MOST_S = 120


@pytest.mark.chaos
def test_workers_killed_every_200ms_decide_each_of_100k_messages_exactly_once(
    rd: Any, redis_server: RedisServer, forked_workers: ForkedWorkers
) -> None:
    # Given 5 available users and 100,000 first messages of new customers on one number
    given_five_available_users(rd)
    message_ids: list[str] = []
    for start in range(0, MESSAGES, 10_000):
        message_ids += given_new_customers(rd, 10_000, start=start)
    # and 4 workers that claim what a dead one held once it has been idle for 1 s. Poison
    # detection is pushed out of the way: at this kill rate an entry may well be held by 5
    # workers in a row that all die, and burying it as poison is right but not tested here.
    options = {"claim_idle_ms": "1000", "max_deliveries": "1000"}
    started = time.monotonic()
    live = [forked_workers.start(redis_server.url, **options) for _ in range(WORKERS)]

    # When a random one of them is killed with SIGKILL every 200 ms and a new one started,
    # until 90% of the messages are decided
    rng = random.Random(20_000)
    kills = 0
    while rd.xlen("rota:assignments") < MESSAGES * KILL_UNTIL:
        if time.monotonic() - started > KILLING_AT_MOST_S:
            break
        time.sleep(max(started + (kills + 1) * KILL_EVERY_S - time.monotonic(), 0))
        victim = rng.randrange(WORKERS)
        os.kill(live[victim].pid or 0, signal.SIGKILL)
        live[victim].join()
        assert live[victim].exitcode == -signal.SIGKILL
        live[victim] = forked_workers.start(redis_server.url, **options)
        kills += 1
    last_kill = time.monotonic()
    events_at_last_kill = rd.xlen("rota:assignments")

    # Then the survivors decide everything that is left, the dead workers' entries included,
    wait_until(lambda: drained(rd), DRAIN_AT_MOST_S, "every entry read and acknowledged")
    drained_at = time.monotonic()
    # and stop cleanly
    for process in live:
        os.kill(process.pid or 0, signal.SIGTERM)
    for process in live:
        process.join(timeout=60)
    assert [p.exitcode for p in live] == [0] * WORKERS, forked_workers.stderr()[-2_000:]

    # and each message has exactly one decision (a repeat of an event is allowed, a different
    # decision is not), the rotation is exact, the cursor counts the round-robin decisions,
    # nothing is pending and nothing was dead-lettered
    decisions = the_decisions(rd, message_ids)
    round_robin = [d for d in decisions.values() if d["reason"] == "round_robin"]
    assert len(round_robin) == MESSAGES
    assert Counter(d["user"] for d in round_robin) == dict.fromkeys(USERS, MESSAGES // len(USERS))
    assert cursor(rd) == len(round_robin)
    assert pending_count(rd) == 0
    assert rd.xlen("rota:dead") == 0
    repeats = rd.xlen("rota:assignments") - MESSAGES
    print(
        f"\nchaos: {MESSAGES:,} messages, {WORKERS} workers, {kills} SIGKILLs, one every "
        f"{(last_kill - started) / max(kills, 1) * 1000:.0f} ms until {events_at_last_kill:,} "
        f"events; {decided_by_the_dead(rd):,} messages decided by a worker killed before it "
        f"published, published unchanged by another; {repeats:,} repeated events; drained "
        f"{drained_at - started:.1f} s after the workers started, "
        f"{drained_at - last_kill:.1f} s after the last kill"
    )


CAPACITY_CUSTOMERS = 250_000


@pytest.mark.chaos
def test_workers_killed_every_200ms_keep_capacity_and_open_counts_exact_with_closes(
    rd: Any, redis_server: RedisServer, forked_workers: ForkedWorkers
) -> None:
    # Given a number of 8 members with capacity 5 and an admin, and 250,000 distinct customers'
    # first messages with a `closed` entry of an earlier customer after most of them
    given_capacity_number(rd)
    traffic = given_customers_and_closes(rd, CAPACITY_CUSTOMERS, seed=200)
    # and 4 workers that claim what a dead one held once it has been idle for 1 s (poison
    # detection out of the way, as above)
    options = {"claim_idle_ms": "1000", "max_deliveries": "1000"}
    started = time.monotonic()
    live = [forked_workers.start(redis_server.url, **options) for _ in range(WORKERS)]

    # When a random one of them is killed with SIGKILL every 200 ms and a new one started,
    # until 90% of the messages are decided, the open state snapshotted between kills
    rng, sampler = random.Random(12), Sampler()
    kills = 0
    while rd.xlen("rota:assignments") < CAPACITY_CUSTOMERS * KILL_UNTIL:
        if time.monotonic() - started > KILLING_AT_MOST_S:
            break
        while time.monotonic() < started + (kills + 1) * KILL_EVERY_S:
            sampler.sample(rd)
        victim = rng.randrange(WORKERS)
        os.kill(live[victim].pid or 0, signal.SIGKILL)
        live[victim].join()
        assert live[victim].exitcode == -signal.SIGKILL
        live[victim] = forked_workers.start(redis_server.url, **options)
        kills += 1
    last_kill = time.monotonic()

    # Then the survivors decide everything that is left, still never above capacity,
    def sampled_drained() -> bool:
        sampler.sample(rd)
        return drained(rd)

    wait_until(sampled_drained, DRAIN_AT_MOST_S, "every entry read and acknowledged")
    drained_at = time.monotonic()
    # and stop cleanly
    for process in live:
        os.kill(process.pid or 0, signal.SIGTERM)
    for process in live:
        process.join(timeout=60)
    assert [p.exitcode for p in live] == [0] * WORKERS, forked_workers.stderr()[-2_000:]

    # and no user went above capacity, each message has one decision, the counts are exact
    reasons = assert_decided_within_capacity(rd, traffic, sampler)
    print(
        f"\nchaos with capacity: {CAPACITY_CUSTOMERS:,} messages and {traffic.closes:,} closes, "
        f"{WORKERS} workers, {kills} SIGKILLs, {sampler.samples:,} snapshots; {dict(reasons)}; "
        f"drained {drained_at - started:.1f} s after the workers started, "
        f"{drained_at - last_kill:.1f} s after the last kill"
    )


def decided_by_the_dead(rd: Any) -> int:
    """Messages first published a claim interval or more after their decision was made: the
    worker that decided them died before publishing, and another repeated its decision."""
    first_published: dict[str, int] = {}
    for event_id, event in rd.xrange("rota:assignments"):
        published_ms = int(event_id.split("-")[0])
        first_published.setdefault(event["message_id"], published_ms - int(event["at"]))
    return sum(delay >= 1_000 for delay in first_published.values())
