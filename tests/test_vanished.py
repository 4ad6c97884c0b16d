"""Entries deleted from the inbound stream while pending (XTRIM under pending entries): what a
worker decided for them is published, the rest is dead-lettered `vanished`, nothing stays
pending, and each is logged once. On Redis 7 and 6.2, whose XCLAIM treat them differently."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import ResponseError

from tests.conftest import make_settings
from tests.helpers import (
    ACCOUNT,
    NUMBER,
    USERS,
    dead,
    events,
    given_five_available_users,
    given_new_customers,
    pending_count,
    run_burst,
    the_decisions,
)
from tests.redis_server import RedisServer
from worker import keys
from worker.log import logger
from worker.runner import Runner
from worker.settings import Settings

STREAM = "rota:inbound"
LOGGED = "entries deleted from the stream while pending"


@pytest.fixture
def rd(each_build: RedisServer) -> Iterator[Any]:
    client = each_build.client(decode=True)
    yield client
    client.close()


@pytest.fixture
def rb(each_build: RedisServer) -> Iterator[Any]:
    client = each_build.client()
    yield client
    client.close()


@pytest.fixture
def settings(each_build: RedisServer) -> Settings:
    return make_settings(each_build.url, claim_idle_ms=50)


def given_batch_decided_but_not_published(rd: Any, rb: Any, settings: Settings) -> Runner:
    """A worker that decided 10 messages and whose publishing Redis refused (the decisions
    stream is not a stream): the entries stay pending with it, decided, unpublished."""
    given_five_available_users(rd)
    rd.set(settings.events_stream, "not a stream")
    runner = Runner(rb, settings, logger(settings), consumer="decider")
    [lane] = runner.lanes
    runner._prepare(lane)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        runner._step(lane, block=None)
    rd.delete(settings.events_stream)
    assert len(rd.hgetall(keys.owners(ACCOUNT, NUMBER))) == 10, "decided"
    assert pending_count(rd) == 10
    return runner


def when_the_stream_is_trimmed_under_them(rd: Any) -> None:
    rd.xtrim(STREAM, maxlen=0, approximate=False)
    time.sleep(0.1)  # idle past ROTA_CLAIM_IDLE_MS


def test_decisions_a_worker_could_not_publish_are_published_when_their_entries_vanish(
    rd: Any, rb: Any, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a worker holding 10 decided, unpublished messages
    message_ids = given_new_customers(rd, 10)
    runner = given_batch_decided_but_not_published(rd, rb, settings)

    # When the stream is trimmed under them, and the worker goes on
    when_the_stream_is_trimmed_under_them(rd)
    assert runner.run(burst=True) == 0

    # Then it publishes the decisions it had made, once each; nothing dead, nothing pending
    decisions = the_decisions(rd, message_ids)
    assert [decisions[m]["user"] for m in message_ids] == USERS * 2
    owners = rd.hgetall(keys.owners(ACCOUNT, NUMBER))
    assert {d["customer"]: d["user"] for d in decisions.values()} == owners
    assert len(events(rd, settings)) == 10
    assert dead(rd, settings) == []
    assert pending_count(rd) == 0
    assert capsys.readouterr().err.count(LOGGED) == 1


def test_vanished_entries_nobody_knows_a_decision_for_are_dead_lettered_and_repeat_later(
    rd: Any, rb: Any, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a worker that decided 10 messages and died before publishing them
    message_ids = given_new_customers(rd, 10)
    given_batch_decided_but_not_published(rd, rb, settings)
    inbound_ids = [entry_id for entry_id, _ in rd.xrange(STREAM)]

    # When the stream is trimmed under them, and another worker claims them
    when_the_stream_is_trimmed_under_them(rd)
    assert run_burst(rb, settings, consumer="survivor") == 0

    # Then each is on rota:dead as `vanished` with its inbound id, once; nothing is pending
    letters = dead(rd, settings)
    assert sorted(letter["inbound_id"] for letter in letters) == inbound_ids
    assert {letter["error"] for letter in letters} == {"vanished"}
    assert {letter["deliveries"] for letter in letters} == {"1"}
    assert events(rd, settings) == []
    assert pending_count(rd) == 0
    assert capsys.readouterr().err.count(LOGGED) == 1
    # and when the producer sends the messages again, they get their first decisions
    given_new_customers(rd, 10)
    assert run_burst(rb, settings, consumer="survivor") == 0
    decisions = the_decisions(rd, message_ids)
    owners = rd.hgetall(keys.owners(ACCOUNT, NUMBER))
    assert {d["customer"]: d["user"] for d in decisions.values()} == owners
    assert rd.get(keys.cursor(ACCOUNT, NUMBER)) == "10", "decided once"
