"""Dead letters: replays that run at once move each letter exactly once; customers are masked
when letters are shown, and never stored whole in a letter's ``detail``."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest
from redis.crc import key_slot

from tests.conftest import Target, make_settings
from tests.helpers import ACCOUNT, NUMBER, dead, run_burst, send
from tests.ops import rota
from tests.redis_server import RedisServer
from worker import dead as dead_letters
from worker import keys, partitions
from worker.settings import Settings

ON_CLUSTER = pytest.mark.parametrize("backend", ["cluster"], indirect=True)
CUSTOMER = "447700900123"


def given_dead_letters(rb: Any, settings: Settings, count: int, accounts: int = 1) -> None:
    """``count`` dead letters of distinct customers; every other one has no message_id."""
    pipe = rb.pipeline(transaction=False)
    for i in range(count):
        fields = {"account": f"tenant{i % accounts:02d}", "number": NUMBER, "from": f"4477{i:08d}"}
        if i % 2:
            fields["message_id"] = f"wamid.{i}"
        letter = {"error": "unknown_number", "detail": "no settings", "inbound_id": f"{i}-0"}
        pipe.xadd(settings.dead_stream, {**fields, **letter, "deliveries": 1})
    pipe.execute()


def replay_at_once(target: Target, settings: Settings, replays: int) -> list[list[Any]]:
    """``replays`` replays of everything, each with its own client, started together."""
    start = threading.Barrier(replays)
    moved: list[list[Any]] = [[] for _ in range(replays)]

    def run(i: int) -> None:
        client = target.client()
        start.wait()
        moved[i] = dead_letters.replay(client, settings, 1_000_000)
        client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(replays)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return moved


def replayed_customers(rb: Any, settings: Settings) -> Counter[bytes]:
    return Counter(
        fields[b"from"]
        for stream in partitions.inbound_streams(settings)
        for _, fields in rb.xrange(stream)
    )


def test_concurrent_replays_move_each_dead_letter_exactly_once(
    rb: Any, target: Target, settings: Settings
) -> None:
    # Given 6,000 dead letters, half of them without a message_id
    given_dead_letters(rb, settings, 6_000)
    # When three replays run at once
    moved = replay_at_once(target, settings, 3)
    # Then each letter was moved by exactly one of them, once, and none is left
    assert sum(map(len, moved)) == 6_000
    assert len({dead_id for run in moved for dead_id, _ in run}) == 6_000
    customers = replayed_customers(rb, settings)
    assert len(customers) == 6_000 and set(customers.values()) == {1}
    assert rb.xlen(settings.dead_stream) == 0


@ON_CLUSTER
@pytest.mark.parametrize(
    ("dead_stream", "inbound_partitions", "same_slot"),
    [("rota:dead", 4, False), ("{rota:inbound}:dead", 1, True)],
    ids=["claimed-across-slots", "scripted-in-one-slot"],
)
def test_concurrent_replays_on_a_cluster_move_each_letter_once(
    rb: Any, target: Target, dead_stream: str, inbound_partitions: int, same_slot: bool
) -> None:
    # Given dead letters of 8 accounts, on a dead stream in (or not in) their streams' slot
    settings = make_settings(
        target.url, dead_stream=dead_stream, inbound_partitions=inbound_partitions
    )
    slot = key_slot(dead_stream.encode())
    streams = partitions.inbound_streams(settings)
    assert {key_slot(s.encode()) == slot for s in streams} == {same_slot}
    given_dead_letters(rb, settings, 600, accounts=8)
    # When three replays run at once
    moved = replay_at_once(target, settings, 3)
    # Then each letter is on its account's stream exactly once, and no claim is left
    assert sum(map(len, moved)) == 600
    customers = replayed_customers(rb, settings)
    assert len(customers) == 600 and set(customers.values()) == {1}
    for stream in streams:
        accounts = {fields[b"account"].decode() for _, fields in rb.xrange(stream)}
        assert {partitions.inbound_stream(settings, a) for a in accounts} <= {stream}
    assert rb.xlen(dead_stream) == 0
    claims = keys.replay_claim(dead_stream, "*")
    assert [k for node in target.node_clients() for k in node.scan_iter(match=claims)] == []


def test_a_letter_with_more_fields_than_one_script_takes_is_replayed_whole(
    rb: Any, settings: Settings
) -> None:
    fields = {b"from": CUSTOMER.encode(), **{b"f%d" % i: b"v" for i in range(4_000)}}
    rb.xadd(settings.dead_stream, {**fields, b"error": b"too_large", b"detail": b"big"})

    [(_, new_id)] = dead_letters.replay(rb, settings, 10)

    assert rb.xrange(settings.inbound_stream) == [(new_id.encode(), fields)]
    assert rb.xlen(settings.dead_stream) == 0
    assert rb.keys(keys.replay_claim(settings.dead_stream, "*")) == []


def test_replay_count_limits_how_many_are_moved(rb: Any, settings: Settings) -> None:
    given_dead_letters(rb, settings, 5)

    assert len(dead_letters.replay(rb, settings, 3)) == 3

    assert rb.xlen(settings.dead_stream) == 2
    assert [f[b"from"] for _, f in rb.xrange(settings.inbound_stream)] == [
        b"447700000000",
        b"447700000001",
        b"447700000002",
    ]


# Masking.


def test_a_dead_letters_detail_never_holds_the_full_customer_number(
    rd: Any, rb: Any, settings: Settings
) -> None:
    # Given a message whose `from` is not a valid number (16 digits)
    send(rd, settings, "4477009001234567")
    # When a worker dead-letters it
    assert run_burst(rb, settings) == 0
    # Then its detail shows the customer masked, while its own `from` stays whole for a replay
    [letter] = dead(rd, settings)
    assert letter["error"] == "invalid_field"
    assert "4477009001234567" not in letter["detail"]
    assert "************4567" in letter["detail"]
    assert letter["from"] == "4477009001234567"


@pytest.fixture
def dead_list(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> Any:
    def run(*flags: str) -> list[dict[str, str]]:
        result = rota(monkeypatch, capsys, redis_server.url, "dead", "list", *flags)
        assert (result.code, result.err) == (0, ""), result.err
        return [json.loads(line) for line in result.out.splitlines()]

    return run


def given_a_letter_quoting_its_customer(rb: Any, settings: Settings) -> None:
    """As an earlier version wrote it: the raw `from` quoted whole in `detail`."""
    detail = "from '+44 7700 900123' must be 6-15 digits after +, spaces, dashes, dots, brackets"
    letter = {"account": ACCOUNT, "number": NUMBER, "from": "+44 7700 900123"}
    rb.xadd(settings.dead_stream, {**letter, "error": "invalid_field", "detail": detail})


def test_dead_list_masks_the_customer_in_from_and_in_detail(
    dead_list: Any, rb: Any, settings: Settings
) -> None:
    given_a_letter_quoting_its_customer(rb, settings)

    [shown] = dead_list()

    assert shown["from"] == "***********0123"
    assert shown["detail"].startswith("from '***********0123' must be")
    assert "900123" not in json.dumps(shown)
    assert shown["number"] == NUMBER  # the business number is not a customer's


def test_dead_list_unmasked_shows_customers_in_full(
    dead_list: Any, rb: Any, settings: Settings
) -> None:
    given_a_letter_quoting_its_customer(rb, settings)

    [shown] = dead_list("--unmasked")

    assert shown["from"] == "+44 7700 900123"
    assert shown["detail"].startswith("from '+44 7700 900123' must be")
