"""Capacity under many workers: 4 processes, 20,000 new customers, capacity 5, closes mixed in.
No user of the rotation ever holds more than 5 open conversations, sampled while the workers
run, and at the end the open counts are exactly the open conversations; also with workers
killed with SIGKILL every 200 ms."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import ForkedWorkers
from tests.helpers import ACCOUNT, NUMBER, USERS, drained, given_five_available_users, wait_until
from tests.redis_server import RedisServer
from worker import admin, keys

CUSTOMERS = 20_000
CAPACITY = 5
CLOSE_EVERY = 3  # a close of an earlier customer after every third message
CLOSE_LAG = 1_000  # customers between a message and its close: earlier batches, mostly
WORKERS = 4
CHAOS_CUSTOMERS = 100_000  # as the chaos test without capacity: long enough for many kills


def given_traffic(rd: Any, customers: int = CUSTOMERS) -> list[str]:
    """The messages and closes, interleaved on the stream; the message ids."""
    given_five_available_users(rd)
    admin.set_account(rd, ACCOUNT, "boss")
    rd.hset(keys.number(ACCOUNT, NUMBER), "capacity", CAPACITY)
    message_ids, pipe = [], rd.pipeline(transaction=False)
    for i in range(customers):
        message_ids.append(f"wamid.{i:06d}")
        fields = {"account": ACCOUNT, "number": NUMBER, "from": f"4477{i:08d}"}
        pipe.xadd("rota:inbound", {**fields, "message_id": message_ids[-1]})
        if i % CLOSE_EVERY == 0 and i >= CLOSE_LAG:
            closed = {"type": "closed", "account": ACCOUNT, "number": NUMBER}
            pipe.xadd("rota:inbound", {**closed, "customer": f"4477{i - CLOSE_LAG:08d}"})
        if i % 2_000 == 1_999:
            pipe.execute()
    pipe.execute()
    return message_ids


def rotation_counts(rd: Any) -> dict[str, int]:
    counts = rd.hgetall(keys.open_counts(ACCOUNT, NUMBER))
    return {user: int(counts.get(user, 0)) for user in USERS}


def assert_counts_exact(rd: Any, message_ids: list[str]) -> None:
    """Open counts equal the open conversations; one decision per message; nothing left."""
    holders = Counter(rd.hvals(keys.open_conversations(ACCOUNT, NUMBER)))
    counts = {u: int(n) for u, n in rd.hgetall(keys.open_counts(ACCOUNT, NUMBER)).items()}
    assert {u: n for u, n in counts.items() if n} == dict(holders)
    assert all(n >= 0 for n in counts.values()), counts
    assert all(counts.get(user, 0) <= CAPACITY for user in USERS), counts
    decided: dict[str, set[tuple[str, str]]] = {}
    for _, event in rd.xrange("rota:assignments"):
        decided.setdefault(event["message_id"], set()).add((event["user"], event["reason"]))
    assert set(decided) == set(message_ids)
    assert all(len(ways) == 1 for ways in decided.values())
    assert rd.xlen("rota:dead") == 0


def watch_capacity(rd: Any, until: Any, at_most_s: float) -> int:
    """Samples the rotation's open counts until ``until()``; asserts none above capacity."""
    samples, deadline = 0, time.monotonic() + at_most_s
    while not until() and time.monotonic() < deadline:
        counts = rotation_counts(rd)
        assert max(counts.values()) <= CAPACITY, counts
        assert min(counts.values()) >= 0, counts
        samples += 1
    return samples


@pytest.mark.chaos
def test_four_workers_never_put_a_user_above_capacity_and_counts_stay_exact(
    rd: Any, redis_server: RedisServer, forked_workers: ForkedWorkers
) -> None:
    message_ids = given_traffic(rd)
    live = [forked_workers.start(redis_server.url) for _ in range(WORKERS)]

    samples = watch_capacity(rd, lambda: drained(rd), 120)

    for process in live:
        os.kill(process.pid or 0, signal.SIGTERM)
    for process in live:
        process.join(timeout=60)
    assert [p.exitcode for p in live] == [0] * WORKERS, forked_workers.stderr()[-2_000:]
    assert samples > 10, "the counts were sampled while the workers ran"
    assert_counts_exact(rd, message_ids)


@pytest.mark.chaos
def test_workers_killed_every_200ms_keep_open_counts_exact_with_capacity_and_closes(
    rd: Any, redis_server: RedisServer, forked_workers: ForkedWorkers
) -> None:
    message_ids = given_traffic(rd, CHAOS_CUSTOMERS)
    options = {"claim_idle_ms": "1000", "max_deliveries": "1000"}
    live = [forked_workers.start(redis_server.url, **options) for _ in range(WORKERS)]
    rng, started, kills = random.Random(12), time.monotonic(), 0
    while rd.xlen("rota:assignments") < CHAOS_CUSTOMERS * 0.9 and time.monotonic() - started < 90:
        time.sleep(max(started + (kills + 1) * 0.2 - time.monotonic(), 0))
        counts = rotation_counts(rd)
        assert max(counts.values()) <= CAPACITY and min(counts.values()) >= 0, counts
        victim = rng.randrange(WORKERS)
        os.kill(live[victim].pid or 0, signal.SIGKILL)
        live[victim].join()
        live[victim] = forked_workers.start(redis_server.url, **options)
        kills += 1

    wait_until(lambda: drained(rd), 120, "every entry read and acknowledged")
    for process in live:
        os.kill(process.pid or 0, signal.SIGTERM)
    for process in live:
        process.join(timeout=60)
    assert [p.exitcode for p in live] == [0] * WORKERS, forked_workers.stderr()[-2_000:]
    assert kills > 5
    assert_counts_exact(rd, message_ids)
