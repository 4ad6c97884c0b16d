"""assign.lua against worker.rules: random numbers, random steps, the same decisions throughout."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from worker import admin, keys, rules
from worker.assign import Assigner, Decision
from worker.clock import local_ms as now_ms
from worker.messages import Message
from worker.scripts import Scripts

ACCOUNT, NUMBER = "acme", "15550001000"
USERS = ["ann", "bob", "cy", "dee", "eve"]
ADMINS = ["boss", "night-boss"]
CUSTOMERS = ["447700900001", "447700900002", "447700900003", "447700900004"]
# What a CRM may HSET, padded and in any case; None: no status at all. The long ones are no
# status: padded past the longest a status may be, or the right word in a wrong place.
STATUSES = [
    "available", "Available", "AVAILABLE", "unavailable", "away", "in_break", None,
    "AVAILABLE ", " available", "available\n", "\tAvailable\r\n", "\vavailable\f",
    "available\u00a0", "available\x00", "avail able", "available" + " " * 55,
    "available" + " " * 56, "x" * 1_000, "available" * 8,
]  # fmt: skip
statuses = st.sampled_from(["available"] * 8 + STATUSES)  # available: 13 in 27

users = st.sampled_from(USERS)
group_names = st.sampled_from(["g1", "g2"])
entries = st.one_of(users, group_names.map(lambda name: f"group:{name}"))


@st.composite
def numbers(draw: Any) -> dict[str, Any]:
    # Lists may name g2 when only g1 is set: a group never set is an empty list.
    n_groups = draw(st.integers(1, 2))
    return {
        "groups": {f"g{i}": draw(st.lists(users, max_size=4)) for i in range(1, n_groups + 1)},
        "members": draw(st.lists(entries, min_size=1, max_size=6)),
        "access": draw(st.one_of(st.just([]), st.lists(entries, min_size=1, max_size=3))),
        "assign_unknown": draw(st.sampled_from([True, True, True, False])),
        "online_only": draw(st.booleans()),
        "admin": draw(st.sampled_from(["none", "number", "account", "both"])),
        "presence": draw(st.dictionaries(users, statuses)),
        "cursor": draw(st.one_of(st.just(0), st.integers(0, 50))),
    }


STEPS = {
    "presence": st.tuples(st.just("presence"), users, statuses),
    "message": st.tuples(st.just("message"), st.sampled_from(CUSTOMERS)),
    "owner": st.tuples(
        st.just("owner"), st.sampled_from(CUSTOMERS), st.sampled_from(USERS + ADMINS)
    ),
    "repeat": st.tuples(st.just("repeat"), st.integers(0, 30)),
    "members": st.tuples(st.just("members"), st.lists(entries, max_size=6)),
    "group": st.tuples(st.just("group"), group_names, st.lists(users, max_size=4)),
}
# Mostly messages, so that most examples decide many times.
KINDS = ["message"] * 4 + ["presence"] * 2 + ["owner", "repeat", "members", "group"]
steps = st.lists(st.sampled_from(KINDS).flatmap(STEPS.__getitem__), min_size=3, max_size=30)


def set_presence(rd: Any, state: rules.NumberState, user: str, status: str | None) -> None:
    if status is None:
        rd.hdel(keys.presence(ACCOUNT), user)
        state.presence.pop(user, None)
    else:
        rd.hset(keys.presence(ACCOUNT), user, status)  # as the CRM writes it, case and all
        state.presence[user] = status


def given_number_state(rd: Any, number: dict[str, Any]) -> rules.NumberState:
    for name, group_users in number["groups"].items():
        admin.set_group(rd, ACCOUNT, name, group_users)
    number_admin = {"number": "night-boss", "both": "night-boss"}.get(number["admin"])
    if number["admin"] in ("account", "both"):
        admin.set_account(rd, ACCOUNT, "boss")
    admin.set_number(
        rd,
        ACCOUNT,
        NUMBER,
        members=number["members"],
        access=number["access"],
        assign_unknown=number["assign_unknown"],
        online_only=number["online_only"],
        admin=number_admin,
    )
    if number["cursor"]:
        rd.set(keys.cursor(ACCOUNT, NUMBER), number["cursor"])
    state = rules.NumberState(
        members=list(number["members"]),
        access=set(number["access"]),
        groups={name: list(group_users) for name, group_users in number["groups"].items()},
        assign_unknown=number["assign_unknown"],
        online_only=number["online_only"],
        admin={"none": None, "number": "night-boss", "account": "boss", "both": "night-boss"}[
            number["admin"]
        ],
        cursor=number["cursor"],
    )
    for user, status in number["presence"].items():
        set_presence(rd, state, user, status)
    return state


def stored_cursor(rd: Any) -> int:
    return int(rd.get(keys.cursor(ACCOUNT, NUMBER)) or 0)


@settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(number=numbers(), steps=steps)
def test_script_decides_as_the_rules_model(
    rd: Any, rb: Any, number: dict[str, Any], steps: list[tuple[Any, ...]]
) -> None:
    rb.flushdb()
    state = given_number_state(rd, number)
    assigner = Assigner(Scripts(rb), dedup_window_s=86_400)
    message_ids = itertools.count()
    sent: list[tuple[Message, Decision]] = []
    now = now_ms()

    for step_no, step in enumerate(steps):
        kind, *args = step
        if kind == "presence":
            set_presence(rd, state, *args)
        elif kind == "owner":
            customer, user = args
            admin.set_owner(rd, ACCOUNT, NUMBER, customer, user)
            state.owners[customer] = user
        elif kind == "members":
            admin.set_number(rd, ACCOUNT, NUMBER, members=args[0])
            state.members = list(args[0])
        elif kind == "group":
            name, group_users = args
            admin.set_group(rd, ACCOUNT, name, group_users)
            state.groups[name] = list(group_users)
        elif kind == "repeat" and sent:
            message, first = sent[args[0] % len(sent)]
            cursor_before = stored_cursor(rd)
            assert assigner.decide(rb, [message], now + step_no) == [first], step_no
            event("repeat")
            assert stored_cursor(rd) == cursor_before == state.cursor
        elif kind == "message":
            (customer,) = args
            message = Message(f"{step_no}-0", ACCOUNT, NUMBER, customer, f"m{next(message_ids)}")
            expected = rules.decide(state, customer)
            event(f"reason {expected.reason}")
            rules.apply(state, customer, expected)

            (outcome,) = assigner.decide(rb, [message], now + step_no)

            assert isinstance(outcome, Decision), outcome
            assert (outcome.user, outcome.reason) == (expected.user, expected.reason), step_no
            assert outcome.at == now + step_no
            assert stored_cursor(rd) == state.cursor, step_no
            stored_owner = rd.hget(keys.owners(ACCOUNT, NUMBER), customer)
            assert stored_owner == state.owners.get(customer), step_no
            sent.append((message, outcome))
