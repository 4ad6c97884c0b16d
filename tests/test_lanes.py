"""One Runner over every inbound partition, a lane each: one exit-code policy when the shutdown
budget runs out, one connection closed on exit, and claiming on every lane."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.conftest import make_settings
from tests.helpers import events, given_number, given_presence, send, wait_until
from tests.redis_server import RedisServer
from worker import partitions
from worker import runner as runner_module
from worker.log import logger
from worker.metrics import Metrics
from worker.runner import Runner
from worker.settings import Settings

# One account on each of 3 partitions: crc32(account) mod 3 is 0, 1 and 2.
ACCOUNTS = ["tenant07", "tenant01", "tenant00"]
WORKER = "lanes-worker"  # the CLIENT SETNAME of every connection of the worker under test


def given_accounts(rd: Any) -> None:
    for account in ACCOUNTS:
        given_number(rd, ["A", "B"], account=account)
        given_presence(rd, account=account, A="available", B="available")


def given_messages(rd: Any, settings: Settings, each: int) -> None:
    for account in ACCOUNTS:
        for i in range(each):
            send(rd, settings, f"44770090{i:04d}", account=account, message_id=f"{account}.{i}")


def worker_connections(rd: Any) -> list[dict[str, Any]]:
    return [c for c in rd.client_list() if c.get("name") == WORKER]


def test_accounts_cover_every_one_of_three_partitions() -> None:
    settings = make_settings("redis://127.0.0.1:1/0", inbound_partitions=3)
    used = [partitions.inbound_stream(settings, account) for account in ACCOUNTS]
    assert used == partitions.inbound_streams(settings)


# --- A spent shutdown budget ----------------------------------------------------------------


@pytest.mark.parametrize("partitions_", [1, 3])
@pytest.mark.parametrize("lost_in", ["prepare", "leave"])
def test_budget_spent_while_preparing_or_leaving_exits_1_and_closes_the_connection(
    server_factory: Callable[..., RedisServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    partitions_: int,
    lost_in: str,
) -> None:
    # Given a worker over 1 or 3 partitions whose Redis is stopped just before it prepares
    # its lanes, or just before it leaves them, with a stop requested then
    server = server_factory()
    settings = make_settings(
        server.url, inbound_partitions=partitions_, shutdown_budget_s=0.5, log_level="error"
    )
    client = server.client()
    runner = Runner(client, settings, logger(settings), consumer="stopping")

    def lose_redis() -> None:
        if server.process is not None and server.process.poll() is None:
            server.stop(signal.SIGKILL)
            runner.request_stop()

    if lost_in == "prepare":
        check = runner._check_server

        def check_then_lose() -> None:
            check()
            lose_redis()

        monkeypatch.setattr(runner, "_check_server", check_then_lose)
    else:
        leave = runner._leave

        def lose_then_leave(lane: runner_module.Lane) -> None:
            lose_redis()
            leave(lane)

        monkeypatch.setattr(runner, "_leave", lose_then_leave)

    # When it runs until it gives up
    started = time.monotonic()
    code = runner.run(burst=lost_in == "leave")

    # Then it exits 1 within the budget, saying why, its own connection closed
    assert code == 1
    assert time.monotonic() - started < 10
    assert "shutdown budget spent" in capsys.readouterr().err
    assert runner.transport._connection is None
    client.close()


def test_partitioned_worker_stopped_while_redis_is_down_exits_1(
    server_factory: Callable[..., RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a worker running on 3 partitions, joined to each
    server = server_factory()
    rd = server.client(decode=True)
    settings = make_settings(
        server.url, inbound_partitions=3, shutdown_budget_s=0.5, log_level="error"
    )
    runner = Runner(server.client(), settings, logger(settings), consumer="running")
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(runner.run()))
    thread.start()
    try:
        streams = partitions.inbound_streams(settings)
        wait_until(lambda: all(_consumers(rd, s) == ["running"] for s in streams), 10, "lanes")
        rd.close()

        # When Redis stops, then the worker is asked to stop
        server.stop(signal.SIGKILL)
        runner.request_stop()
        thread.join(timeout=10)
    finally:
        runner.request_stop()
        thread.join(timeout=30)

    # Then it gives up after its budget with exit 1
    assert codes == [1]
    assert "shutdown budget spent" in capsys.readouterr().err
    assert runner.transport._connection is None


def _consumers(rd: Any, stream: str) -> list[str]:
    try:
        return [c["name"] for c in rd.xinfo_consumers(stream, "rota")]
    except Exception:  # the stream or its group does not exist yet
        return []


# --- One connection, closed on exit ---------------------------------------------------------


@pytest.mark.parametrize("burst", [True, False], ids=["burst", "stopped"])
@pytest.mark.parametrize("partitions_", [1, 3])
def test_no_connection_of_the_worker_is_left_after_it_exits(
    rd: Any, redis_server: RedisServer, partitions_: int, burst: bool
) -> None:
    # Given messages on every partition and a worker whose connections carry a name
    settings = make_settings(redis_server.url, inbound_partitions=partitions_)
    given_accounts(rd)
    given_messages(rd, settings, each=3)
    client = redis.Redis.from_url(redis_server.url, client_name=WORKER)  # every connection
    runner = Runner(client, settings, logger(settings), consumer="closing")

    # When it decides them all and exits (a burst, or a stop once all is decided)
    if burst:
        assert runner.run(burst=True) == 0
    else:
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(runner.run()))
        thread.start()
        wait_until(lambda: len(events(rd, settings)) == 9, 10, "every decision")
        runner.request_stop()
        thread.join(timeout=10)
        assert codes == [0]
    assert len(events(rd, settings)) == 9

    # Then its one connection outside the pool is closed, and once the pool is closed too no
    # connection of the worker is left on the server
    assert runner.transport._connection is None
    client.close()
    wait_until(lambda: worker_connections(rd) == [], 5, "the worker's connections closed")


def test_every_lane_shares_one_connection(rd: Any, redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, inbound_partitions=3)
    runner = Runner(redis_server.client(), settings, logger(settings))
    assert [lane.stream for lane in runner.lanes] == partitions.inbound_streams(settings)
    assert len({id(lane.claimer) for lane in runner.lanes}) == 3
    assert runner.run(burst=True) == 0
    # The transport's own connection is outside the pool: the pool made one at most
    opened = runner.transport.client.connection_pool._created_connections
    assert opened <= 1, "one pooled connection besides the transport's"


# --- Claiming on every lane -----------------------------------------------------------------


def test_a_dead_consumers_entries_are_claimed_on_every_partition(
    rd: Any, rb: Any, redis_server: RedisServer
) -> None:
    # Given a consumer that read every partition's messages and died
    settings = make_settings(redis_server.url, inbound_partitions=3, claim_idle_ms=100)
    given_accounts(rd)
    given_messages(rd, settings, each=2)
    streams = partitions.inbound_streams(settings)
    for stream in streams:
        rd.xgroup_create(stream, "rota", id="0")
        rd.xreadgroup("rota", "dead", {stream: ">"})
    assert [rd.xpending(s, "rota")["pending"] for s in streams] == [2, 2, 2]
    time.sleep(0.2)  # idle past ROTA_CLAIM_IDLE_MS

    # When another worker runs
    metrics = Metrics()
    assert Runner(rb, settings, logger(settings), "alive", metrics=metrics).run(burst=True) == 0

    # Then every lane claimed its partition's entries, decided each once, and left nothing
    # pending with the dead consumer
    decided = sorted(e["message_id"] for e in events(rd, settings))
    assert decided == sorted(f"{a}.{i}" for a in ACCOUNTS for i in range(2))
    assert [rd.xpending(s, "rota")["pending"] for s in streams] == [0, 0, 0]
    assert metrics.registry.get_sample_value("rota_claimed_total") == 6
