"""The worker as operators run it: many processes, crashes, signals, bad input, Redis outages.

Every test reads the outcome from Redis the way the CRM and operators do: decisions on
rota:assignments, dead letters on rota:dead, the consumer group's pending list.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import (
    ON_SINGLE_AND_CLUSTER,
    ROOT,
    Target,
    make_settings,
    worker_env,
)
from tests.helpers import (
    ACCOUNT,
    DEAD_LETTER_FIELDS,
    NUMBER,
    USERS,
    all_decided,
    consumer_names,
    cursor,
    dead,
    events,
    fields_of,
    finish,
    given_decisions_of_account_fail,
    given_five_available_users,
    given_new_customers,
    given_number,
    given_presence,
    pause_holding_decided,
    pending_count,
    run_burst,
    the_decisions,
    wait_until,
)
from tests.redis_server import RedisServer
from worker import dead as dead_letters
from worker import keys
from worker.settings import Settings

# --- Many workers --------------------------------------------------------------------------


@pytest.mark.chaos
@ON_SINGLE_AND_CLUSTER
def test_four_workers_share_rotation_exactly_and_decide_each_message_once(
    rd: Any, target: Target, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given 5 available users and 20,000 first messages of new customers on one number
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 20_000)

    # When 4 burst workers drain the stream together
    processes = [workers(target.url, "--burst") for _ in range(4)]
    outcomes = [finish(p, timeout=120) for p in processes]

    # Then every worker exits 0, each message has exactly one decision, the rotation is exact
    assert outcomes == [(0, "")] * 4
    decisions = the_decisions(rd, message_ids)
    assert len(events(rd, make_settings(target.url))) == 20_000, "no crash, no repeat"
    assert {d["reason"] for d in decisions.values()} == {"round_robin"}
    assert Counter(d["user"] for d in decisions.values()) == dict.fromkeys(USERS, 4_000)
    assert cursor(rd) == 20_000
    assert pending_count(rd) == 0


@pytest.mark.chaos
@ON_SINGLE_AND_CLUSTER
def test_worker_killed_mid_stream_leaves_nothing_undecided_or_decided_twice(
    rd: Any, target: Target, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given 20,000 new customers and two workers that claim what stays idle for 500 ms
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 20_000)
    claim = {"claim_idle_ms": "500"}
    victim = workers(target.url, consumer="victim", **claim)
    survivor = workers(target.url, consumer="survivor", **claim)
    wait_until(lambda: rd.xlen("rota:assignments") >= 2_000, 30, "first decisions")

    # When the victim is killed with SIGKILL after deciding a batch but before publishing it
    assert pause_holding_decided(rd, victim, "victim") > 0
    victim.kill()
    assert finish(victim, timeout=10)[0] == -signal.SIGKILL

    # Then the survivor takes over the victim's batch and finishes the stream
    wait_until(all_decided(rd, len(message_ids)), 60, "every message decided")
    survivor.send_signal(signal.SIGTERM)
    assert finish(survivor, timeout=30) == (0, "")
    decisions = the_decisions(rd, message_ids)
    round_robin = [d for d in decisions.values() if d["reason"] == "round_robin"]
    assert len(round_robin) == 20_000
    assert Counter(d["user"] for d in round_robin) == dict.fromkeys(USERS, 4_000)
    assert cursor(rd) == len(round_robin)
    assert pending_count(rd) == 0


# --- Dead letters --------------------------------------------------------------------------

BAD_MESSAGES = {
    "missing_field": fields_of(message_id="bad.1", text="no sender"),
    "invalid_field": fields_of(number="12ab34", **{"from": "447700900001"}, message_id="bad.1"),
    "unknown_number": fields_of(number="15559999999", **{"from": "447700900001"}, message_id="x"),
    "too_large": fields_of(**{"from": "447700900001"}, message_id="bad.1", text="x" * 2_000),
}


@pytest.mark.parametrize("code", list(BAD_MESSAGES))
def test_undecidable_message_is_dead_lettered_with_its_fields_and_why(
    rd: Any, rb: Any, redis_server: RedisServer, code: str
) -> None:
    # Given a number, a bad message between two good ones, and a 1 KiB message limit
    settings = make_settings(redis_server.url, max_message_bytes=1_024)
    given_five_available_users(rd)
    bad = BAD_MESSAGES[code]
    rd.xadd("rota:inbound", fields_of(**{"from": "447700900010"}, message_id="good.1"))
    bad_id = rd.xadd("rota:inbound", bad)
    rd.xadd("rota:inbound", fields_of(**{"from": "447700900011"}, message_id="good.2"))

    # When a worker drains the stream
    assert run_burst(rb, settings) == 0

    # Then the bad message is on rota:dead, whole, with the code; the good ones are decided
    [letter] = dead(rd, settings)
    assert {k: v for k, v in letter.items() if k not in DEAD_LETTER_FIELDS} == bad
    assert letter["error"] == code
    assert letter["detail"]
    assert letter["inbound_id"] == bad_id
    assert letter["deliveries"] == "1"
    assert [e["message_id"] for e in events(rd, settings)] == ["good.1", "good.2"]
    assert pending_count(rd) == 0


def test_message_failing_max_deliveries_times_becomes_poison_and_others_are_decided(
    rd: Any, rb: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an account whose every decision fails inside the script,
    settings = make_settings(redis_server.url, claim_idle_ms=200, max_deliveries=3)
    given_five_available_users(rd)
    given_number(rd, ["A"], account="broken")
    given_decisions_of_account_fail(monkeypatch, "broken")
    # and one of its messages between messages of a healthy account
    rd.xadd("rota:inbound", fields_of(**{"from": "447700900010"}, message_id="good.1"))
    poison_fields = fields_of(account="broken", **{"from": "447700900001"}, message_id="p.1")
    poison_id = rd.xadd("rota:inbound", poison_fields)
    rd.xadd("rota:inbound", fields_of(**{"from": "447700900011"}, message_id="good.2"))

    # When the first burst ends, the healthy messages are decided and the poison stays pending
    assert run_burst(rb, settings) == 0
    assert [e["message_id"] for e in events(rd, settings)] == ["good.1", "good.2"]
    assert pending_count(rd) == 1
    assert dead(rd, settings) == []

    # and when bursts go on, claiming it each time it is idle long enough
    rounds = 1
    while not dead(rd, settings) and rounds < 50:
        time.sleep(0.25)
        assert run_burst(rb, settings) == 0
        rounds += 1

    # Then it lands on rota:dead as poison after 3 deliveries, and nothing is left pending
    [letter] = dead(rd, settings)
    assert {k: v for k, v in letter.items() if k not in DEAD_LETTER_FIELDS} == poison_fields
    assert (letter["error"], letter["inbound_id"], letter["deliveries"]) == (
        "poison",
        poison_id,
        "3",
    )
    assert letter["detail"]
    assert pending_count(rd) == 0
    assert [e["message_id"] for e in events(rd, settings)] == ["good.1", "good.2"]

    # When the fault is gone and the dead letter replayed
    monkeypatch.undo()
    given_presence(rd, account="broken", A="available")
    assert len(dead_letters.replay(rb, settings, count=100)) == 1
    assert run_burst(rb, settings) == 0

    # Then the message is decided like any other, and rota:dead is empty
    assert [(e["message_id"], e["user"]) for e in events(rd, settings)][2:] == [("p.1", "A")]
    assert dead(rd, settings) == []


def test_dead_replay_puts_fixed_message_back_and_it_is_decided(
    rd: Any, rb: Any, redis_server: RedisServer, settings: Settings
) -> None:
    # Given a message dead-lettered because its number had no settings yet
    original = fields_of(**{"from": "447700900001"}, message_id="wamid.late", text="hello")
    rd.xadd("rota:inbound", original)
    assert run_burst(rb, settings) == 0
    assert [d["error"] for d in dead(rd, settings)] == ["unknown_number"]

    # When the number is set up and an operator runs `rota dead replay`
    given_five_available_users(rd)
    replay = subprocess.run(
        [sys.executable, "-m", "worker", "dead", "replay"],
        env=worker_env(redis_server.url),
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert (replay.returncode, replay.stderr) == (0, b"")

    # Then the message is back on the inbound stream as it was sent, and a worker decides it
    assert dead(rd, settings) == []
    assert [fields for _, fields in rd.xrange("rota:inbound")][-1] == original
    assert run_burst(rb, settings) == 0
    [decision] = events(rd, settings)
    assert (decision["message_id"], decision["user"], decision["reason"]) == (
        "wamid.late",
        "A",
        "round_robin",
    )
    assert dead(rd, settings) == []
    assert pending_count(rd) == 0


# --- Stopping ------------------------------------------------------------------------------


def test_sigterm_finishes_batch_in_hand_acks_only_decided_and_exits_0(
    rd: Any, redis_server: RedisServer, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given a worker busy on a backlog of 20,000 messages
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 20_000)
    budget_s = 5.0
    # (keeping acknowledged entries on the stream, to compare them with the decisions)
    options = {"shutdown_budget_s": str(budget_s), "inbound_keep_s": "3600"}
    worker = workers(redis_server.url, consumer="stopping", **options)
    wait_until(lambda: rd.xlen("rota:assignments") > 0, 30, "first decisions")

    # When it gets SIGTERM
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code, stderr = finish(worker, timeout=budget_s + 10)

    # Then it exits 0 within the budget, holding nothing and gone from the group
    assert time.monotonic() - signalled < budget_s
    assert (code, stderr) == (0, "")
    assert pending_count(rd) == 0
    assert consumer_names(rd) == []
    # and exactly what it acknowledged has a decision; the rest is still to be read
    [group] = rd.xinfo_groups("rota:inbound")
    acked = {entry_id for entry_id, _ in rd.xrange("rota:inbound", "-", group["last-delivered-id"])}
    decided = {e["inbound_id"] for e in events(rd, make_settings(redis_server.url))}
    assert acked - decided == set(), "acknowledged without a decision"
    assert decided <= acked
    assert 0 < len(acked) < 20_000, "SIGTERM must land mid-backlog"

    # When the next worker runs, it finishes everything
    assert finish(workers(redis_server.url, "--burst"), timeout=60) == (0, "")
    decisions = the_decisions(rd, message_ids)
    assert Counter(d["user"] for d in decisions.values()) == dict.fromkeys(USERS, 4_000)
    assert cursor(rd) == 20_000


def test_burst_exits_0_on_empty_stream_creating_stream_and_group(
    rd: Any, redis_server: RedisServer, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given no stream and no consumer group at all
    assert not rd.exists("rota:inbound")

    # When a burst worker runs
    code, stderr = finish(workers(redis_server.url, "--burst"), timeout=30)

    # Then it exits 0 at once, and the stream and its group exist, holding nothing
    assert (code, stderr) == (0, "")
    [group] = rd.xinfo_groups("rota:inbound")
    assert (group["name"], group["pending"]) == ("rota", 0)


def test_missing_group_is_created_from_stream_start_so_waiting_messages_are_decided(
    rd: Any, rb: Any, settings: Settings
) -> None:
    # Given messages already on the stream before any consumer group exists
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 3)
    assert rd.xinfo_groups("rota:inbound") == []

    # When a worker drains the stream
    assert run_burst(rb, settings) == 0

    # Then the group was created at the start of the stream: the waiting messages are decided
    decisions = the_decisions(rd, message_ids)
    assert [decisions[m]["user"] for m in message_ids] == ["A", "B", "C"]
    assert pending_count(rd) == 0


def test_consumer_leaves_group_on_clean_exit_when_holding_nothing(
    rd: Any, redis_server: RedisServer, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given a group with a consumer of another worker, and messages to decide
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 3)
    rd.xgroup_create("rota:inbound", "rota", id="0")
    rd.xgroup_createconsumer("rota:inbound", "rota", "other")

    # When a burst worker decides them and exits
    code, stderr = finish(workers(redis_server.url, "--burst", consumer="w1"), timeout=30)

    # Then it has removed its own consumer from the group, and only its own
    assert (code, stderr) == (0, "")
    assert len(the_decisions(rd, message_ids)) == 3
    assert consumer_names(rd) == ["other"]


def test_consumer_holding_pending_entries_stays_in_group_on_exit(
    rd: Any, rb: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a message whose decision fails
    settings = make_settings(redis_server.url, claim_idle_ms=600_000)
    given_number(rd, ["A"], account="broken")
    given_decisions_of_account_fail(monkeypatch, "broken")
    rd.xadd("rota:inbound", fields_of(account="broken", **{"from": "447700900001"}))

    # When a worker drains the stream and exits
    assert run_burst(rb, settings, consumer="holder") == 0

    # Then it stays in the group with its pending entry, so another worker can claim it
    [consumer] = rd.xinfo_consumers("rota:inbound", "rota")
    assert (consumer["name"], consumer["pending"]) == ("holder", 1)


# --- Redis outage --------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.parametrize("outage_s", [3, 10])
def test_worker_survives_redis_restart_and_finishes_the_stream(
    server_factory: Callable[..., RedisServer],
    workers: Callable[..., subprocess.Popen[bytes]],
    outage_s: int,
) -> None:
    # Given a durable Redis and a worker busy on 10,000 messages
    server = server_factory("--appendonly", "yes", "--appendfsync", "always")
    rd = server.client(decode=True)
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 10_000)
    worker = workers(server.url, consumer="solo", claim_idle_ms="1000")
    wait_until(lambda: rd.xlen("rota:assignments") > 0, 30, "first decisions")

    # When Redis is killed while the worker holds a decided, unpublished batch,
    assert pause_holding_decided(rd, worker, "solo") > 0
    published = rd.xrange("rota:assignments")
    owners = rd.hgetall(keys.owners(ACCOUNT, NUMBER))
    server.stop(signal.SIGKILL)
    os.kill(worker.pid, signal.SIGCONT)
    # stays down, and comes back on the same port with its data
    time.sleep(outage_s)
    assert worker.poll() is None, "the worker must outlive the outage"
    server.start()
    back = time.monotonic()
    assert rd.xlen("rota:assignments") < 10_000, "the outage must land mid-stream"
    message_ids += given_new_customers(rd, 1_000, start=10_000)
    wait_until(lambda: rd.xlen("rota:assignments") > len(published), 30, "a new decision")
    print(f"\nredis down {outage_s} s: decisions again {time.monotonic() - back:.1f} s after")

    # Then the worker finishes the stream, new messages included, as if nothing happened
    wait_until(all_decided(rd, len(message_ids)), 60, "every message decided")
    worker.send_signal(signal.SIGTERM)
    code, stderr = finish(worker, timeout=30)
    assert code == 0, stderr
    # and every decision published before the outage is still there, unchanged and first
    assert rd.xrange("rota:assignments", count=len(published)) == published
    after = rd.hgetall(keys.owners(ACCOUNT, NUMBER))
    assert {customer: after[customer] for customer in owners} == owners
    decisions = the_decisions(rd, message_ids)
    assert {d["reason"] for d in decisions.values()} == {"round_robin"}
    assert Counter(d["user"] for d in decisions.values()) == dict.fromkeys(USERS, 2_200)
    assert cursor(rd) == 11_000
    assert pending_count(rd) == 0
    rd.close()
