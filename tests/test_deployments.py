"""Redis configured the ways operators configure it: an evicting policy, CONFIG refused,
persistence off, out of memory, a backlog of pending entries, a server that never answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, ForkedWorkers, worker_env
from tests.helpers import (
    USERS,
    cursor,
    drained,
    given_five_available_users,
    given_new_customers,
    pending_count,
    run_rota,
    the_decisions,
    wait_until,
)
from tests.ops import rota
from tests.redis_server import RedisServer
from worker import runner as runner_module
from worker import stream
from worker.log import logger
from worker.runner import BACKOFF_FIRST_S, BACKOFF_MAX_S, Runner
from worker.settings import Settings


def log_events(text: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of one event."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == event]


# --- Eviction ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_worker_refuses_a_redis_that_may_evict_its_keys(
    server_factory: Callable[..., RedisServer], policy: str
) -> None:
    # Given a Redis whose maxmemory-policy may evict keys, and messages waiting
    server = server_factory()
    rd = server.client(decode=True)
    rd.config_set("maxmemory-policy", policy)
    given_five_available_users(rd)
    given_new_customers(rd, 10)

    # When a worker starts
    result = run_rota(server.url, "worker", "--burst")

    # Then it exits 1 with one line naming the policy and the way out, having decided nothing
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("rota: error: ") and policy in line
    assert "noeviction" in line and "ROTA_ALLOW_EVICTION=1" in line
    assert rd.xlen("rota:assignments") == 0


def test_allow_eviction_runs_on_an_evicting_redis_with_one_warning(
    server_factory: Callable[..., RedisServer],
) -> None:
    # Given an evicting Redis and an operator who accepts it
    server = server_factory()
    rd = server.client(decode=True)
    rd.config_set("maxmemory-policy", "allkeys-lru")
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 10)

    # When a worker runs with ROTA_ALLOW_EVICTION=1
    result = run_rota(server.url, "worker", "--burst", ROTA_ALLOW_EVICTION="1")

    # Then it decides everything, after one warning that says what it risks
    assert result.returncode == 0, result.stderr
    [warning] = [json.loads(line) for line in result.stderr.splitlines()]
    assert warning["level"] == "warning" and warning["maxmemory_policy"] == "allkeys-lru"
    assert "may evict" in warning["event"]
    the_decisions(rd, message_ids)


def acl_user(server: RedisServer, *rules: str) -> str:
    """A user ``rota`` that may do everything but what ``rules`` take away; its URL."""
    with server.client() as owner:
        owner.execute_command("ACL", "SETUSER", "rota", "on", ">pw", "~*", "&*", "+@all", *rules)
    return f"redis://rota:pw@127.0.0.1:{server.port}/0"


@pytest.mark.parametrize(
    ("rules", "event"),
    [
        (["-config"], "could not check whether redis keeps snapshots; its append-only file is off"),
        (["-config", "-info"], "could not check redis's eviction policy and persistence"),
    ],
    ids=["config-refused", "config-and-info-refused"],
)
def test_worker_says_what_it_could_not_check_when_config_get_is_refused(
    server_factory: Callable[..., RedisServer], rules: list[str], event: str
) -> None:
    # Given an ACL user refused CONFIG (and INFO), on a Redis without an append-only file
    server = server_factory()
    rd = server.client(decode=True)
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 10)

    # When a worker starts as that user
    result = run_rota(acl_user(server, *rules), "worker", "--burst")

    # Then it runs, after one warning naming what it could not check, and why
    assert result.returncode == 0, result.stderr
    [warning] = [json.loads(line) for line in result.stderr.splitlines()]
    assert warning["event"] == event
    assert "NOPERM" in warning["error"] or "permission" in warning["error"]
    the_decisions(rd, message_ids)


def test_worker_refuses_an_evicting_redis_when_config_get_is_refused(
    server_factory: Callable[..., RedisServer],
) -> None:
    # Given an evicting Redis, and a user refused CONFIG (as the README's ACL user is)
    server = server_factory("--appendonly", "yes")
    server.client().config_set("maxmemory-policy", "allkeys-random")

    # When a worker starts as that user
    result = run_rota(acl_user(server, "-config"), "worker", "--burst")

    # Then the policy, read from INFO, still stops it
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("rota: error: ") and "allkeys-random" in line


def test_stats_shows_the_eviction_policy_and_persistence(
    server_factory: Callable[..., RedisServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = server_factory("--appendonly", "yes")
    server.client().config_set("maxmemory-policy", "volatile-lru")

    result = rota(monkeypatch, capsys, server.url, "stats")

    assert result.code == 0, result.err
    [shown] = json.loads(result.out)["redis"]
    assert shown["node"] == f"127.0.0.1:{server.port}"
    assert (shown["maxmemory_policy"], shown["evicts"]) == ("volatile-lru", True)
    assert (shown["appendonly"], shown["persists"]) == (True, True)


# --- Persistence off -----------------------------------------------------------------------


def test_worker_warns_once_at_start_when_redis_keeps_nothing_across_a_restart(
    server_factory: Callable[..., RedisServer],
) -> None:
    # Given a Redis with no append-only file and no snapshots
    server = server_factory("--appendonly", "no", "--save", "")
    rd = server.client(decode=True)
    given_five_available_users(rd)

    # When a worker over 3 partitions starts (and finds nothing to do)
    result = run_rota(server.url, "worker", "--burst", ROTA_INBOUND_PARTITIONS="3")

    # Then it warns once, saying what a restart would lose, and runs
    assert result.returncode == 0, result.stderr
    [warning] = [json.loads(line) for line in result.stderr.splitlines()]
    assert warning["level"] == "warning"
    assert "persistence is off" in warning["event"] and "restart" in warning["event"]


# --- Out of memory -------------------------------------------------------------------------


def test_out_of_memory_holds_the_batch_backs_off_and_resumes_without_poison(
    server_factory: Callable[..., RedisServer], forked_workers: ForkedWorkers
) -> None:
    # Given a worker quick to claim (300 ms) and to bury (2 deliveries), which has decided 500
    server = server_factory()
    rd = server.client(decode=True)
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 500)
    worker = forked_workers.start(server.url, claim_idle_ms="300", max_deliveries="2")
    wait_until(lambda: drained(rd), 30, "the first 500 decided")

    # When Redis runs out of memory (noeviction) as 2,000 more arrive, for 4 s
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGSTOP)
    message_ids += given_new_customers(rd, 2_000, start=500)
    rd.config_set("maxmemory", "1")
    os.kill(worker.pid, signal.SIGCONT)
    time.sleep(4)
    assert rd.xlen("rota:assignments") == 500, "nothing can be published meanwhile"
    rd.config_set("maxmemory", "0")

    # Then the worker resumes by itself: every message decided once, none poison
    wait_until(lambda: drained(rd), 60, "every entry acknowledged")
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(30)
    assert worker.exitcode == 0
    assert rd.xlen("rota:dead") == 0
    decisions = the_decisions(rd, message_ids)
    assert Counter(d["user"] for d in decisions.values()) == dict.fromkeys(USERS, 500)
    assert cursor(rd) == 2_500
    # and it logged one line per backoff (delays doubling from the first), nothing per entry
    logs = forked_workers.stderr()
    backoffs = log_events(logs, "redis refused, backing off")
    assert len(backoffs) >= 3, logs
    delays = [line["retry_in_s"] for line in backoffs]
    assert delays == [min(BACKOFF_FIRST_S * 2**i, BACKOFF_MAX_S) for i in range(len(delays))]
    assert {line["refusal"] for line in backoffs} == {"OOM"}
    assert any(line["held"] > 0 for line in backoffs), "the refused batch was held"
    assert '"decision failed"' not in logs and "Traceback" not in logs


# --- A backlog of pending entries ----------------------------------------------------------


def test_claimed_backlog_is_decided_in_full_batches_without_waiting_between_them(
    rb: Any, rd: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 2,000 entries a dead consumer left pending for a minute, and a worker with the
    # default claim idle time and blocking read
    settings = settings.model_copy(update={"block_ms": 2_000})
    given_five_available_users(rd)
    message_ids = given_new_customers(rd, 2_000)
    rd.xgroup_create("rota:inbound", "rota", id="0")
    held = rd.xreadgroup("rota", "dead", {"rota:inbound": ">"}, count=2_000)[0][1]
    ids = [entry_id for entry_id, _ in held]
    rd.xclaim("rota:inbound", "rota", "dead", 0, ids, idle=60_000, justid=True)
    runner = Runner(rb, settings, logger(settings), consumer="alive")
    decided: list[int] = []
    blocks: list[int | None] = []
    decide, read_new = runner.assigner.decide_batch, stream.read_new

    def counting_decide(client: Any, messages: Any, now_ms: int) -> Any:
        decided.append(len(messages))
        return decide(client, messages, now_ms)

    def recording_read(client: Any, settings_: Any, consumer: str, block: Any, acks: Any) -> Any:
        blocks.append(block)
        return read_new(client, settings_, consumer, block, acks)

    monkeypatch.setattr(runner.assigner, "decide_batch", counting_decide)
    monkeypatch.setattr(runner_module.stream, "read_new", recording_read)

    # When it runs until nothing is pending
    steps = 0
    while pending_count(rd) > 0 and steps < 20:
        runner._step(runner.lanes[0], settings.block_ms)
        steps += 1

    # Then the backlog went through the same batched decisions as new entries, one batch a
    # step, and no read waited for new entries while claimed ones kept coming
    assert decided == [settings.batch_size] * 10
    assert steps == 10
    assert blocks == [None] * 10
    the_decisions(rd, message_ids)


# --- A Redis that accepts and never answers ------------------------------------------------


@contextmanager
def silent_redis() -> Iterator[tuple[str, list[socket.socket]]]:
    """A loopback listener that accepts connections and never answers; its URL and what it
    accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0", accepted
    finally:
        stop.set()
        thread.join()
        for connection in [*accepted, listener]:
            connection.close()


