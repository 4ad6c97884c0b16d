"""The inbound stream keeps only what some group still needs, and a consumer group destroyed by
hand starts again where Rota's group had published everything (worker.retention)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.conftest import make_settings
from tests.helpers import (
    NUMBER,
    cursor,
    drained,
    finish,
    given_five_available_users,
    given_new_customers,
    pending_count,
    run_burst,
    the_decisions,
    wait_until,
)
from tests.redis_server import RedisServer
from worker import keys, partitions
from worker.retention import before, format_id, parse_id

STREAM, GROUP = "rota:inbound", "rota"


def poll(condition: Callable[[], bool], timeout: float) -> None:
    """Waits until the condition holds or the time is up, whichever comes first."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


ROUNDS, PER_ROUND = 10, 5_000


def test_inbound_stream_stays_short_over_a_long_run(
    rd: Any, redis_server: RedisServer, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given a worker that sweeps the stream every 0.2 s
    given_five_available_users(rd)
    worker = workers(redis_server.url, inbound_trim_every_s="0.2")
    # Approximate trimming removes whole stream nodes: the node holding the last entry stays.
    node_entries = int(rd.config_get("stream-node-max-entries")["stream-node-max-entries"])

    # When 50,000 messages come in rounds of 5,000
    message_ids, lengths, sizes = [], [], []
    for round_ in range(ROUNDS):
        message_ids += given_new_customers(rd, PER_ROUND, start=round_ * PER_ROUND)
        wait_until(lambda: drained(rd), 60, "the round decided and acknowledged")
        wait_until(lambda: rd.xlen(STREAM) <= node_entries, 10, "trimmed to the last stream node")
        lengths.append(rd.xlen(STREAM))
        sizes.append(rd.memory_usage(STREAM))
    worker.send_signal(signal.SIGTERM)
    assert finish(worker, timeout=30) == (0, "")

    # Then every message was decided once, and the stream's length and memory stayed flat
    assert len(the_decisions(rd, message_ids)) == ROUNDS * PER_ROUND
    print(f"\ninbound after each round: lengths {lengths}, bytes {sizes}")
    assert max(lengths) <= node_entries
    assert max(sizes) < 64 * 1024, "a few stream nodes, not 50,000 entries"
    assert sizes[-1] <= 2 * max(sizes[: ROUNDS // 2])


def test_trimming_keeps_what_another_group_has_not_acknowledged_and_what_keep_s_keeps(
    rd: Any, rb: Any, redis_server: RedisServer
) -> None:
    # Given 1,000 decided messages, and a second group on the stream that acknowledged only
    # the first 200 of the 300 it read
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 1_000)
    assert run_burst(rb, make_settings(redis_server.url, inbound_keep_s=3600)) == 0
    assert rd.xlen(STREAM) == 1_000, "ROTA_INBOUND_KEEP_S keeps acknowledged entries"
    rd.xgroup_create(STREAM, "audit", id="0")
    [[_, read]] = rd.xreadgroup("audit", "reader", {STREAM: ">"}, count=300)
    rd.xack(STREAM, "audit", *[entry_id for entry_id, _ in read[:200]])

    # When a worker sweeps without keeping anything
    assert run_burst(rb, make_settings(redis_server.url)) == 0

    # Then what the audit group still holds or has not read stays; some of the rest is gone
    first_kept = rd.xrange(STREAM, count=1)[0][0]
    assert parse_id(first_kept) <= parse_id(read[200][0])
    assert rd.xlen(STREAM) < 1_000
    # and once the audit group is gone, the stream is trimmed to its last node or so
    rd.xgroup_destroy(STREAM, "audit")
    assert run_burst(rb, make_settings(redis_server.url)) == 0
    assert rd.xlen(STREAM) <= 200
    assert len(the_decisions(rd, message_ids)) == 1_000


def test_destroyed_group_starts_again_where_everything_was_published_losing_nothing(
    rd: Any, rb: Any, redis_server: RedisServer, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given 3,000 messages decided and published,
    given_five_available_users(rd)
    settings = make_settings(redis_server.url)
    published = given_new_customers(rd, 3_000)
    assert run_burst(rb, settings) == 0
    # a message that a worker which then died had read and not decided,
    [held] = given_new_customers(rd, 1, start=3_000)
    rd.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=1)
    [group] = rd.xinfo_groups(STREAM)
    held_id = group["last-delivered-id"]
    # and a running worker that decided 200 more since and noted how far the group got
    after = given_new_customers(rd, 200, start=3_001)
    options = {"claim_idle_ms": "600000", "inbound_trim_every_s": "0.2"}
    worker = workers(redis_server.url, consumer="running", **options)
    wait_until(lambda: rd.xlen("rota:assignments") == 3_200, 30, "the 200 decided")
    noted = format_id(before(parse_id(held_id)))
    # (polled, not required: the assertions below tell what the worker does without it)
    poll(lambda: rd.get(keys.published(STREAM)) == noted, timeout=10)

    # When an operator destroys the consumer group, and messages keep coming
    rd.xgroup_destroy(STREAM, GROUP)
    later = given_new_customers(rd, 100, start=3_201)

    # Then the worker creates it again after the last entry up to which all was published:
    everything = [*published, held, *after, *later]
    wait_until(lambda: rd.xlen("rota:assignments") >= 3_501 and drained(rd), 30, "all decided")
    worker.send_signal(signal.SIGTERM)
    code, stderr = finish(worker, timeout=30)
    assert code == 0, stderr
    # the held message is decided, the 3,000 are not read again, only the 200 after it are
    # (repeating their first decisions), and the new ones are decided
    decisions = the_decisions(rd, everything)
    times = Counter(event["message_id"] for _, event in rd.xrange("rota:assignments"))
    assert {m: times[m] for m in published if times[m] != 1} == {}
    assert {times[m] for m in after} == {2}
    assert times[held] == 1
    assert {times[m] for m in later} == {1}
    assert Counter(d["reason"] for d in decisions.values()) == {"round_robin": 3_301}
    assert cursor(rd) == 3_301
    assert pending_count(rd) == 0
    # and the one worker that created it again said so, once
    assert stderr.count("consumer group was missing") == 1, stderr


def test_every_partition_is_trimmed_and_noted_on_its_own(
    rd: Any, rb: Any, redis_server: RedisServer
) -> None:
    # Given 4 inbound partitions with 2,000 messages of accounts spread over them
    settings = make_settings(redis_server.url, inbound_partitions=4)
    accounts = [f"acct{i}" for i in range(8)]
    streams = {partitions.inbound_stream(settings, account) for account in accounts}
    assert len(streams) > 1
    for account in accounts:
        given_five_available_users(rd, account=account)
    for i in range(2_000):
        account = accounts[i % len(accounts)]
        fields = {"account": account, "number": NUMBER, "from": f"4477{i:08d}"}
        rd.xadd(partitions.inbound_stream(settings, account), fields)

    # When a worker drains every partition
    assert run_burst(rb, settings) == 0

    # Then each partition is trimmed, and notes how far its own group got
    assert rd.xlen("rota:assignments") == 2_000
    for name in streams:
        assert rd.xlen(name) < 250, name
        [group] = rd.xinfo_groups(name)
        assert rd.get(keys.published(name)) == group["last-delivered-id"]
