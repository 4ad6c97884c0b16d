"""``rota stats`` and ``rota number show``: eligible now, next, cursor, chats per user today,
pending and dead letters."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import ON_SINGLE_AND_CLUSTER, Target, make_settings
from tests.helpers import (
    decide,
    events,
    given_a_partitioned_backlog,
    given_number,
    given_presence,
    send,
)
from tests.ops import rota
from tests.redis_server import RedisServer
from worker import admin, chats, keys
from worker.clock import server_ms
from worker.log import logger
from worker.runner import Runner
from worker.settings import Settings


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> Any:
    def run(*args: str) -> Any:
        result = rota(monkeypatch, capsys, redis_server.url, *args)
        assert result.code == 0, result.err
        return json.loads(result.out)

    return run


def test_number_show_counts_new_chats_per_user_today(
    cli: Any, rd: Any, rb: Any, settings: Settings
) -> None:
    # Given three new chats for A, B, A and one returning customer of A
    given_number(rd, ["A", "B", "C"])
    given_presence(rd, A="available", B="available")
    assert decide(rd, rb, settings, "447700900001", "447700900002", "447700900003") == [
        "A",
        "B",
        "A",
    ]
    assert decide(rd, rb, settings, "447700900001") == ["A"]
    # When an operator looks at the number
    shown = cli("number", "show", "acme", "15550001000")
    # Then new chats are counted once each, the returning customer not at all
    assert shown["chats_today"] == {"A": 2, "B": 1, "C": 0}
    assert shown["eligible_now"] == ["A", "B"]
    assert shown["next"] == {"user": "B", "reason": "round_robin"}
    assert shown["cursor"] == 4  # C was skipped once


def test_a_repeated_message_is_not_counted_again(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["A"])
    given_presence(rd, A="available")
    decide(rd, rb, settings, "447700900001", message_id="wamid.1")
    decide(rd, rb, settings, "447700900001", message_id="wamid.1")
    assert chats.today(rd, "acme", time.time_ns() // 1_000_000) == {"A": 1}


def test_a_message_repeated_within_one_batch_is_counted_once(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["A"])
    given_presence(rd, A="available")
    # Both copies are read in one batch: the second repeats the first decision, same `at`
    decide(rd, rb, settings, "447700900001", "447700900001", message_id="wamid.1")
    assert chats.today(rd, "acme", time.time_ns() // 1_000_000) == {"A": 1}


class StoppedClock:
    """A worker clock that stands still: a repeat's first `at` equals its batch's now."""

    def __init__(self, now_ms: int) -> None:
        self._now_ms = now_ms

    def now_ms(self) -> int:
        return self._now_ms

    def sync_if_due(self) -> None:
        pass


def test_a_repeat_in_a_later_batch_of_the_same_millisecond_is_not_counted_again(
    rd: Any, rb: Any, settings: Settings
) -> None:
    clock = StoppedClock(server_ms(rd))
    given_number(rd, ["A", "B"])
    given_presence(rd, A="available", B="available")
    # When a message is decided, then delivered again and decided in a batch of its own
    for _ in range(2):
        send(rd, settings, "447700900001", message_id="wamid.1")
        assert Runner(rb, settings, logger(settings), clock=clock).run(burst=True) == 0
    assert [e["user"] for e in events(rd, settings)] == ["A", "A"]
    # Then the decision says the second is a repeat, and the chat counts once
    assert chats.today(rd, "acme", clock.now_ms()) == {"A": 1}


def test_the_day_counter_expires_after_a_week(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["A"])
    given_presence(rd, A="available")
    decide(rd, rb, settings, "447700900001")
    key = keys.chats("acme", chats.day(time.time_ns() // 1_000_000))
    assert 7 * 86_400 < rd.ttl(key) <= chats.KEEP_DAYS * 86_400


def test_stats_show_streams_pending_dead_letters_and_the_account(
    cli: Any, rd: Any, rb: Any, settings: Settings
) -> None:
    # Given two decisions, one dead letter and one message a consumer holds unacknowledged
    given_number(rd, ["A", "B"])
    admin.set_account(rd, "acme", "boss")
    given_presence(rd, A="available")
    decide(rd, rb, settings, "447700900001", "447700900002")
    send(rd, settings, "447700900003", number="15559999999")
    decide(rd, rb, settings)
    send(rd, settings, "447700900004")
    rd.xreadgroup(settings.group, "busy", {settings.inbound_stream: ">"})
    # When an operator asks for stats
    stats = cli("stats", "acme")
    # Then the streams, the group and the account are all there
    assert stats["inbound"]["pending"] == 1
    assert stats["inbound"]["lag"] == 0
    assert [c["name"] for c in stats["inbound"]["consumers"]] == ["busy"]
    assert stats["assignments"]["length"] == 2
    assert stats["dead_letters"] == {
        "stream": "rota:dead",
        "count": 1,
        "by_error": {"unknown_number": 1},
    }
    account = stats["account"]
    assert account["chats_today"] == {"A": 2}
    assert account["numbers"]["15550001000"] == {
        "eligible_now": ["A"],
        "next": {"user": "A", "reason": "round_robin"},
        "cursor": 3,  # A, then B skipped and A again
        "queue": 0,
        "oldest_wait_ms": None,
    }
    assert (account["queue"], account["oldest_wait_ms"]) == (0, None)
    assert stats["queues"] == {}  # nobody waits anywhere


def test_stats_show_each_accounts_queue_and_its_oldest_wait(cli: Any, rd: Any) -> None:
    # Given customers waiting on two numbers of acme (the oldest for 8 s), none on beta's
    now = server_ms(rd)
    for number, waits in (("15550001000", [3000, 1000]), ("15550002000", [8000])):
        admin.set_number(rd, "acme", number, members=["A"], when_nobody="queue")
        for i, wait in enumerate(waits):
            customer = f"44770090000{i}"
            rd.rpush(keys.queue("acme", number), customer)
            rd.hset(keys.queued("acme", number), customer, now - wait)
    admin.set_number(rd, "beta", "15550003000", members=["B"], when_nobody="queue")
    # When an operator asks for stats, of everything and of acme
    stats, of_acme = cli("stats"), cli("stats", "acme")
    waited = server_ms(rd) - now
    # Then only acme has customers waiting: three, the oldest for 8 s
    assert list(stats["queues"]) == ["acme"]
    assert stats["queues"]["acme"]["queue"] == 3
    assert 8000 <= stats["queues"]["acme"]["oldest_wait_ms"] <= 8000 + waited
    account = of_acme["account"]
    assert account["queue"] == 3
    assert 8000 <= account["oldest_wait_ms"] <= 8000 + waited
    numbers = account["numbers"]
    assert (numbers["15550001000"]["queue"], numbers["15550002000"]["queue"]) == (2, 1)
    assert 3000 <= numbers["15550001000"]["oldest_wait_ms"] <= 3000 + waited


def test_stats_before_any_worker_ran(cli: Any, rd: Any) -> None:
    stats = cli("stats")
    assert stats["inbound"] == {"stream": "rota:inbound", "length": 0, "group": None}
    assert stats["dead_letters"]["count"] == 0


@ON_SINGLE_AND_CLUSTER
def test_stats_with_partitions_show_each_partition_and_the_total(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rd: Any,
    rb: Any,
    target: Target,
) -> None:
    # Given 4 inbound partitions, each with new messages, one of them held by a consumer
    settings = make_settings(target.url, inbound_partitions=4)
    expected = given_a_partitioned_backlog(rd, rb, settings)
    # When an operator asks for stats with the same settings
    result = rota(monkeypatch, capsys, target.url, "stats", inbound_partitions="4")
    assert result.code == 0, result.err
    inbound = json.loads(result.out)["inbound"]
    # Then each partition shows its pending and lag, and the top level their total
    shown = {p["stream"]: (p["pending"], p["lag"]) for p in inbound["partitions"]}
    assert shown == expected
    assert [p["length"] for p in inbound["partitions"]] == [4, 4, 4, 4]
    busy = [p["consumers"] for p in inbound["partitions"] if p["pending"]]
    assert [[c["name"] for c in consumers] for consumers in busy] == [["busy"]]
    assert (inbound["stream"], inbound["group"], inbound["length"]) == ("rota:inbound", "rota", 16)
    assert (inbound["pending"], inbound["lag"]) == (1, 7)
    assert [(c["name"], c["pending"]) for c in inbound["consumers"]] == [("busy", 1)]


def test_stats_with_partitions_before_any_worker_ran(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rd: Any, target: Target
) -> None:
    result = rota(monkeypatch, capsys, target.url, "stats", inbound_partitions="2")
    assert result.code == 0, result.err
    assert json.loads(result.out)["inbound"] == {
        "stream": "rota:inbound",
        "length": 0,
        "group": None,
        "partitions": [
            {"stream": "rota:inbound:0", "length": 0, "group": None},
            {"stream": "rota:inbound:1", "length": 0, "group": None},
        ],
    }