SILENT_COMMANDS = [
    ["stats"],
    ["account", "set", "acme", "--admin", "boss"],
    ["number", "set", "acme", "15550001000", "--members", "alice"],
    ["number", "show", "acme", "15550001000"],
    ["group", "set", "acme", "sales", "alice"],
    ["presence", "set", "acme", "alice", "available"],
    ["owner", "set", "acme", "15550001000", "447700900123", "alice"],
    ["send", "15550001000", "447700900123"],
    ["dead", "list"],
    ["dead", "replay"],
    ["export"],
]
SOCKET_TIMEOUT_S = 1.0
GENEROUS_S = 3.0  # over the documented bound, for a loaded machine


def test_every_command_gives_up_on_a_silent_redis_within_the_socket_timeout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "rota.toml"
    config.write_text('[accounts.acme]\nadmin = "boss"\n')
    commands = [*SILENT_COMMANDS, ["apply", str(config)]]
    with silent_redis() as (url, accepted):
        for command in commands:
            # When each command runs against it, with a 1 s socket timeout
            started = time.monotonic()
            result = rota(monkeypatch, capsys, url, *command, socket_timeout_s="1")
            took = time.monotonic() - started

            # Then it exits 1 with one line within about that long, trying once
            assert result.code == 1, (command, result.err)
            [line] = result.err.splitlines()
            assert line.startswith("rota: error: ") and "redis unreachable" in line, line
            assert took < SOCKET_TIMEOUT_S + GENEROUS_S, (command, took)
        assert len(accepted) == len(commands), "redis-py retried"

        # and on a cluster URL too
        cluster = url.replace("redis://", "redis+cluster://").removesuffix("/0")
        result = rota(monkeypatch, capsys, cluster, "stats", socket_timeout_s="1")
        assert result.code == 1 and len(result.err.splitlines()) == 1, result.err


def test_a_command_with_the_default_timeouts_gives_up_within_the_documented_bound() -> None:
    with silent_redis() as (url, _):
        started = time.monotonic()
        result = run_rota(url, "stats")
        took = time.monotonic() - started
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    # ROTA_SOCKET_TIMEOUT_S (5 s), plus the interpreter's start
    assert took < 5.0 + GENEROUS_S, took


def test_burst_worker_gives_up_on_a_silent_redis_after_the_shutdown_budget() -> None:
    with silent_redis() as (url, _):
        env = worker_env(url, shutdown_budget_s="1", socket_timeout_s="1")
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "worker", "worker", "--burst"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert "shutdown budget spent" in done.stderr and "Traceback" not in done.stderr
    # the budget, a try in progress (one socket timeout) and the start
    assert took < 1 + SOCKET_TIMEOUT_S + 2 * GENEROUS_S, took
