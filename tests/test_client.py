"""worker.client: the CRM's verbs write exactly the contract's fields and keys, refuse what the
worker would dead-letter, and read a conversation's state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ON_SINGLE_AND_CLUSTER, make_settings
from tests.helpers import ACCOUNT, NUMBER, dead, events, given_number, given_presence, run_burst
from worker import admin, clock, keys, partitions
from worker.assign import Assigner, Decision, Move
from worker.client import Refused, Rota
from worker.connection import transport
from worker.messages import Message
from worker.scripts import Scripts
from worker.settings import Settings

CUSTOMER = "447700900123"


@pytest.fixture
def rota(rd: Any, settings: Settings) -> Rota:
    return Rota(rd, settings)


def entries(rd: Any, settings: Settings) -> list[dict[str, str]]:
    return [fields for _, fields in rd.xrange(settings.inbound_stream)]


# Each verb's entry.

VERBS: dict[str, tuple[Callable[[Rota], str], dict[str, str]]] = {
    "send": (
        lambda r: r.send("+1 555 000 1000", "+44 7700 900123", "wamid.1", ACCOUNT, text="hi"),
        {"account": ACCOUNT, "number": NUMBER, "from": CUSTOMER, "message_id": "wamid.1",
         "text": "hi"},
    ),
    "heartbeat": (
        lambda r: r.heartbeat(ACCOUNT, "alice@acme.example"),
        {"type": "heartbeat", "account": ACCOUNT, "user": "alice@acme.example"},
    ),
    "heartbeat-with-id": (
        lambda r: r.heartbeat(ACCOUNT, "alice", message_id="hb.1"),
        {"type": "heartbeat", "account": ACCOUNT, "user": "alice", "message_id": "hb.1"},
    ),
    "replied": (
        lambda r: r.replied(ACCOUNT, NUMBER, "+44 7700 900123", "alice"),
        {"type": "replied", "account": ACCOUNT, "number": NUMBER, "customer": CUSTOMER,
         "user": "alice"},
    ),
    "close": (
        lambda r: r.close(ACCOUNT, "+1-555-000-1000", CUSTOMER, message_id="c.1"),
        {"type": "closed", "account": ACCOUNT, "number": NUMBER, "customer": CUSTOMER,
         "message_id": "c.1"},
    ),
    "transfer": (
        lambda r: r.transfer(ACCOUNT, NUMBER, CUSTOMER, "bob"),
        {"type": "transfer", "account": ACCOUNT, "number": NUMBER, "customer": CUSTOMER,
         "user": "bob"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_each_verb_adds_one_entry_with_exactly_the_contracts_fields(
    rota: Rota, rd: Any, settings: Settings, verb: str
) -> None:
    call, expected = VERBS[verb]

    entry_id = call(rota)

    [(stored_id, fields)] = rd.xrange(settings.inbound_stream)
    assert entry_id == stored_id
    assert fields == expected
    assert list(fields) == list(expected)  # in the contract's order: type first


def test_account_left_out_is_the_default_account(rota: Rota, rd: Any, settings: Settings) -> None:
    rota.send(NUMBER, CUSTOMER)
    rota.close(None, NUMBER, CUSTOMER)  # type: ignore[arg-type]

    assert [e["account"] for e in entries(rd, settings)] == ["default", "default"]


def test_a_bytes_client_gets_text_ids_too(rb: Any, settings: Settings) -> None:
    entry_id = Rota(rb, settings).heartbeat(ACCOUNT, "alice")

    assert isinstance(entry_id, str)
    assert rb.xrange(settings.inbound_stream)[0][0] == entry_id.encode()


def test_entries_go_to_the_accounts_partition(rd: Any, settings: Settings) -> None:
    partitioned = make_settings(settings.redis_url.get_secret_value(), inbound_partitions=4)  # type: ignore[union-attr]
    rota = Rota(rd, partitioned)

    rota.send(NUMBER, CUSTOMER, account=ACCOUNT)
    rota.transfer(ACCOUNT, NUMBER, CUSTOMER, "bob")

    stream = partitions.inbound_stream(partitioned, ACCOUNT)
    assert stream != settings.inbound_stream
    assert [f.get("type") for _, f in rd.xrange(stream)] == [None, "transfer"]


# Bad input: Refused (a ValueError), one line, nothing written.

BAD: dict[str, tuple[Callable[[Rota], object], str]] = {
    "account": (lambda r: r.heartbeat("acme corp", "alice"), "invalid_field: account"),
    "user": (lambda r: r.heartbeat(ACCOUNT, "al ice"), "invalid_field: user"),
    "number": (lambda r: r.close(ACCOUNT, "12345", CUSTOMER), "invalid_field: number"),
    "customer": (lambda r: r.close(ACCOUNT, NUMBER, "12"), "invalid_field: customer"),
    "from": (lambda r: r.send(NUMBER, "call me"), "invalid_field: from"),
    "transfer-user": (lambda r: r.transfer(ACCOUNT, NUMBER, CUSTOMER, ""), "invalid_field: user"),
    "message-id": (
        lambda r: r.replied(ACCOUNT, NUMBER, CUSTOMER, "alice", message_id="w" * 257),
        "invalid_field: message_id longer than 256 bytes",
    ),
    "send-message-id": (
        lambda r: r.send(NUMBER, CUSTOMER, message_id="é" * 129),
        "invalid_field: message_id longer than 256 bytes",
    ),
    "too-large": (lambda r: r.send(NUMBER, CUSTOMER, text="x" * 70_000), "too_large: "),
    "extra-type": (lambda r: r.send(NUMBER, CUSTOMER, type="closed"), "invalid_field: type"),
    "extra-not-text": (lambda r: r.send(NUMBER, CUSTOMER, name=7), "invalid_field: name"),  # type: ignore[arg-type]
    "status": (lambda r: r.set_presence(ACCOUNT, "alice", "sleeping"), "invalid_field: status"),
    "presence-user": (lambda r: r.set_presence(ACCOUNT, "a b", "available"), "invalid_field"),
    "show": (lambda r: r.show_conversation(ACCOUNT, NUMBER, "x"), "invalid_field: customer"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_one_line_and_writes_nothing(rota: Rota, rd: Any, case: str) -> None:
    call, why = BAD[case]

    with pytest.raises(Refused) as refused:
        call(rota)

    assert isinstance(refused.value, ValueError)
    assert str(refused.value).startswith(why), str(refused.value)
    assert "\n" not in str(refused.value)
    assert rd.keys("*") == []


def test_a_refused_customer_is_quoted_masked(rota: Rota) -> None:
    with pytest.raises(Refused) as refused:
        rota.close(ACCOUNT, NUMBER, "4477009001234567890")

    assert "4477009001234567890" not in str(refused.value)
    assert "7890" in str(refused.value)


# Presence: the status and when Rota heard from the user, together.


@ON_SINGLE_AND_CLUSTER
def test_set_presence_writes_the_status_and_heard_at_the_servers_time(
    rd: Any, settings: Settings
) -> None:
    before = clock.server_ms(rd)

    Rota(rd, settings).set_presence(ACCOUNT, "alice", "In Break")

    after = clock.server_ms(rd)
    assert rd.hgetall(keys.presence(ACCOUNT)) == {"alice": "in_break"}
    heard = int(rd.hget(keys.heard(ACCOUNT), "alice"))
    assert before <= heard <= after


def test_set_presence_again_moves_heard_forward(rota: Rota, rd: Any) -> None:
    rd.hset(keys.heard(ACCOUNT), "alice", "1000")

    rota.set_presence(ACCOUNT, "alice", "available")

    assert int(rd.hget(keys.heard(ACCOUNT), "alice")) > 1000


# A conversation's state, from keys set by hand.


@ON_SINGLE_AND_CLUSTER
def test_show_conversation_reads_open_closed_and_none(rd: Any, settings: Settings) -> None:
    rota = Rota(rd, settings)
    assert rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER) == {
        "user": None,
        "state": "none",
        "replied": False,
        "reply_deadline": None,
        "tried": [],
    }

    rd.hset(keys.owners(ACCOUNT, NUMBER), CUSTOMER, "alice")
    assert rota.show_conversation(ACCOUNT, NUMBER, "+44 7700 900123") == {
        "user": "alice",
        "state": "closed",
        "replied": False,
        "reply_deadline": None,
        "tried": [],
    }

    rd.hset(keys.open_conversations(ACCOUNT, NUMBER), CUSTOMER, "bob")  # transferred: bob holds
    rd.hset(keys.replied(ACCOUNT, NUMBER), CUSTOMER, "1")
    assert rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER) == {
        "user": "bob",
        "state": "open",
        "replied": True,
        "reply_deadline": None,
        "tried": ["bob"],
    }


@ON_SINGLE_AND_CLUSTER
def test_show_conversation_reads_queued_deadlines_and_who_tried(
    rd: Any, settings: Settings
) -> None:
    rota = Rota(rd, settings)
    timer = f"{NUMBER}:{CUSTOMER}"
    # Queued (a customer alice owned, waiting now): nobody has it; its timer is the queue
    # wait's end, no reply deadline
    rd.hset(keys.owners(ACCOUNT, NUMBER), CUSTOMER, "alice")
    rd.hset(keys.queued(ACCOUNT, NUMBER), CUSTOMER, "1700000000000")
    rd.zadd(keys.timers(ACCOUNT), {timer: 1_700_000_600_000})
    assert rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER) == {
        "user": None,
        "state": "queued",
        "replied": False,
        "reply_deadline": None,
        "tried": [],
    }

    # Open, not replied, after a reply timeout: the deadline, and both users who held it
    rd.hdel(keys.queued(ACCOUNT, NUMBER), CUSTOMER)
    rd.hset(keys.open_conversations(ACCOUNT, NUMBER), CUSTOMER, "bob")
    rd.hset(keys.tried(ACCOUNT, NUMBER), CUSTOMER, "alice,bob")
    rd.zadd(keys.timers(ACCOUNT), {timer: 1_700_000_120_000, NUMBER: 0})
    assert rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER) == {
        "user": "bob",
        "state": "open",
        "replied": False,
        "reply_deadline": 1_700_000_120_000,
        "tried": ["alice", "bob"],
    }

    # Replied: no deadline, whatever the timers hold
    rd.hset(keys.replied(ACCOUNT, NUMBER), CUSTOMER, "1")
    shown = rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER)
    assert (shown["replied"], shown["reply_deadline"]) == (True, None)

    # Closed: nobody tried it since it opened, there is no deadline
    rd.hdel(keys.open_conversations(ACCOUNT, NUMBER), CUSTOMER)
    rd.hdel(keys.replied(ACCOUNT, NUMBER), CUSTOMER)
    assert rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER) == {
        "user": "alice",
        "state": "closed",
        "replied": False,
        "reply_deadline": None,
        "tried": [],
    }


def test_show_conversation_from_a_bytes_client(rb: Any, settings: Settings) -> None:
    rb.hset(keys.open_conversations(ACCOUNT, NUMBER), CUSTOMER, "bob")
    rb.hset(keys.tried(ACCOUNT, NUMBER), CUSTOMER, "alice,bob")
    rb.zadd(keys.timers(ACCOUNT), {f"{NUMBER}:{CUSTOMER}": 1_700_000_120_000})

    shown = Rota(rb, settings).show_conversation(ACCOUNT, NUMBER, CUSTOMER)

    assert (shown["user"], shown["state"], shown["replied"]) == ("bob", "open", False)
    assert (shown["reply_deadline"], shown["tried"]) == (1_700_000_120_000, ["alice", "bob"])


# A conversation's state as decide.lua leaves it, on a clock the test controls.

NOW = clock.local_ms()
TIMEOUT_S = 60


def decided(rb: Any, now_ms: int, *entries: Message) -> list[Move]:
    """The entries decided in one batch at ``now_ms``: the conversations that moved."""
    link = transport(rb)
    try:
        batch = Assigner(Scripts(rb), dedup_window_s=86_400).decide_batch(link, entries, now_ms)
    finally:
        link.close()
    assert all(isinstance(outcome, Decision) for outcome in batch.outcomes), batch.outcomes
    return batch.moves


def entry(kind: str = "message", user: str = "", message_id: str = "") -> Message:
    return Message(f"{NOW}-0", ACCOUNT, NUMBER, CUSTOMER, message_id, kind, user)


def test_show_conversation_follows_a_reply_timeout_then_the_reply(
    rota: Rota, rd: Any, rb: Any
) -> None:
    # Given alice and bob, and a reply timeout
    given_number(rd, ["alice", "bob"], online_only=False, reply_timeout_s=TIMEOUT_S)
    decided(rb, NOW, entry(message_id="wamid.1"))
    assert rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER) == {
        "user": "alice",
        "state": "open",
        "replied": False,
        "reply_deadline": NOW + TIMEOUT_S * 1000,
        "tried": ["alice"],
    }
    # When alice does not reply in time
    late = NOW + TIMEOUT_S * 1000
    assert [(m.user, m.reason, m.previous) for m in decided(rb, late, entry("timer"))] == [
        ("bob", "reply_timeout", "alice")
    ]
    # Then bob has it, with a deadline of his own, and both held it
    assert rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER) == {
        "user": "bob",
        "state": "open",
        "replied": False,
        "reply_deadline": late + TIMEOUT_S * 1000,
        "tried": ["alice", "bob"],
    }
    # When bob replies, the deadline is gone; when it closes, so is the list
    decided(rb, late + 1000, entry("replied", "bob", "r.1"))
    shown = rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER)
    assert (shown["replied"], shown["reply_deadline"]) == (True, None)
    decided(rb, late + 2000, entry("closed", message_id="c.1"))
    assert rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER) == {
        "user": "bob",
        "state": "closed",
        "replied": False,
        "reply_deadline": None,
        "tried": [],
    }


def test_show_conversation_of_a_queued_customer_then_served(
    rota: Rota, rd: Any, rb: Any, settings: Settings
) -> None:
    # Given nobody available, when_nobody = queue and a queue-wait limit
    given_number(rd, ["alice"], when_nobody="queue", queue_max_wait_s=600)
    admin.set_account(rd, ACCOUNT, "boss")
    decided(rb, NOW, entry(message_id="wamid.1"))
    # Then the customer waits, with its queue-wait timer but no reply deadline
    assert rd.zscore(keys.timers(ACCOUNT), f"{NUMBER}:{CUSTOMER}") == NOW + 600_000
    assert rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER) == {
        "user": None,
        "state": "queued",
        "replied": False,
        "reply_deadline": None,
        "tried": [],
    }
    before = clock.server_ms(rd)
    shown = admin.show_number(rd, ACCOUNT, NUMBER)
    assert shown is not None and shown["queue"] == 1
    assert before - NOW <= shown["oldest_wait_ms"] <= clock.server_ms(rd) - NOW
    # When alice comes back and the queue is served, alice has it
    given_presence(rd, alice="available")
    served = decided(rb, NOW + 1000, Message(f"{NOW}-1", ACCOUNT, NUMBER, "", "", "queue"))
    assert [(m.customer, m.user, m.reason) for m in served] == [(CUSTOMER, "alice", "round_robin")]
    shown_now = rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER)
    assert (shown_now["user"], shown_now["state"], shown_now["tried"]) == (
        "alice",
        "open",
        ["alice"],
    )
    after = admin.show_number(rd, ACCOUNT, NUMBER)
    assert after is not None and (after["queue"], after["oldest_wait_ms"]) == (0, None)


def test_the_worker_takes_the_clients_activity_in_order(
    rota: Rota, rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], online_only=False)
    rota.send(NUMBER, CUSTOMER, "m.1", ACCOUNT)
    rota.transfer(ACCOUNT, NUMBER, CUSTOMER, "bob")
    rota.replied(ACCOUNT, NUMBER, CUSTOMER, "bob")

    assert run_burst(rb, settings) == 0

    assert dead(rd, settings) == []
    assert [(e["user"], e["reason"]) for e in events(rd, settings)] == [
        ("alice", "round_robin"),
        ("bob", "transfer"),
    ]
    shown = rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER)
    assert (shown["user"], shown["state"], shown["replied"]) == ("bob", "open", True)

    rota.close(ACCOUNT, NUMBER, CUSTOMER)
    assert run_burst(rb, settings) == 0
    assert rota.show_conversation(ACCOUNT, NUMBER, CUSTOMER)["state"] == "closed"
