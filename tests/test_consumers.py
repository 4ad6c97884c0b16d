"""Removing consumers from the group never loses an entry: the check that a consumer holds
nothing and its deletion are one script (lua/delconsumer.lua), for pruning and on exit."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.helpers import (
    given_five_available_users,
    given_new_customers,
    pending_count,
    run_burst,
    the_decisions,
)
from tests.redis_server import RedisServer
from worker import runner as runner_module
from worker import stream
from worker.scripts import Scripts
from worker.settings import Settings

STREAM, GROUP = "rota:inbound", "rota"


def test_pruning_keeps_a_consumer_given_an_entry_after_the_check_and_the_entry_is_decided(
    rd: Any, rb: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a consumer that has held nothing for longer than the pruning age (lowered here),
    settings = make_settings(redis_server.url, claim_idle_ms=300)
    monkeypatch.setattr(runner_module, "STALE_CONSUMER_IDLE_MS", 50)
    given_five_available_users(rd)
    [message_id] = given_new_customers(rd, 1)
    rd.xgroup_create(STREAM, GROUP, id="0")
    rd.xgroup_createconsumer(STREAM, GROUP, "stale")
    time.sleep(0.1)
    # and a message delivered to it just after a starting worker listed the consumers
    listed = rb.xinfo_consumers

    def list_then_deliver(*args: Any, **kwargs: Any) -> Any:
        consumers = listed(*args, **kwargs)
        rd.xreadgroup(GROUP, "stale", {STREAM: ">"})
        time.sleep(0.1)  # idle long enough again: only its pending entry may save it
        return consumers

    monkeypatch.setattr(rb, "xinfo_consumers", list_then_deliver)

    # When that worker prunes stale consumers and drains the stream
    assert run_burst(rb, settings, consumer="starting") == 0
    monkeypatch.undo()

    # Then the consumer is kept with its entry,
    [stale] = rd.xinfo_consumers(STREAM, GROUP)
    assert (stale["name"], stale["pending"]) == ("stale", 1)
    # which is claimed and decided once it has been idle long enough
    time.sleep(0.4)
    assert run_burst(rb, settings, consumer="later") == 0
    assert the_decisions(rd, [message_id])[message_id]["user"] == "A"
    assert pending_count(rd) == 0


def test_delconsumer_removes_only_a_consumer_holding_nothing_idle_long_enough(
    each_build: RedisServer,
) -> None:
    # Given a consumer holding an entry, one idle with nothing, one just seen
    rb = each_build.client()
    settings: Settings = make_settings(each_build.url)
    rb.xadd(STREAM, {"number": "15550001000"})
    rb.xgroup_create(STREAM, GROUP, id="0")
    rb.xreadgroup(GROUP, "holder", {STREAM: ">"})
    rb.xgroup_createconsumer(STREAM, GROUP, "idle")
    time.sleep(0.2)
    rb.xgroup_createconsumer(STREAM, GROUP, "fresh")
    script = Scripts(rb).delconsumer

    def delete(consumer: str, idle_ms: int) -> bool:
        return stream.delete_consumer(rb, script, settings, consumer, idle_ms)

    # When each is asked to go, the holder also as it leaves (any idle time)
    outcomes = {
        "holder": delete("holder", 0),
        "fresh": delete("fresh", 150),
        "idle": delete("idle", 150),
        "unknown": delete("unknown", 0),
    }

    # Then only the consumer holding nothing and idle long enough is gone; the entry stays
    assert outcomes == {"holder": False, "fresh": False, "idle": True, "unknown": False}
    assert sorted(c["name"] for c in rb.xinfo_consumers(STREAM, GROUP)) == [b"fresh", b"holder"]
    assert rb.xpending(STREAM, GROUP)["pending"] == 1
    rb.close()
