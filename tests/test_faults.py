"""Faults a worker must ride out, as operators would meet them: the script cache flushed, an
entry that fails every time, stop signals while Redis is away, and what the logs may say."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.conftest import ForkedWorkers
from tests.helpers import (
    ACCOUNT,
    DEAD_LETTER_FIELDS,
    NUMBER,
    USERS,
    cursor,
    drained,
    fields_of,
    finish,
    given_decisions_of_account_fail,
    given_five_available_users,
    given_new_customers,
    given_number,
    pending_count,
    the_decisions,
    wait_until,
)
from tests.redis_server import RedisServer, free_port
from worker import runner as runner_module
from worker.log import logger
from worker.runner import Runner
from worker.scripts import source
from worker.settings import Settings
from worker.words import mask

# --- The script cache ----------------------------------------------------------------------


def test_worker_reloads_script_after_script_flush_and_goes_on(
    rd: Any, redis_server: RedisServer, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given a worker busy on 10,000 messages
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 10_000)
    rd.config_resetstat()
    worker = workers(redis_server.url, consumer="flushed")
    wait_until(lambda: rd.xlen("rota:assignments") > 0, 30, "first decisions")

    # When the script cache is flushed again and again while it works
    decided_at_flush = []
    while len(decided_at_flush) < 20 and rd.xlen("rota:assignments") < 8_000:
        rd.script_flush()
        decided_at_flush.append(rd.xlen("rota:assignments"))
        time.sleep(0.05)
    assert decided_at_flush[0] < 10_000, "the flushes must land mid-stream"

    # Then it loads the script again each time and decides every message, exactly once
    wait_until(lambda: drained(rd), 60, "every entry acknowledged")
    worker.send_signal(signal.SIGTERM)
    assert finish(worker, timeout=30) == (0, "")
    decisions = the_decisions(rd, message_ids)
    assert Counter(d["user"] for d in decisions.values()) == dict.fromkeys(USERS, 2_000)
    assert cursor(rd) == 10_000
    assert rd.xlen("rota:dead") == 0
    assert rd.info("errorstats")["errorstat_NOSCRIPT"]["count"] > 0, "it did meet NOSCRIPT"
    assert rd.script_exists(hashlib.sha1(source("decide").encode()).hexdigest()) == [True]


# --- Poison --------------------------------------------------------------------------------


def test_poison_entry_is_retried_then_dead_lettered_while_the_worker_goes_on(
    rd: Any,
    redis_server: RedisServer,
    forked_workers: ForkedWorkers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an account whose every decision fails inside the script,
    given_five_available_users(rd)
    given_number(rd, ["A"], account="broken")
    given_decisions_of_account_fail(monkeypatch, "broken")
    # and one long-running worker that retries entries idle for 200 ms, 3 deliveries at most
    options = {"consumer": "w", "claim_idle_ms": "200", "max_deliveries": "3"}
    worker = forked_workers.start(redis_server.url, **options)

    # When one message of that account comes between messages of a healthy one
    good = given_new_customers(rd, 100)
    poison = fields_of(account="broken", **{"from": "447700900001"}, message_id="p.1")
    poison_id = rd.xadd("rota:inbound", poison)
    good += given_new_customers(rd, 100, start=100)

    # Then it is tried 3 times and lands on rota:dead as poison, with its fields
    wait_until(lambda: rd.xlen("rota:dead") > 0, 60, "the poison entry dead-lettered")
    [(_, letter)] = rd.xrange("rota:dead")
    assert {k: v for k, v in letter.items() if k not in DEAD_LETTER_FIELDS} == poison
    assert (letter["error"], letter["deliveries"]) == ("poison", "3")
    assert letter["inbound_id"] == poison_id
    # and the worker goes on: messages sent afterwards are decided too
    good += given_new_customers(rd, 100, start=200)
    wait_until(lambda: drained(rd), 60, "every entry acknowledged")
    os.kill(worker.pid or 0, signal.SIGTERM)
    worker.join(timeout=30)
    stderr = forked_workers.stderr()
    assert worker.exitcode == 0, stderr
    assert stderr.count('"decision failed"') == 3, stderr
    assert stderr.count('"poison entries dead-lettered"') == 1, stderr
    assert "Traceback" not in stderr
    decisions = the_decisions(rd, good)
    assert Counter(d["user"] for d in decisions.values()) == dict.fromkeys(USERS, 60)
    assert pending_count(rd) == 0


# --- Stopping while Redis is away ----------------------------------------------------------


def given_worker_stopping_without_redis(
    server_factory: Callable[..., RedisServer],
    workers: Callable[..., subprocess.Popen[bytes]],
    budget_s: float,
) -> tuple[subprocess.Popen[bytes], float]:
    """A worker that was deciding, then lost Redis, then got SIGTERM; it and when."""
    server = server_factory()
    rd = server.client(decode=True)
    given_five_available_users(rd)
    given_new_customers(rd, 100)
    worker = workers(server.url, shutdown_budget_s=str(budget_s))
    wait_until(lambda: drained(rd), 30, "the first messages decided")
    rd.close()
    server.stop(signal.SIGKILL)
    worker.send_signal(signal.SIGTERM)
    return worker, time.monotonic()


def test_second_signal_exits_at_once_while_the_first_waits_for_redis(
    server_factory: Callable[..., RedisServer], workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given a worker that got SIGTERM while Redis is down, so it keeps retrying (25 s budget)
    budget_s = 25.0
    worker, signalled = given_worker_stopping_without_redis(server_factory, workers, budget_s)
    time.sleep(1)
    assert worker.poll() is None, "the first signal waits for the batch in hand"

    # When a second SIGTERM comes
    worker.send_signal(signal.SIGTERM)

    # Then it exits at once, with 128 + SIGTERM, long before the budget would have run out
    code, _ = finish(worker, timeout=budget_s)
    assert code == 128 + signal.SIGTERM
    assert time.monotonic() - signalled < budget_s


def test_backoff_while_stopping_never_sleeps_past_the_budget(
    rb: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker asked to stop 3 s before its budget runs out, and Redis never answering
    runner = Runner(rb, settings, logger(settings))
    runner.stop_requested_at = time.monotonic() - (settings.shutdown_budget_s - 3.0)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        runner.stop_requested_at = (runner.stop_requested_at or 0) - seconds  # time passes

    def unreachable() -> None:
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(runner_module.time, "sleep", sleep)

    # When it retries with backoff, it gives up
    with pytest.raises(runner_module.BudgetSpent):
        runner._with_retry(unreachable)

    # Then having waited the 3 s left and not a backoff step more
    assert slept[:4] == [0.1, 0.2, 0.4, 0.8]
    assert sum(slept) == pytest.approx(3.0, abs=0.05)


def test_stop_gives_up_on_unreachable_redis_when_the_budget_is_spent(
    server_factory: Callable[..., RedisServer], workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given a worker that got SIGTERM while Redis is down, with a 2 s budget
    budget_s = 2.0
    worker, signalled = given_worker_stopping_without_redis(server_factory, workers, budget_s)

    # When nothing else happens
    code, stderr = finish(worker, timeout=60)

    # Then it retries for the budget, then exits 1 saying why, well inside the 30 s platforms
    # give between SIGTERM and SIGKILL
    stopped_after = time.monotonic() - signalled
    assert code == 1
    assert "shutdown budget spent" in stderr
    assert budget_s <= stopped_after < 30


def test_worker_that_never_reached_redis_exits_1_when_the_budget_is_spent(
    workers: Callable[..., subprocess.Popen[bytes]],
) -> None:
    # Given a worker whose Redis never answered (nothing listens on the port), then SIGTERM
    worker = workers(f"redis://127.0.0.1:{free_port()}/0", shutdown_budget_s="1")
    time.sleep(1.0)
    worker.send_signal(signal.SIGTERM)

    # When it gives up
    code, stderr = finish(worker, timeout=60)

    # Then it says so with exit 1, like a worker that lost Redis later: it held nothing, but
    # its stop was not clean
    assert code == 1
    assert "shutdown budget spent" in stderr


# --- Privacy -------------------------------------------------------------------------------


@pytest.mark.chaos
def test_debug_logs_of_every_path_mask_customer_numbers(
    server_factory: Callable[..., RedisServer],
    forked_workers: ForkedWorkers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given debug logging, decisions, dead letters of every kind, a poison entry, and an outage
    server = server_factory("--appendonly", "yes", "--appendfsync", "always")
    rd = server.client(decode=True)
    given_five_available_users(rd)
    given_number(rd, ["A"], account="broken")
    given_decisions_of_account_fail(monkeypatch, "broken")
    options = {"log_level": "debug", "claim_idle_ms": "300", "max_deliveries": "2"}
    workers = [forked_workers.start(server.url, **options) for _ in range(2)]

    customers = [f"4477009{i:05d}" for i in range(400)]
    raw = [f"+44 7700 9{c[7:9]}-{c[9:]}" for c in customers]  # 447700900123 -> +44 7700 900-123

    def send(i: int, **fields: str) -> None:
        rd.xadd("rota:inbound", {"from": raw[i], "message_id": f"wamid.{i}", **fields})

    decided = list(range(0, 300))
    for i in decided[:150]:
        send(i, account=ACCOUNT, number=NUMBER)
    send(300, account=ACCOUNT, number="15559999999")  # unknown_number
    send(301, account=ACCOUNT, number=NUMBER, text="x" * 70_000)  # too_large
    send(302, account="no such{account}", number=NUMBER)  # invalid_field
    send(303, account=ACCOUNT)  # missing_field
    send(304, account="broken", number=NUMBER)  # poison
    wait_until(lambda: rd.xlen("rota:dead") == 5, 60, "four dead letters and the poison")
    server.stop(signal.SIGKILL)
    time.sleep(1.5)
    server.start()
    for i in decided[150:]:
        send(i, account=ACCOUNT, number=NUMBER)
    wait_until(lambda: drained(rd), 60, "every entry acknowledged")
    rd.close()
    for worker in workers:
        os.kill(worker.pid or 0, signal.SIGTERM)
    for worker in workers:
        worker.join(timeout=30)
    assert [w.exitcode for w in workers] == [0, 0]

    # Then no log line holds a whole customer number, as sent or normalised,
    logs = forked_workers.stderr()
    assert '"redis unreachable, retrying"' in logs
    assert '"poison entries dead-lettered"' in logs
    leaked = [c for c, r in zip(customers, raw, strict=True) if c in logs or r in logs]
    assert leaked == [], f"{len(leaked)} full customer numbers in the logs"
    # while every decision is logged with the customer masked to its last 4 digits
    assert logs.count('"decided"') >= len(decided)
    assert all(f'"customer": "{mask(customers[i])}"' in logs for i in decided)
    assert mask("447700900123") == "********0123"
