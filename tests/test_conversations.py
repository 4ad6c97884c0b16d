"""The contract's conversations, beyond the sheet: presence TTL, capacity, owner_online_only
and the CRM's activity (heartbeat, replied, closed, transfer), each through the inbound stream
and a real worker, some through the ``rota`` command line."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import Cli, Target
from tests.helpers import (
    ACCOUNT,
    DEAD_LETTER_FIELDS,
    NUMBER,
    dead,
    events,
    given_number,
    given_presence,
    run_burst,
    run_rota,
    send,
)
from worker import admin, keys
from worker.client import Rota
from worker.settings import Settings

C1, C2, C3, C4, C5 = (f"44770090000{i}" for i in range(1, 6))
TTL_S = 1
PAST_TTL_S = TTL_S + 0.5  # sleeping this long leaves a user unheard for more than the TTL


def activity(rd: Any, settings: Settings, kind: str, **fields: str) -> str:
    """One CRM activity entry on the inbound stream, as the CRM would XADD it."""
    return admin.send(rd, settings, {"type": kind, "account": ACCOUNT, **fields})


def conversation(customer: str, **fields: str) -> dict[str, str]:
    return {"number": NUMBER, "customer": customer, **fields}


def decided(rd: Any, rb: Any, settings: Settings, *customers: str) -> list[tuple[str, str]]:
    """Sends one message per customer, runs a worker until drained: (user, reason) of each
    entry published meanwhile (activity sent before is decided in the same burst)."""
    start = len(events(rd, settings))
    for customer in customers:
        send(rd, settings, customer)
    assert run_burst(rb, settings) == 0
    return [(e["user"], e["reason"]) for e in events(rd, settings)[start:]]


def burst(rb: Any, settings: Settings) -> None:
    assert run_burst(rb, settings) == 0


def shown(rd: Any, settings: Settings, customer: str) -> dict[str, Any]:
    return Rota(rd, settings).show_conversation(ACCOUNT, NUMBER, customer)


def owner_of(rd: Any, customer: str) -> str | None:
    owner: str | None = rd.hget(keys.owners(ACCOUNT, NUMBER), customer)
    return owner


def open_counts(rd: Any) -> dict[str, int]:
    return admin.open_counts(rd, ACCOUNT, NUMBER)


# presence_ttl_s: a user the CRM stopped hearing from stops getting chats.


def test_ghost_user_stops_getting_chats_after_ttl(
    rd: Any, rb: Any, settings: Settings, rota: Cli
) -> None:
    rota("account", "set", ACCOUNT, "--admin", "boss", "--presence-ttl", str(TTL_S))
    rota("number", "set", ACCOUNT, NUMBER, "--members", "alice,bob")
    rota("presence", "set", ACCOUNT, "alice", "available")
    rota("presence", "set", ACCOUNT, "bob", "Available")
    assert decided(rd, rb, settings, C1, C2) == [("alice", "round_robin"), ("bob", "round_robin")]

    time.sleep(PAST_TTL_S)  # both laptops closed: no heartbeat
    assert decided(rd, rb, settings, C3) == [("boss", "admin_fallback")]

    rota("presence", "heartbeat", ACCOUNT, "bob")  # the cursor is at alice, still unheard
    assert decided(rd, rb, settings, C4) == [("bob", "round_robin")]

    activity(rd, settings, "heartbeat", user="alice")
    assert decided(rd, rb, settings, C5) == [("alice", "round_robin")]
    assert dead(rd, settings) == []


# capacity: a user holding that many open conversations gets no new chat by rule 3.


@pytest.mark.parametrize("capacity", [1, 2])
def test_full_user_is_skipped_until_a_conversation_closes(
    rd: Any, rb: Any, settings: Settings, capacity: int
) -> None:
    given_number(rd, ["alice", "bob"], online_only=False, capacity=capacity, admin="boss")
    first = [f"4477009001{i:02d}" for i in range(2 * capacity)]
    assert decided(rd, rb, settings, *first) == [
        ("alice" if i % 2 == 0 else "bob", "round_robin") for i in range(2 * capacity)
    ]
    assert open_counts(rd) == {"alice": capacity, "bob": capacity}

    assert decided(rd, rb, settings, C1) == [("boss", "admin_fallback")]  # both full

    activity(rd, settings, "closed", **conversation(first[0]))  # one of alice's
    assert decided(rd, rb, settings, C2) == [("alice", "round_robin")]
    assert open_counts(rd) == {"alice": capacity, "bob": capacity, "boss": 1}


def test_returning_customer_goes_to_owner_even_at_capacity(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], online_only=False, capacity=1, admin="boss")
    assert decided(rd, rb, settings, C1) == [("alice", "round_robin")]
    activity(rd, settings, "closed", **conversation(C1))
    assert decided(rd, rb, settings, C2, C3) == [("bob", "round_robin"), ("alice", "round_robin")]
    assert open_counts(rd) == {"alice": 1, "bob": 1}  # both at capacity

    assert decided(rd, rb, settings, C1) == [("alice", "owner")]  # rule 1 is not blocked

    assert open_counts(rd) == {"alice": 2, "bob": 1}  # reopening counts, above capacity
    assert shown(rd, settings, C1)["state"] == "open"
    assert decided(rd, rb, settings, C4) == [("boss", "admin_fallback")]


# owner_online_only: rule 1 only while the owner holds it open or is eligible now.


def test_owner_online_only_sends_returning_customer_past_an_offline_owner(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], owner_online_only=True)
    given_presence(rd, alice="available", bob="available")
    assert decided(rd, rb, settings, C1) == [("alice", "round_robin")]
    activity(rd, settings, "closed", **conversation(C1))
    burst(rb, settings)
    given_presence(rd, alice="away")

    assert decided(rd, rb, settings, C1) == [("bob", "round_robin")]
    assert owner_of(rd, C1) == "bob"
    assert open_counts(rd) == {"bob": 1}


def test_owner_online_only_keeps_owner_who_holds_the_open_conversation(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], owner_online_only=True, capacity=1)
    given_presence(rd, alice="available", bob="available")
    assert decided(rd, rb, settings, C1) == [("alice", "round_robin")]
    given_presence(rd, alice="away")  # and alice is at capacity, with this very conversation

    assert decided(rd, rb, settings, C1) == [("alice", "owner")]
    assert open_counts(rd) == {"alice": 1}


def test_owner_online_only_makes_the_new_user_the_owner(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], owner_online_only=True)
    given_presence(rd, alice="available", bob="available")
    assert decided(rd, rb, settings, C1) == [("alice", "round_robin")]
    activity(rd, settings, "closed", **conversation(C1))
    burst(rb, settings)
    given_presence(rd, alice="away")
    assert decided(rd, rb, settings, C1) == [("bob", "round_robin")]
    activity(rd, settings, "closed", **conversation(C1))
    burst(rb, settings)
    given_presence(rd, alice="available")  # both online again: the owner now is bob

    assert decided(rd, rb, settings, C1) == [("bob", "owner")]


def test_owner_online_only_skips_an_owner_at_capacity(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["alice", "bob", "carol"], online_only=False, owner_online_only=True)
    admin.set_number(rd, ACCOUNT, NUMBER, capacity=1)
    assert decided(rd, rb, settings, C1) == [("alice", "round_robin")]
    activity(rd, settings, "closed", **conversation(C1))
    assert decided(rd, rb, settings, C2, C3, C4) == [
        ("bob", "round_robin"),
        ("carol", "round_robin"),
        ("alice", "round_robin"),
    ]
    activity(rd, settings, "closed", **conversation(C2))  # bob is free, alice full

    assert decided(rd, rb, settings, C1) == [("bob", "round_robin")]
    assert owner_of(rd, C1) == "bob"


# The CRM's activity.


def test_transfer_publishes_an_event_with_previous_and_event_id(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], online_only=False, capacity=1)
    assert decided(rd, rb, settings, C1) == [("alice", "round_robin")]
    # carol: no member, no status; a transfer takes no account of either
    entry_id = activity(
        rd, settings, "transfer", **conversation(C1, user="carol"), message_id="t.1"
    )
    burst(rb, settings)

    event = events(rd, settings)[-1]
    assert {k: v for k, v in event.items() if k not in ("at", "event_id")} == {
        "account": ACCOUNT,
        "number": NUMBER,
        "customer": C1,
        "user": "carol",
        "reason": "transfer",
        "previous": "alice",
        "message_id": "",
        "inbound_id": entry_id,
    }
    assert event["event_id"] != "" and int(event["at"]) > 0
    assert owner_of(rd, C1) == "carol"
    assert open_counts(rd) == {"carol": 1}
    assert shown(rd, settings, C1)["user"] == "carol"

    # Redelivered (the CRM retried): the same event, nothing changes.
    activity(rd, settings, "transfer", **conversation(C1, user="carol"), message_id="t.1")
    burst(rb, settings)
    again = events(rd, settings)[-1]
    assert len(events(rd, settings)) == 3
    assert {**again, "inbound_id": entry_id} == event  # the same event_id, previous, user, at
    assert open_counts(rd) == {"carol": 1}

    # A second transfer, another event; the customer's next message goes to the new owner.
    activity(rd, settings, "transfer", **conversation(C1, user="bob"))
    burst(rb, settings)
    second = events(rd, settings)[-1]
    assert (second["user"], second["previous"]) == ("bob", "carol")
    assert second["event_id"] not in ("", event["event_id"])
    assert decided(rd, rb, settings, C1) == [("bob", "owner")]
    assert open_counts(rd) == {"bob": 1}


def test_closed_frees_the_slot_and_keeps_the_owner(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["alice"], online_only=False, capacity=1, admin="boss")
    assert decided(rd, rb, settings, C1, C2) == [
        ("alice", "round_robin"),
        ("boss", "admin_fallback"),
    ]

    activity(rd, settings, "closed", **conversation(C1), message_id="close.1")
    assert decided(rd, rb, settings) == []  # a closed entry publishes nothing

    assert shown(rd, settings, C1)["state"] == "closed"
    assert owner_of(rd, C1) == "alice"
    assert open_counts(rd) == {"boss": 1}
    assert decided(rd, rb, settings, C3) == [("alice", "round_robin")]  # her slot is free
    activity(rd, settings, "closed", **conversation(C3))
    assert decided(rd, rb, settings, C1) == [("alice", "owner")]  # reopened with the owner
    assert shown(rd, settings, C1)["state"] == "open"
    assert open_counts(rd) == {"alice": 1, "boss": 1}


def test_replied_marks_the_conversation_and_is_a_heartbeat(
    rd: Any, rb: Any, settings: Settings, rota: Cli
) -> None:
    admin.set_account(rd, ACCOUNT, presence_ttl_s=TTL_S)
    given_number(rd, ["alice", "bob"])
    given_presence(rd, alice="available", bob="available")
    assert decided(rd, rb, settings, C1) == [("alice", "round_robin")]
    assert shown(rd, settings, C1)["replied"] is False

    time.sleep(PAST_TTL_S)
    activity(rd, settings, "replied", **conversation(C1, user="bob"))  # not bob's
    burst(rb, settings)
    assert shown(rd, settings, C1)["replied"] is False

    time.sleep(PAST_TTL_S)  # bob's reply counted as a heartbeat: let it run out too
    rota("conversation", "replied", ACCOUNT, NUMBER, C1, "alice")
    # the cursor is at bob, unheard for longer than the TTL: only alice's reply keeps her in
    assert decided(rd, rb, settings, C2) == [("alice", "round_robin")]
    assert json.loads(rota("conversation", "show", ACCOUNT, NUMBER, C1))["replied"] is True
    assert dead(rd, settings) == []


ACTIVITY_DEAD_LETTERS = {
    "closed-without-customer": ({"type": "closed", "number": NUMBER}, "missing_field"),
    "heartbeat-without-user": ({"type": "heartbeat"}, "missing_field"),
    "replied-without-user": (
        {"type": "replied", "number": NUMBER, "customer": C1},
        "missing_field",
    ),
    "unknown-type": ({"type": "reopen", "number": NUMBER, "customer": C1}, "invalid_field"),
    "closed-on-unknown-number": (
        {"type": "closed", "number": "15550009999", "customer": C1},
        "unknown_number",
    ),
}


@pytest.mark.parametrize("case", sorted(ACTIVITY_DEAD_LETTERS))
def test_bad_activity_is_dead_lettered(rd: Any, rb: Any, settings: Settings, case: str) -> None:
    given_number(rd, ["alice"], online_only=False)
    fields, error = ACTIVITY_DEAD_LETTERS[case]
    entry_id = admin.send(rd, settings, {"account": ACCOUNT, **fields})

    burst(rb, settings)

    [letter] = dead(rd, settings)
    assert letter["error"] == error, letter
    assert letter["inbound_id"] == entry_id
    assert set(letter) >= DEAD_LETTER_FIELDS
    assert {k: letter[k] for k in fields} == fields
    assert events(rd, settings) == []
    assert rd.xpending("rota:inbound", settings.group)["pending"] == 0


# Every conversation setting off: rules 1-5 exactly as the sheet has them.


def test_activity_interleaved_does_not_change_round_robin(
    rd: Any, rb: Any, settings: Settings
) -> None:
    users = ["A", "B", "C", "D"]
    for account in (ACCOUNT, "plain"):
        given_number(rd, users, account=account)
        given_presence(rd, account=account, A="available", B="away", C="available", D="available")
    customers = [C1, C2, C3, C1, C4, C5, C2]

    for i, customer in enumerate(customers):
        send(rd, settings, customer, account="plain")
        send(rd, settings, customer)
        # After each message, some activity on the busy account only.
        activity(rd, settings, "heartbeat", user=users[i % len(users)])
        activity(rd, settings, "closed", **conversation(customer))
        activity(rd, settings, "replied", **conversation(customer, user="A"))
        activity(rd, settings, "closed", **conversation(C5))  # maybe never opened
    burst(rb, settings)

    by_account: dict[str, list[tuple[str, str]]] = {ACCOUNT: [], "plain": []}
    for e in events(rd, settings):
        by_account[e["account"]].append((e["user"], e["reason"]))
    expected = [
        ("A", "round_robin"),
        ("C", "round_robin"),
        ("D", "round_robin"),
        ("A", "owner"),
        ("A", "round_robin"),
        ("C", "round_robin"),
        ("C", "owner"),
    ]
    assert by_account == {ACCOUNT: expected, "plain": expected}
    assert rd.get(keys.cursor(ACCOUNT, NUMBER)) == rd.get(keys.cursor("plain", NUMBER))
    assert dead(rd, settings) == []


# What the command line shows.


def test_conversation_show_json_for_none_open_and_closed(
    rd: Any, rb: Any, settings: Settings, rota: Cli
) -> None:
    rota("number", "set", ACCOUNT, NUMBER, "--members", "alice", "--no-online-only")
    none: dict[str, Any] = {
        "user": None,
        "state": "none",
        "replied": False,
        "reply_deadline": None,
        "tried": [],
    }
    assert json.loads(rota("conversation", "show", ACCOUNT, NUMBER, C1)) == none

    rota("send", "--account", ACCOUNT, NUMBER, C1, "--message-id", "wamid.1")
    burst(rb, settings)
    assert json.loads(rota("conversation", "show", ACCOUNT, NUMBER, C1)) == {
        **none,
        "user": "alice",
        "state": "open",
        "tried": ["alice"],
    }

    rota("conversation", "close", ACCOUNT, NUMBER, C1)
    burst(rb, settings)
    assert json.loads(rota("conversation", "show", ACCOUNT, NUMBER, C1)) == {
        **none,
        "user": "alice",
        "state": "closed",
    }


def test_conversation_transfer_through_the_rota_command(
    rd: Any, rb: Any, settings: Settings, target: Target
) -> None:
    """As operators run it: a subprocess for each command."""
    given_number(rd, ["alice", "bob"], online_only=False)
    assert decided(rd, rb, settings, C1) == [("alice", "round_robin")]

    result = run_rota(target.url, "conversation", "transfer", ACCOUNT, NUMBER, C1, "bob")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    burst(rb, settings)

    [transferred] = [e for e in events(rd, settings) if e["reason"] == "transfer"]
    assert (transferred["user"], transferred["previous"]) == ("bob", "alice")
    show = run_rota(target.url, "conversation", "show", ACCOUNT, NUMBER, C1)
    assert (show.returncode, json.loads(show.stdout)["user"]) == (0, "bob")


def test_number_show_open_and_at_capacity_after_real_decisions(
    rd: Any, rb: Any, settings: Settings, rota: Cli
) -> None:
    rota("number", "set", ACCOUNT, NUMBER, "--members", "alice,bob", "--capacity", "1")
    given_presence(rd, alice="available", bob="available")
    assert decided(rd, rb, settings, C1) == [("alice", "round_robin")]

    number = json.loads(rota("number", "show", ACCOUNT, NUMBER))
    assert (number["open"], number["at_capacity"]) == ({"alice": 1}, ["alice"])
    assert number["eligible_now"] == ["bob"]
    assert number["next"] == {"user": "bob", "reason": "round_robin"}

    assert decided(rd, rb, settings, C2) == [("bob", "round_robin")]
    number = json.loads(rota("number", "show", ACCOUNT, NUMBER))
    assert (number["open"], number["at_capacity"]) == ({"alice": 1, "bob": 1}, ["alice", "bob"])
    assert number["eligible_now"] == []

    rota("conversation", "close", ACCOUNT, NUMBER, C1)
    burst(rb, settings)
    number = json.loads(rota("number", "show", ACCOUNT, NUMBER))
    assert (number["open"], number["at_capacity"]) == ({"bob": 1}, ["bob"])
    assert number["next"] == {"user": "alice", "reason": "round_robin"}
