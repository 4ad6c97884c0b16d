"""Data as people and other programs really write it with redis-cli or HSET: compiled keys
deleted, keys of the wrong type, user ids with any characters, presence padded or shouting.
Each case is recreated on the test's own redis-server; a decision is right or the message is
dead-lettered with nothing written, and the worker never crashes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import (
    ACCOUNT,
    NUMBER,
    dead,
    events,
    given_number,
    given_presence,
    pending_count,
    run_burst,
    send,
)
from worker import admin, keys, presence
from worker.assign import Assigner, Decision
from worker.clock import local_ms as now_ms
from worker.connection import transport
from worker.messages import Message, Rejection
from worker.scripts import Scripts, source
from worker.settings import Settings

CUSTOMER, OTHER, THIRD = "447700900001", "447700900002", "447700900003"
NOW = now_ms()


def message(customer: str, message_id: str) -> Message:
    return Message("1-0", ACCOUNT, NUMBER, customer, message_id)


def assigner(rb: Any) -> Assigner:
    return Assigner(Scripts(rb), dedup_window_s=86_400)


def cursor(rb: Any) -> int:
    return int(rb.get(keys.cursor(ACCOUNT, NUMBER)) or 0)


def snapshot(rb: Any) -> dict[bytes, bytes]:
    """Every key and its serialized value: equal before and after means nothing was written."""
    return {key: rb.dump(key) for key in sorted(rb.keys("*"))}


# --- 4. A script never writes before it knows it will succeed ------------------------------

BREAK_ROTATION: dict[str, Callable[[Any, str], Any]] = {
    "deleted": lambda rb, key: rb.delete(key),
    "shortened": lambda rb, key: rb.rpop(key),
    "of the wrong type": lambda rb, key: rb.set(key, "alice"),
}


@pytest.mark.parametrize("online_only", [False, True])
@pytest.mark.parametrize("damage", list(BREAK_ROTATION))
def test_rotation_broken_with_its_stamp_kept_is_rebuilt_and_the_cursor_moves_once(
    rd: Any, rb: Any, damage: str, online_only: bool
) -> None:
    # Given a number decided once (its rotation compiled), then its rotation key damaged
    given_number(rd, ["alice", "bob", "carol"], online_only=online_only)
    given_presence(rd, alice="available", bob="available", carol="available")
    decider = assigner(rb)
    assert decider.decide(transport(rb), [message(CUSTOMER, "m1")], NOW) == [
        Decision("alice", "round_robin", NOW)
    ]
    stamp = rb.get(keys.compiled(ACCOUNT, NUMBER))
    BREAK_ROTATION[damage](rb, keys.rotation(ACCOUNT, NUMBER))

    # When the next messages come
    second = decider.decide(transport(rb), [message(OTHER, "m2")], NOW)
    third = decider.decide(transport(rb), [message(THIRD, "m3")], NOW)

    # Then they are decided as if nothing happened, and the cursor moved once for each
    assert second == [Decision("bob", "round_robin", NOW)]
    assert third == [Decision("carol", "round_robin", NOW)]
    assert cursor(rb) == 3
    assert rd.lrange(keys.rotation(ACCOUNT, NUMBER), 0, -1) == ["alice", "bob", "carol"]
    assert rb.get(keys.compiled(ACCOUNT, NUMBER)) == stamp


@pytest.mark.parametrize("damage", ["deleted", "of the wrong type"])
def test_allowed_broken_with_its_stamp_kept_is_rebuilt(rd: Any, rb: Any, damage: str) -> None:
    # Given a number whose access keeps bob, bob the customer's owner, its access compiled
    given_number(rd, ["alice", "bob", "carol"], access=["alice", "bob"], online_only=False)
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "bob")
    decider = assigner(rb)
    assert decider.decide(transport(rb), [message(OTHER, "m1")], NOW) == [
        Decision("alice", "round_robin", NOW)
    ]
    allowed = keys.allowed(ACCOUNT, NUMBER)
    rb.delete(allowed)
    if damage == "of the wrong type":
        rb.rpush(allowed, "bob")

    # When the customer writes again, then bob, who may still use the number, keeps them
    assert decider.decide(transport(rb), [message(CUSTOMER, "m2")], NOW) == [
        Decision("bob", "owner", NOW)
    ]
    assert rd.smembers(allowed) == {"alice", "bob"}
    assert cursor(rb) == 1


# Each: what to break, and the message's number settings that make the script need that key.
WRONG_DATA: dict[str, tuple[Callable[[Any], Any], dict[str, Any]]] = {
    "owners a string": (lambda rb: rb.set(keys.owners(ACCOUNT, NUMBER), "bob"), {}),
    "presence a string": (lambda rb: rb.set(keys.presence(ACCOUNT), "available"), {}),
    "cursor not a number": (lambda rb: rb.set(keys.cursor(ACCOUNT, NUMBER), "abc"), {}),
    "cursor with leading zeros": (lambda rb: rb.set(keys.cursor(ACCOUNT, NUMBER), "007"), {}),
    "cursor beyond any count": (lambda rb: rb.set(keys.cursor(ACCOUNT, NUMBER), "9" * 19), {}),
    "cursor a list": (lambda rb: rb.rpush(keys.cursor(ACCOUNT, NUMBER), "1"), {}),
    "version a list": (lambda rb: rb.rpush(keys.version(ACCOUNT), "1"), {}),
    "de-duplication bucket a string": (
        lambda rb: rb.set(keys.dedup(ACCOUNT, NOW // 86_400_000), "x"),
        {},
    ),
    "previous bucket a list": (
        lambda rb: rb.rpush(keys.dedup(ACCOUNT, NOW // 86_400_000 - 1), "x"),
        {},
    ),
    "account settings a string": (
        lambda rb: rb.set(keys.account_settings(ACCOUNT), "boss"),
        {"members": []},  # nobody to rotate to: the admin is looked up
    ),
    "group a string": (
        lambda rb: rb.set(keys.group(ACCOUNT, "sales"), "alice"),
        {"members": ["alice", "group:sales"]},
    ),
    "access a list": (lambda rb: rb.rpush(keys.access(ACCOUNT, NUMBER), "alice"), {}),
}


def given_number_with_broken_key(rd: Any, rb: Any, case: str) -> None:
    """A number whose configuration changed since it was last compiled (the script compiles
    before deciding: writes that must not happen), then one key broken by hand."""
    damage, number_settings = WRONG_DATA[case]
    given_number(rd, **{"members": ["alice", "bob"], **number_settings})
    given_presence(rd, alice="available", bob="available")
    admin.set_account(rd, ACCOUNT, "boss")
    if case == "group a string":
        admin.set_group(rd, ACCOUNT, "sales", ["carol"])
    if case.startswith(("access", "version")):
        rb.delete(keys.access(ACCOUNT, NUMBER), keys.version(ACCOUNT))
    damage(rb)


@pytest.mark.parametrize("case", list(WRONG_DATA))
def test_hand_edited_key_the_script_cannot_use_is_invalid_data_with_nothing_written(
    rd: Any, rb: Any, case: str
) -> None:
    given_number_with_broken_key(rd, rb, case)
    before = snapshot(rb)

    (outcome,) = assigner(rb).decide(transport(rb), [message(CUSTOMER, "m1")], NOW)

    assert isinstance(outcome, Rejection), outcome
    assert outcome.error == "invalid_data"
    assert f"rota:{{{ACCOUNT}}}:" in outcome.detail  # it names the key to fix
    assert CUSTOMER not in outcome.detail
    assert snapshot(rb) == before


def test_worker_dead_letters_what_a_broken_key_cannot_decide_and_goes_on(
    rd: Any, rb: Any, settings: Settings
) -> None:
    # Given one number whose cursor was overwritten by hand, and a healthy one
    given_number(rd, ["alice"], online_only=False)
    given_number(rd, ["bob"], number="15550002000", online_only=False)
    rd.set(keys.cursor(ACCOUNT, NUMBER), "oops")
    send(rd, settings, CUSTOMER, message_id="wamid.broken")
    send(rd, settings, OTHER, message_id="wamid.fine", number="15550002000")

    # When a worker drains the stream
    assert run_burst(rb, settings) == 0

    # Then the healthy number's message is decided, the other dead-lettered at once, saying why
    assert [(e["message_id"], e["user"]) for e in events(rd, settings)] == [("wamid.fine", "bob")]
    [letter] = dead(rd, settings)
    assert (letter["message_id"], letter["error"], letter["deliveries"]) == (
        "wamid.broken",
        "invalid_data",
        "1",
    )
    assert keys.cursor(ACCOUNT, NUMBER) in letter["detail"]
    assert pending_count(rd) == 0
    assert rd.get(keys.cursor(ACCOUNT, NUMBER)) == "oops"  # nothing written
    assert rd.hget(keys.owners(ACCOUNT, NUMBER), CUSTOMER) is None


# --- 5. Hand-edited data cannot crash a worker ---------------------------------------------

ODD_USERS = [
    "ali|ce",
    "bob|round_robin|1700000000000",
    "[carol]",
    'd"q\\uote',
    "tab\there\nnew line",
    "日本語",
    "{acme}",
    "/slash/",
]


def test_members_with_any_characters_are_decided_published_and_repeated_identically(
    rd: Any, rb: Any, settings: Settings
) -> None:
    # Given members and presence entered with redis-cli, bypassing rota's checks
    rd.hset(keys.number(ACCOUNT, NUMBER), mapping={"assign_unknown": 1, "online_only": 1})
    rd.rpush(keys.members(ACCOUNT, NUMBER), *ODD_USERS)
    rd.incr(keys.version(ACCOUNT))
    rd.hset(keys.presence(ACCOUNT), mapping=dict.fromkeys(ODD_USERS, "available"))
    customers = [f"4477009{i:05d}" for i in range(len(ODD_USERS))]

    # When each is given a chat, and then every message is delivered again
    for i, customer in enumerate(customers):
        send(rd, settings, customer, message_id=f"wamid.{i}")
    assert run_burst(rb, settings) == 0
    for i, customer in enumerate(customers):
        send(rd, settings, customer, message_id=f"wamid.{i}")
    assert run_burst(rb, settings) == 0

    # Then each got the chat in turn, and each repeat repeats its first decision exactly
    published = events(rd, settings)
    first, again = published[: len(customers)], published[len(customers) :]
    assert [e["user"] for e in first] == ODD_USERS
    assert {e["reason"] for e in first} == {"round_robin"}
    unchanged = ("message_id", "customer", "user", "reason", "at")
    assert [{k: e[k] for k in unchanged} for e in again] == [
        {k: e[k] for k in unchanged} for e in first
    ]
    assert dead(rd, settings) == []
    assert pending_count(rd) == 0
    assert cursor(rb) == len(ODD_USERS)
    assert rd.hgetall(keys.owners(ACCOUNT, NUMBER)) == dict(zip(customers, ODD_USERS, strict=True))


def test_a_user_id_that_is_not_utf8_is_published_escaped_and_repeated_identically(
    rd: Any, rb: Any, settings: Settings
) -> None:
    rd.hset(keys.number(ACCOUNT, NUMBER), mapping={"assign_unknown": 1, "online_only": 0})
    rb.rpush(keys.members(ACCOUNT, NUMBER), b"\xff\xfeuser")
    rd.incr(keys.version(ACCOUNT))

    send(rd, settings, CUSTOMER, message_id="wamid.1")
    send(rd, settings, CUSTOMER, message_id="wamid.1")
    assert run_burst(rb, settings) == 0

    first, again = events(rd, settings)
    assert first["user"] == again["user"] == "\\xff\\xfeuser"
    assert first["at"] == again["at"]
    assert rb.hget(keys.owners(ACCOUNT, NUMBER), CUSTOMER) == b"\xff\xfeuser"


def test_the_decision_is_remembered_in_a_form_no_user_id_can_break(rd: Any, rb: Any) -> None:
    given_number(rd, ["alice"], online_only=False)
    rd.delete(keys.members(ACCOUNT, NUMBER))
    rd.rpush(keys.members(ACCOUNT, NUMBER), "ali|ce")
    rd.incr(keys.version(ACCOUNT))
    decider = assigner(rb)

    first = decider.decide(transport(rb), [message(CUSTOMER, "m1")], NOW)
    again = decider.decide(transport(rb), [message(CUSTOMER, "m1")], NOW + 1_000)

    assert first == again == [Decision("ali|ce", "round_robin", NOW)]
    record = rd.hget(keys.dedup(ACCOUNT, NOW // 86_400_000), f"{NUMBER}:m1")
    assert json.loads(record) == ["ali|ce", "round_robin", str(NOW)]


@pytest.mark.parametrize(
    ("record", "user", "reason", "at"),
    [
        ("alice|round_robin|1700000000000", "alice", "round_robin", 1700000000000),
        ("ali|ce|owner|1700000000001", "ali|ce", "owner", 1700000000001),
        ("|no_admin|1700000000002", "", "no_admin", 1700000000002),
    ],
)
def test_a_decision_remembered_in_the_format_before_json_is_repeated(
    rd: Any, rb: Any, record: str, user: str, reason: str, at: int
) -> None:
    # Given a decision remembered by a worker of the previous version
    given_number(rd, ["bob"], online_only=False)
    rd.hset(keys.dedup(ACCOUNT, NOW // 86_400_000 - 1), f"{NUMBER}:m1", record)

    # Then it is the message's decision, and nothing moves
    assert assigner(rb).decide(transport(rb), [message(CUSTOMER, "m1")], NOW) == [
        Decision(user, reason, at)
    ]
    assert cursor(rb) == 0


@pytest.mark.parametrize(
    "record", ["nonsense", '["alice","owner"]', '["alice","bogus","1"]', "alice|owner|soon"]
)
def test_a_remembered_decision_that_cannot_be_read_is_invalid_data(
    rd: Any, rb: Any, record: str
) -> None:
    given_number(rd, ["bob"], online_only=False)
    rd.hset(keys.dedup(ACCOUNT, NOW // 86_400_000), f"{NUMBER}:m1", record)
    before = snapshot(rb)

    (outcome,) = assigner(rb).decide(transport(rb), [message(CUSTOMER, "m1")], NOW)

    assert isinstance(outcome, Rejection), outcome
    assert outcome.error == "invalid_data"
    assert keys.dedup(ACCOUNT, NOW // 86_400_000) in outcome.detail
    assert snapshot(rb) == before


@pytest.mark.parametrize(
    "reply",
    [
        "{'alice'}",
        "{'alice', 'bogus', '1', '1'}",
        "{'alice', 'owner', 'soon', '1'}",
        "{'alice', 'owner', '1', '1', 'extra'}",
        "'alice|owner|1'",
        "7",
        "{1, 2, 3, 4}",
        "{'!invalid_data'}",
        "{'!invalid_data', 'x', '1', ''}",
        "{'!unknown_number', 'x', '', ''}",
        # the whole call's answer: one array inside the reply
        "{{'!groups'}}",
        "{{'!groups', 7}}",
        "{{'!invalid_data', 'x'}}",
        "{{}}",
        # two entries' replies for one message
        "{'alice', 'owner', '1', '1', 'bob', 'owner', '1', '1'}",
    ],
)
def test_a_script_reply_of_unexpected_shape_is_a_failed_decision_not_a_crash(
    rb: Any, reply: str
) -> None:
    scripts = Scripts(rb)
    scripts.decide = rb.register_script(f"return {reply}")

    (outcome,) = Assigner(scripts, dedup_window_s=86_400).decide(
        transport(rb), [message(CUSTOMER, "m1")], NOW
    )

    assert isinstance(outcome, Exception), outcome
    assert "decide.lua replied" in str(outcome)


# --- 12. Presence as the CRM writes it -----------------------------------------------------


@pytest.mark.parametrize(
    "status", ["AVAILABLE ", " available", "available\n", "\tAvailable\r\n", "AvAiLaBlE"]
)
def test_presence_written_padded_or_in_any_case_counts_as_available(
    rd: Any, rb: Any, settings: Settings, status: str
) -> None:
    # Given bob's status written by the CRM with HSET, as it comes
    given_number(rd, ["alice", "bob"])
    rd.hset(keys.presence(ACCOUNT), mapping={"alice": "away", "bob": status})

    # Then number show and the decision agree that bob is available
    shown = admin.show_number(rd, ACCOUNT, NUMBER)
    assert shown is not None
    assert shown["eligible_now"] == ["bob"]
    assert shown["next"] == {"user": "bob", "reason": "round_robin"}
    send(rd, settings, CUSTOMER)
    assert run_burst(rb, settings) == 0
    assert [(e["user"], e["reason"]) for e in events(rd, settings)] == [("bob", "round_robin")]


@pytest.mark.parametrize(
    "status",
    ["available" + " " * 100, " " * 100 + "available", "available" * 10, "available\x00", "avail"],
)
def test_presence_that_is_no_status_counts_as_unavailable(
    rd: Any, rb: Any, settings: Settings, status: str
) -> None:
    given_number(rd, ["alice", "bob"])
    admin.set_account(rd, ACCOUNT, "boss")
    rd.hset(keys.presence(ACCOUNT), mapping={"alice": status, "bob": "away"})

    shown = admin.show_number(rd, ACCOUNT, NUMBER)
    assert shown is not None
    assert shown["eligible_now"] == []
    send(rd, settings, CUSTOMER)
    assert run_burst(rb, settings) == 0
    assert [(e["user"], e["reason"]) for e in events(rd, settings)] == [("boss", "admin_fallback")]


def test_a_megabyte_presence_value_is_unavailable_and_never_read_into_the_script(
    rd: Any, rb: Any
) -> None:
    # Given nine of ten members whose status is a 1 MB value (a CRM bug)
    users = [f"u{i}" for i in range(10)]
    given_number(rd, users)
    rd.hset(keys.presence(ACCOUNT), mapping=dict.fromkeys(users[:-1], "available" * 111_112))
    rd.hset(keys.presence(ACCOUNT), users[-1], "available")
    decider = assigner(rb)
    shown = admin.show_number(rd, ACCOUNT, NUMBER)
    assert shown is not None
    assert shown["eligible_now"] == ["u9"]

    # When 200 messages are decided, one call each
    started = time.perf_counter()
    outcomes = [
        decider.decide(transport(rb), [message(f"4477{i:08d}", f"m{i}")], NOW) for i in range(200)
    ]
    elapsed = time.perf_counter() - started

    # Then every one goes to the one available user, far faster than copying 9 MB each time
    # would allow (about 70 ms per decision when it did; the bound is generous on purpose)
    assert {outcome[0] for outcome in outcomes} == {Decision("u9", "round_robin", NOW)}
    assert elapsed < 5.0, f"{elapsed:.1f} s for 200 decisions"


def test_the_script_and_python_agree_on_how_long_a_status_may_be() -> None:
    found = re.search(r"^local MAX_STATUS_BYTES = (\d+)$", source("decide"), re.MULTILINE)
    assert found is not None
    assert int(found[1]) == presence.MAX_STATUS_BYTES
