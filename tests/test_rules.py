"""The contract's decision, rules 1-5, through the real decide.lua (worker and Assigner)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ON_SINGLE_AND_CLUSTER
from tests.helpers import (
    ACCOUNT,
    NUMBER,
    dead,
    events,
    given_number,
    given_presence,
    run_burst,
    send,
)
from worker import admin, keys
from worker.assign import Assigner, Decision
from worker.clock import local_ms as now_ms
from worker.connection import transport
from worker.messages import Message, parse
from worker.scripts import Scripts
from worker.settings import Settings

pytestmark = ON_SINGLE_AND_CLUSTER  # every rule, on one redis-server and on a 3-master cluster

CUSTOMER, OTHER = "447700900001", "447700900002"
NOW = now_ms()  # the dedup keys expire relative to the server's clock


def decided(
    rd: Any, rb: Any, settings: Settings, *customers: str, **fields: str
) -> list[tuple[str, str]]:
    """Sends one message per customer, runs a worker until drained: (user, reason) of each."""
    start = len(events(rd, settings))
    for customer in customers:
        send(rd, settings, customer, **fields)
    assert run_burst(rb, settings) == 0
    return [(e["user"], e["reason"]) for e in events(rd, settings)[start:]]


def cursor(rd: Any, number: str = NUMBER) -> str | None:
    value: str | None = rd.get(keys.cursor(ACCOUNT, number))
    return value


def owners(rd: Any, number: str = NUMBER) -> dict[str, str]:
    found: dict[str, str] = rd.hgetall(keys.owners(ACCOUNT, number))
    return found


def message(customer: str, message_id: str, inbound_id: str = "1-0") -> Message:
    return Message(inbound_id, ACCOUNT, NUMBER, customer, message_id)


# Rule 1: a returning customer keeps an owner who may still use the number.


@pytest.mark.parametrize("status", ["available", "unavailable", "away", "in_break", None])
def test_returning_customer_keeps_owner_whatever_owner_status(
    rd: Any, rb: Any, settings: Settings, status: str | None
) -> None:
    given_number(rd, ["alice", "bob"])
    given_presence(rd, bob="available")
    if status is not None:
        given_presence(rd, alice=status)
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "alice")

    assert decided(rd, rb, settings, CUSTOMER) == [("alice", "owner")]
    assert cursor(rd) is None  # the rotation did not move


def test_returning_customer_keeps_owner_who_is_not_a_member_when_access_empty(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], access=[])
    given_presence(rd, alice="available", bob="available")
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "zed")

    assert decided(rd, rb, settings, CUSTOMER) == [("zed", "owner")]
    assert cursor(rd) is None


def test_returning_customer_keeps_owner_in_access_through_a_group(
    rd: Any, rb: Any, settings: Settings
) -> None:
    admin.set_group(rd, ACCOUNT, "support", ["carol", "dave"])
    given_number(rd, ["bob"], access=["bob", "group:support"])
    given_presence(rd, bob="available")
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "dave")

    assert decided(rd, rb, settings, CUSTOMER) == [("dave", "owner")]


def test_owner_who_lost_access_is_not_kept_and_customer_goes_to_round_robin(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], access=["bob"])
    given_presence(rd, alice="available", bob="available")
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "alice")

    assert decided(rd, rb, settings, CUSTOMER) == [("bob", "round_robin")]
    assert owners(rd) == {CUSTOMER: "bob"}
    assert cursor(rd) == "1"


def test_owner_who_left_the_access_group_is_not_kept(rd: Any, rb: Any, settings: Settings) -> None:
    admin.set_group(rd, ACCOUNT, "sales", ["alice", "bob"])
    given_number(rd, ["group:sales"], access=["group:sales"])
    given_presence(rd, alice="available", bob="available")
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "alice")
    assert decided(rd, rb, settings, CUSTOMER) == [("alice", "owner")]

    admin.set_group(rd, ACCOUNT, "sales", ["bob"])

    assert decided(rd, rb, settings, CUSTOMER) == [("bob", "round_robin")]


@pytest.mark.parametrize("where", ["number", "account"])
def test_owner_who_lost_access_is_kept_when_owner_is_the_admin(
    rd: Any, rb: Any, settings: Settings, where: str
) -> None:
    given_number(rd, ["alice", "bob"], access=["bob"], admin="boss" if where == "number" else None)
    if where == "account":
        admin.set_account(rd, ACCOUNT, "boss")
    given_presence(rd, bob="available")
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "boss")

    assert decided(rd, rb, settings, CUSTOMER) == [("boss", "owner")]
    assert cursor(rd) is None


def test_owner_who_is_the_accounts_admin_is_not_kept_when_the_number_has_its_own_admin(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], access=["bob"], admin="night-boss")
    admin.set_account(rd, ACCOUNT, "boss")
    given_presence(rd, bob="available")
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "boss")

    assert decided(rd, rb, settings, CUSTOMER) == [("bob", "round_robin")]


def test_returning_customer_keeps_owner_when_unknown_disabled(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice"], assign_unknown=False)
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "alice")

    assert decided(rd, rb, settings, CUSTOMER) == [("alice", "owner")]


# Rule 2: assign_unknown off -> nobody, nothing written.


def test_unknown_disabled_gives_nobody_writes_no_owner_and_keeps_cursor(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], assign_unknown=False, admin="boss")
    given_presence(rd, alice="available", bob="available")
    rd.set(keys.cursor(ACCOUNT, NUMBER), 7)

    assert decided(rd, rb, settings, CUSTOMER, OTHER) == [
        ("", "unknown_disabled"),
        ("", "unknown_disabled"),
    ]
    assert owners(rd) == {}
    assert cursor(rd) == "7"


def test_owner_who_lost_access_gets_unknown_disabled_and_keeps_the_owner_entry(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], access=["bob"], assign_unknown=False)
    given_presence(rd, bob="available")
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "alice")

    assert decided(rd, rb, settings, CUSTOMER) == [("", "unknown_disabled")]
    assert owners(rd) == {CUSTOMER: "alice"}
    assert cursor(rd) is None


# L: groups expanded in place, duplicates dropped, access filtering.


def test_groups_expand_in_place_in_the_groups_order(rd: Any, rb: Any, settings: Settings) -> None:
    admin.set_group(rd, ACCOUNT, "sales", ["carol", "bob"])
    given_number(rd, ["alice", "group:sales", "dave"], online_only=False)
    customers = [f"44770090000{i}" for i in range(5)]

    users = [user for user, _ in decided(rd, rb, settings, *customers)]

    assert users == ["alice", "carol", "bob", "dave", "alice"]


def test_group_change_reaches_the_next_decision(rd: Any, rb: Any, settings: Settings) -> None:
    admin.set_group(rd, ACCOUNT, "sales", ["alice", "bob"])
    given_number(rd, ["group:sales"], online_only=False)
    assert decided(rd, rb, settings, CUSTOMER) == [("alice", "round_robin")]

    admin.set_group(rd, ACCOUNT, "sales", ["carol"])

    assert decided(rd, rb, settings, OTHER) == [("carol", "round_robin")]


def test_members_edited_by_hand_count_once_the_version_is_bumped(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice"], online_only=False)
    assert decided(rd, rb, settings, CUSTOMER) == [("alice", "round_robin")]

    rd.delete(keys.members(ACCOUNT, NUMBER))
    rd.rpush(keys.members(ACCOUNT, NUMBER), "bob")
    rd.incr(keys.version(ACCOUNT))  # as the README asks of hand edits

    assert decided(rd, rb, settings, OTHER) == [("bob", "round_robin")]


def test_duplicates_are_dropped_keeping_the_first_place(
    rd: Any, rb: Any, settings: Settings
) -> None:
    admin.set_group(rd, ACCOUNT, "sales", ["alice", "bob", "carol", "bob"])
    given_number(rd, ["bob", "group:sales", "alice", "dave", "bob"], online_only=False)
    customers = [f"44770090000{i}" for i in range(6)]

    users = [user for user, _ in decided(rd, rb, settings, *customers)]

    # L = bob, alice, carol, dave (n = 4): the cursor wraps after four chats.
    assert users == ["bob", "alice", "carol", "dave", "bob", "alice"]
    assert cursor(rd) == "6"


def test_access_drops_members_outside_it(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["alice", "bob", "carol"], access=["alice", "carol"], online_only=False)

    users = [user for user, _ in decided(rd, rb, settings, "447700900001", "447700900002")]
    more = [user for user, _ in decided(rd, rb, settings, "447700900003")]

    assert users + more == ["alice", "carol", "alice"]


def test_access_given_as_a_group_filters_members(rd: Any, rb: Any, settings: Settings) -> None:
    admin.set_group(rd, ACCOUNT, "team", ["dave", "carol", "alice"])
    given_number(rd, ["alice", "bob", "carol", "dave"], access=["group:team"], online_only=False)
    customers = [f"44770090000{i}" for i in range(4)]

    users = [user for user, _ in decided(rd, rb, settings, *customers)]

    # Access is a set: the rotation keeps the members' order, not the group's.
    assert users == ["alice", "carol", "dave", "alice"]


def test_access_mixing_users_and_groups_filters_expanded_members(
    rd: Any, rb: Any, settings: Settings
) -> None:
    admin.set_group(rd, ACCOUNT, "sales", ["bob", "carol"])
    admin.set_group(rd, ACCOUNT, "night", ["erin"])
    given_number(
        rd,
        ["group:sales", "dave", "erin", "alice"],
        access=["alice", "group:night", "carol"],
        online_only=False,
    )
    customers = [f"44770090000{i}" for i in range(4)]

    users = [user for user, _ in decided(rd, rb, settings, *customers)]

    assert users == ["carol", "erin", "alice", "carol"]


def test_access_naming_only_an_empty_group_lets_nobody_take_chats(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice"], access=["group:nobody"], admin="boss")
    given_presence(rd, alice="available")

    assert decided(rd, rb, settings, CUSTOMER) == [("boss", "admin_fallback")]


# online_only and statuses.


def test_online_only_off_rotates_over_everyone_whatever_their_status(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob", "carol", "dave"], online_only=False, admin="boss")
    given_presence(rd, alice="away", bob="unavailable", carol="in_break")  # dave: no status
    customers = [f"44770090000{i}" for i in range(5)]

    assert decided(rd, rb, settings, *customers) == [
        ("alice", "round_robin"),
        ("bob", "round_robin"),
        ("carol", "round_robin"),
        ("dave", "round_robin"),
        ("alice", "round_robin"),
    ]
    assert cursor(rd) == "5"


@pytest.mark.parametrize("written", ["Available", "AVAILABLE", "available"])
def test_status_written_by_crm_in_other_case_counts_as_available(
    rd: Any, rb: Any, settings: Settings, written: str
) -> None:
    given_number(rd, ["alice", "bob", "carol"], admin="boss")
    given_presence(rd, alice="away")
    rd.hset(keys.presence(ACCOUNT), "bob", written)  # the CRM's own HSET, not `rota presence`

    assert decided(rd, rb, settings, CUSTOMER, OTHER) == [
        ("bob", "round_robin"),
        ("bob", "round_robin"),
    ]


def test_status_other_than_available_is_not_available_in_any_case(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], admin="boss")
    rd.hset(keys.presence(ACCOUNT), mapping={"alice": "Away", "bob": "In_Break"})

    assert decided(rd, rb, settings, CUSTOMER) == [("boss", "admin_fallback")]


# Rule 3: the cursor arithmetic.


def test_round_robin_cursor_grows_by_k_plus_one(rd: Any, rb: Any, settings: Settings) -> None:
    # L = alice, bob, carol, dave, erin (n = 5); only dave (index 3) is available.
    given_number(rd, ["alice", "bob", "carol", "dave", "erin"])
    given_presence(rd, dave="available")
    rd.set(keys.cursor(ACCOUNT, NUMBER), 1)

    assert decided(rd, rb, settings, "447700900001") == [("dave", "round_robin")]
    assert cursor(rd) == "4"  # c = 1: bob, carol skipped, dave at k = 2 -> 1 + 3

    assert decided(rd, rb, settings, "447700900002") == [("dave", "round_robin")]
    assert cursor(rd) == "9"  # c = 4: erin, alice, bob, carol skipped, dave at k = 4 -> 4 + 5

    given_presence(rd, erin="available")
    assert decided(rd, rb, settings, "447700900003") == [("erin", "round_robin")]
    assert cursor(rd) == "10"  # c = 9: 9 mod 5 = 4 is erin, k = 0 -> 9 + 1


def test_round_robin_starts_at_cursor_modulo_n(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["alice", "bob", "carol"], online_only=False)
    rd.set(keys.cursor(ACCOUNT, NUMBER), 1_000_001)  # 1_000_001 mod 3 = 2

    assert decided(rd, rb, settings, CUSTOMER) == [("carol", "round_robin")]
    assert cursor(rd) == "1000002"


def test_round_robin_makes_the_user_the_customers_owner(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"])
    given_presence(rd, alice="available", bob="available")

    assert decided(rd, rb, settings, CUSTOMER) == [("alice", "round_robin")]
    assert owners(rd) == {CUSTOMER: "alice"}
    assert decided(rd, rb, settings, CUSTOMER) == [("alice", "owner")]
    assert cursor(rd) == "1"


def test_cursor_moves_with_list_changes_without_resetting(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob", "carol"], online_only=False)
    assert decided(rd, rb, settings, "447700900001", "447700900002") == [
        ("alice", "round_robin"),
        ("bob", "round_robin"),
    ]

    given_number(rd, ["alice", "bob", "carol", "dave"])  # c = 2, n = 4 now

    assert decided(rd, rb, settings, "447700900003", "447700900004") == [
        ("carol", "round_robin"),
        ("dave", "round_robin"),
    ]
    assert cursor(rd) == "4"


# Rules 4 and 5: the admin.


def test_admin_is_the_numbers_admin_before_the_accounts(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice"], admin="night-boss")
    admin.set_account(rd, ACCOUNT, "boss")

    assert decided(rd, rb, settings, CUSTOMER) == [("night-boss", "admin_fallback")]


def test_admin_is_the_accounts_admin_when_the_number_has_none(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice"])
    admin.set_account(rd, ACCOUNT, "boss")

    assert decided(rd, rb, settings, CUSTOMER) == [("boss", "admin_fallback")]


def test_admin_is_the_accounts_admin_when_the_numbers_admin_is_empty(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice"])
    rd.hset(keys.number(ACCOUNT, NUMBER), "admin", "")
    admin.set_account(rd, ACCOUNT, "boss")

    assert decided(rd, rb, settings, CUSTOMER) == [("boss", "admin_fallback")]


def test_admin_of_another_account_is_not_used(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["alice"])
    admin.set_account(rd, "other", "boss")

    assert decided(rd, rb, settings, CUSTOMER) == [("", "no_admin")]


def test_admin_fallback_makes_the_admin_the_owner(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["alice", "bob"], access=["alice", "bob"])
    admin.set_account(rd, ACCOUNT, "boss")
    given_presence(rd, alice="away", bob="in_break")

    assert decided(rd, rb, settings, CUSTOMER) == [("boss", "admin_fallback")]
    assert owners(rd) == {CUSTOMER: "boss"}
    assert cursor(rd) is None

    given_presence(rd, alice="available")
    assert decided(rd, rb, settings, CUSTOMER) == [("boss", "owner")]  # admin: kept, no access
    assert decided(rd, rb, settings, OTHER) == [("alice", "round_robin")]


def test_no_admin_gives_nobody_and_writes_nothing(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["alice", "bob"])
    given_presence(rd, alice="away")

    assert decided(rd, rb, settings, CUSTOMER) == [("", "no_admin")]
    assert owners(rd) == {}
    assert cursor(rd) is None

    given_presence(rd, bob="available")
    assert decided(rd, rb, settings, CUSTOMER) == [("bob", "round_robin")]


def test_no_members_and_no_admin_gives_nobody(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, [], online_only=False)

    assert decided(rd, rb, settings, CUSTOMER) == [("", "no_admin")]
    assert cursor(rd) is None


# Numbers without settings.


def test_unknown_number_is_dead_lettered(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["alice"], online_only=False)
    inbound_id = send(rd, settings, CUSTOMER, number="15550009999", message_id="wamid.1")

    assert run_burst(rb, settings) == 0

    assert events(rd, settings) == []
    assert dead(rd, settings) == [
        {
            "account": ACCOUNT,
            "number": "15550009999",
            "from": CUSTOMER,
            "message_id": "wamid.1",
            "error": "unknown_number",
            "detail": f"no settings for account {ACCOUNT} number 15550009999",
            "inbound_id": inbound_id,
            "deliveries": "1",
        }
    ]
    assert rd.xpending(settings.inbound_stream, settings.group)["pending"] == 0


def test_number_with_members_but_no_settings_hash_is_unknown(
    rd: Any, rb: Any, settings: Settings
) -> None:
    rd.rpush(keys.members(ACCOUNT, NUMBER), "alice")
    given_presence(rd, alice="available")

    assert decided(rd, rb, settings, CUSTOMER) == []
    assert [d["error"] for d in dead(rd, settings)] == ["unknown_number"]
    assert owners(rd) == {}
    assert cursor(rd) is None


def test_number_of_another_account_is_unknown(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["alice"], account="other", online_only=False)

    assert decided(rd, rb, settings, CUSTOMER) == []
    assert [d["error"] for d in dead(rd, settings)] == ["unknown_number"]


# One message, one decision.


def test_repeated_message_id_gets_one_decision_even_if_presence_changed(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], access=["alice", "bob"])
    given_presence(rd, alice="available", bob="available")
    first = send(rd, settings, CUSTOMER, message_id="wamid.1")
    second = send(rd, settings, CUSTOMER, message_id="wamid.1")  # delivered twice, one batch
    assert run_burst(rb, settings) == 0

    # Decided again now, the chat would go to its owner alice, or to bob without her access.
    given_presence(rd, alice="unavailable")
    given_number(rd, ["alice", "bob"], access=["bob"])
    third = send(rd, settings, CUSTOMER, message_id="wamid.1")
    assert run_burst(rb, settings) == 0

    published = events(rd, settings)
    assert [e["inbound_id"] for e in published] == [first, second, third]
    assert all(e["user"] == "alice" and e["reason"] == "round_robin" for e in published)
    same = [{k: v for k, v in e.items() if k != "inbound_id"} for e in published]
    assert same == [same[0]] * 3
    assert cursor(rd) == "1"
    assert owners(rd) == {CUSTOMER: "alice"}


def test_repeated_message_id_repeats_nobody_decisions_too(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice"])
    assert decided(rd, rb, settings, CUSTOMER, message_id="wamid.1") == [("", "no_admin")]

    given_presence(rd, alice="available")

    assert decided(rd, rb, settings, CUSTOMER, message_id="wamid.1") == [("", "no_admin")]
    assert decided(rd, rb, settings, CUSTOMER, message_id="wamid.2") == [("alice", "round_robin")]


def test_same_message_id_on_another_number_is_another_message(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], online_only=False)
    given_number(rd, ["carol", "dave"], number="15550002000", online_only=False)

    assert decided(rd, rb, settings, CUSTOMER, message_id="wamid.1") == [("alice", "round_robin")]
    assert decided(rd, rb, settings, CUSTOMER, message_id="wamid.1", number="15550002000") == [
        ("carol", "round_robin")
    ]
    assert decided(rd, rb, settings, OTHER, message_id="wamid.2") == [("bob", "round_robin")]
    assert cursor(rd) == "2"
    assert cursor(rd, "15550002000") == "1"


def test_repeated_message_id_through_the_assigner_returns_the_first_decision(
    rd: Any, rb: Any
) -> None:
    given_number(rd, ["alice", "bob"], online_only=False)
    assigner = Assigner(Scripts(rb), dedup_window_s=86_400)

    first = assigner.decide(transport(rb), [message(CUSTOMER, "wamid.1", "1-0")], NOW)
    admin.set_number(rd, ACCOUNT, NUMBER, members=["bob"])
    again = assigner.decide(transport(rb), [message(CUSTOMER, "wamid.1", "2-0")], NOW + 5_000)

    assert first == again == [Decision("alice", "round_robin", NOW)]
    assert rb.get(keys.cursor(ACCOUNT, NUMBER)) == b"1"


def test_message_without_message_id_is_identified_by_its_inbound_id(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], online_only=False)
    first = send(rd, settings, CUSTOMER)
    second = send(rd, settings, OTHER)
    assert run_burst(rb, settings) == 0

    published = events(rd, settings)
    assert [(e["message_id"], e["inbound_id"]) for e in published] == [
        (first, first),
        (second, second),
    ]
    assert [e["user"] for e in published] == ["alice", "bob"]


def test_redelivered_entry_without_message_id_gets_its_first_decision(rd: Any, rb: Any) -> None:
    given_number(rd, ["alice", "bob"], online_only=False)
    assigner = Assigner(Scripts(rb), dedup_window_s=86_400)
    entry = {b"account": ACCOUNT.encode(), b"number": NUMBER.encode(), b"from": CUSTOMER.encode()}
    parsed = parse("1700000000000-0", entry, 65_536)
    assert isinstance(parsed, Message)
    first = assigner.decide(transport(rb), [parsed], NOW)
    rd.hdel(keys.owners(ACCOUNT, NUMBER), CUSTOMER)  # a re-decision would now pick bob
    again = assigner.decide(transport(rb), [parsed], NOW + 1)
    other = parse("1700000000001-0", entry, 65_536)
    assert isinstance(other, Message)
    fresh = assigner.decide(transport(rb), [other], NOW + 2)

    assert first == again == [Decision("alice", "round_robin", NOW)]
    assert fresh == [Decision("bob", "round_robin", NOW + 2)]
    assert rb.get(keys.cursor(ACCOUNT, NUMBER)) == b"2"


# The worker remembers each number's groups; a group named later is still expanded.


def test_group_added_to_members_after_groups_were_cached_is_expanded(rd: Any, rb: Any) -> None:
    given_number(rd, ["alice"], online_only=False)
    assigner = Assigner(Scripts(rb), dedup_window_s=86_400)
    assert assigner.decide(transport(rb), [message("447700900001", "m1")], NOW) == [
        Decision("alice", "round_robin", NOW)
    ]

    admin.set_group(rd, ACCOUNT, "sales", ["bob", "carol"])
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice", "group:sales"])
    outcomes = assigner.decide(
        transport(rb), [message("447700900002", "m2"), message("447700900003", "m3")], NOW
    )

    assert outcomes == [Decision("bob", "round_robin", NOW), Decision("carol", "round_robin", NOW)]
    assert rb.get(keys.cursor(ACCOUNT, NUMBER)) == b"3"


def test_group_replacing_a_cached_group_in_members_is_expanded(rd: Any, rb: Any) -> None:
    admin.set_group(rd, ACCOUNT, "day", ["alice"])
    admin.set_group(rd, ACCOUNT, "night", ["bob"])
    given_number(rd, ["group:day"], online_only=False)
    assigner = Assigner(Scripts(rb), dedup_window_s=86_400)
    assert assigner.decide(transport(rb), [message("447700900001", "m1")], NOW) == [
        Decision("alice", "round_robin", NOW)
    ]

    admin.set_number(rd, ACCOUNT, NUMBER, members=["group:night"])

    assert assigner.decide(transport(rb), [message("447700900002", "m2")], NOW) == [
        Decision("bob", "round_robin", NOW)
    ]


def test_group_added_to_access_after_groups_were_cached_is_expanded(rd: Any, rb: Any) -> None:
    given_number(rd, ["alice", "bob"], online_only=False)
    admin.set_owner(rd, ACCOUNT, NUMBER, CUSTOMER, "alice")
    assigner = Assigner(Scripts(rb), dedup_window_s=86_400)
    assert assigner.decide(transport(rb), [message(CUSTOMER, "m1")], NOW) == [
        Decision("alice", "owner", NOW)
    ]

    admin.set_group(rd, ACCOUNT, "team", ["bob"])
    admin.set_number(rd, ACCOUNT, NUMBER, access=["group:team"])

    # alice left access with the new group: no longer kept; L = bob.
    assert assigner.decide(transport(rb), [message(CUSTOMER, "m2")], NOW) == [
        Decision("bob", "round_robin", NOW)
    ]
