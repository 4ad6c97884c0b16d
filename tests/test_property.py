"""decide.lua against worker.rules: random numbers, random steps, the same decisions throughout."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from worker import admin, keys, rules
from worker.assign import Assigner, Decision
from worker.clock import local_ms as now_ms
from worker.connection import transport
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


def given_number_state(
    rd: Any, number: dict[str, Any], number_id: str = NUMBER
) -> rules.NumberState:
    for name, group_users in number["groups"].items():
        admin.set_group(rd, ACCOUNT, name, group_users)
    number_admin = {"number": "night-boss", "both": "night-boss"}.get(number["admin"])
    if number["admin"] in ("account", "both"):
        admin.set_account(rd, ACCOUNT, "boss")
    admin.set_number(
        rd,
        ACCOUNT,
        number_id,
        members=number["members"],
        access=number["access"],
        assign_unknown=number["assign_unknown"],
        online_only=number["online_only"],
        admin=number_admin,
    )
    if number["cursor"]:
        rd.set(keys.cursor(ACCOUNT, number_id), number["cursor"])
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


def stored_cursor(rd: Any, number_id: str = NUMBER) -> int:
    return int(rd.get(keys.cursor(ACCOUNT, number_id)) or 0)


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
            assert assigner.decide(transport(rb), [message], now + step_no) == [first], step_no
            event("repeat")
            assert stored_cursor(rd) == cursor_before == state.cursor
        elif kind == "message":
            (customer,) = args
            message = Message(f"{step_no}-0", ACCOUNT, NUMBER, customer, f"m{next(message_ids)}")
            expected = rules.decide(state, customer)
            event(f"reason {expected.reason}")
            rules.apply(state, customer, expected)

            (outcome,) = assigner.decide(transport(rb), [message], now + step_no)

            assert isinstance(outcome, Decision), outcome
            assert (outcome.user, outcome.reason) == (expected.user, expected.reason), step_no
            assert outcome.at == now + step_no
            assert stored_cursor(rd) == state.cursor, step_no
            stored_owner = rd.hget(keys.owners(ACCOUNT, NUMBER), customer)
            assert stored_owner == state.owners.get(customer), step_no
            sent.append((message, outcome))


# --- Batches: one script call per number decides every message the batch holds for it ---------

OTHER_NUMBER = "15550002000"
NUMBERS = [NUMBER, OTHER_NUMBER]
# A batch entry: a new message of a customer on a number, or a message sent before again
# (an index into what was sent, maybe earlier in the same batch).
batch_entries = st.one_of(
    st.tuples(st.just("new"), st.sampled_from(NUMBERS), st.sampled_from(CUSTOMERS)),
    st.tuples(st.just("again"), st.integers(0, 40)),
)
BATCH_STEPS = {
    **{kind: STEPS[kind] for kind in ("presence", "members", "group")},
    "owner": st.tuples(
        st.just("owner"),
        st.sampled_from(NUMBERS),
        st.sampled_from(CUSTOMERS),
        st.sampled_from(USERS + ADMINS),
    ),
    "batch": st.tuples(st.just("batch"), st.lists(batch_entries, min_size=1, max_size=12)),
}
BATCH_KINDS = ["batch"] * 4 + ["presence"] * 2 + ["owner", "members", "group"]
batch_steps = st.lists(
    st.sampled_from(BATCH_KINDS).flatmap(BATCH_STEPS.__getitem__), min_size=2, max_size=12
)


def model_batch(
    states: dict[str, rules.NumberState],
    entries: list[tuple[Any, ...]],
    sent: list[tuple[Message, Decision]],
    step_no: int,
    now: int,
) -> list[tuple[Message, Decision]]:
    """The batch's messages and the decision each must get, by the model, in batch order."""
    batch: list[tuple[Message, Decision]] = []
    for entry_no, entry in enumerate(entries):
        if entry[0] == "again" and sent + batch:
            message, first = (sent + batch)[entry[1] % len(sent + batch)]
            batch.append((message, Decision(first.user, first.reason, first.at, new=False)))
            continue
        if entry[0] == "again":
            continue
        _, number_id, customer = entry
        message_id = f"b{step_no}.{entry_no}"
        message = Message(f"{step_no}-{entry_no}", ACCOUNT, number_id, customer, message_id)
        state = states[number_id]
        expected = rules.decide(state, customer)
        rules.apply(state, customer, expected)
        event(f"batch reason {expected.reason}")
        batch.append((message, Decision(expected.user, expected.reason, now)))
    return batch


@settings(
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(first=numbers(), second=numbers(), steps=batch_steps)
def test_batches_over_two_numbers_decide_as_the_rules_model_message_by_message(
    rd: Any, rb: Any, first: dict[str, Any], second: dict[str, Any], steps: list[tuple[Any, ...]]
) -> None:
    rb.flushdb()
    # The account's groups and presence are the first number's: both numbers share them.
    second = {**second, "groups": first["groups"], "presence": first["presence"]}
    # The account's admin is there for both numbers, or for neither.
    with_account = first["admin"] in ("account", "both")
    has_own = second["admin"] in ("number", "both")
    second["admin"] = {
        (True, True): "both", (True, False): "account",
        (False, True): "number", (False, False): "none",
    }[(with_account, has_own)]  # fmt: skip
    states = {
        NUMBER: given_number_state(rd, first, NUMBER),
        OTHER_NUMBER: given_number_state(rd, second, OTHER_NUMBER),
    }
    assigner = Assigner(Scripts(rb), dedup_window_s=86_400)
    link = transport(rb)
    sent: list[tuple[Message, Decision]] = []
    now = now_ms()

    for step_no, step in enumerate(steps):
        kind, *args = step
        if kind == "presence":
            for state in states.values():
                set_presence(rd, state, *args)
        elif kind == "owner":
            number_id, customer, user = args
            admin.set_owner(rd, ACCOUNT, number_id, customer, user)
            states[number_id].owners[customer] = user
        elif kind == "members":
            admin.set_number(rd, ACCOUNT, NUMBER, members=args[0])
            states[NUMBER].members = list(args[0])
        elif kind == "group":
            name, group_users = args
            admin.set_group(rd, ACCOUNT, name, group_users)
            for state in states.values():
                state.groups[name] = list(group_users)
        elif kind == "batch":
            batch = model_batch(states, args[0], sent, step_no, now + step_no)
            outcomes = assigner.decide(link, [m for m, _ in batch], now + step_no)

            assert outcomes == [d for _, d in batch], step_no
            assert [getattr(o, "new", None) for o in outcomes] == [d.new for _, d in batch]
            for number_id, state in states.items():
                assert stored_cursor(rd, number_id) == state.cursor, (step_no, number_id)
                stored = rd.hgetall(keys.owners(ACCOUNT, number_id))
                assert stored == state.owners, (step_no, number_id)
            sent.extend((m, d) for m, d in batch if d.new)
    link.close()


# --- Long rotations: a walk past 64 places reads all of L once and searches it ------------


@st.composite
def night_shifts(draw: Any) -> dict[str, Any]:
    size = draw(st.integers(1, 160))
    members = [f"u{i}" for i in range(size)]
    return {
        "members": members,
        "available": draw(st.sets(st.sampled_from(members), max_size=4)),
        "cursor": draw(st.integers(0, 400)),
        "online_only": draw(st.sampled_from([True, True, True, False])),
        "admin": draw(st.booleans()),
    }


night_steps = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), st.lists(st.integers(0, 60), min_size=1, max_size=40)),
        st.tuples(st.just("presence"), st.integers(0, 159), st.sampled_from(["available", "away"])),
        st.tuples(st.just("members"), st.integers(1, 160)),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    deadline=None,
    max_examples=80,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(shift=night_shifts(), steps=night_steps)
def test_long_rotations_with_few_available_decide_as_the_rules_model(
    rd: Any, rb: Any, shift: dict[str, Any], steps: list[tuple[Any, ...]]
) -> None:
    rb.flushdb()
    admin_user = "boss" if shift["admin"] else None
    admin.set_number(
        rd, ACCOUNT, NUMBER, members=shift["members"], online_only=shift["online_only"],
        admin=admin_user,
    )  # fmt: skip
    rd.set(keys.cursor(ACCOUNT, NUMBER), shift["cursor"])
    state = rules.NumberState(
        members=list(shift["members"]), online_only=shift["online_only"], admin=admin_user,
        cursor=shift["cursor"],
    )  # fmt: skip
    for user in shift["available"]:
        set_presence(rd, state, user, "available")
    assigner, link, now = Assigner(Scripts(rb), dedup_window_s=86_400), transport(rb), now_ms()
    for step_no, step in enumerate(steps):
        if step[0] == "presence":
            set_presence(rd, state, f"u{step[1]}", step[2])
        elif step[0] == "members":
            members = [f"u{i}" for i in range(step[1])]
            admin.set_number(rd, ACCOUNT, NUMBER, members=members)
            state.members = members
        else:
            customers = [f"4477009{c:05d}" for c in step[1]]
            expected = []
            for customer in customers:
                choice = rules.decide(state, customer)
                rules.apply(state, customer, choice)
                event(f"night reason {choice.reason}")
                expected.append(Decision(choice.user, choice.reason, now))
            batch = [
                Message(f"{step_no}-{i}", ACCOUNT, NUMBER, c, f"n{step_no}.{i}")
                for i, c in enumerate(customers)
            ]
            assert assigner.decide(link, batch, now) == expected, step_no
            assert stored_cursor(rd) == state.cursor, step_no
            assert rd.hgetall(keys.owners(ACCOUNT, NUMBER)) == state.owners, step_no
    link.close()


# --- Conversations: capacity, presence TTL, owner_online_only, the CRM's activity ---------

CONVERSATION_USERS = ["ann", "bob", "cy"]
# Enough customers that rule 3 comes round to users at capacity again and again.
MANY_CUSTOMERS = [f"4477009000{i:02d}" for i in range(6)]
customers = st.sampled_from(MANY_CUSTOMERS)
CONVERSATION_ENTRIES = {
    "message": st.tuples(st.just("message"), st.sampled_from(NUMBERS), customers),
    "closed": st.tuples(st.just("closed"), st.sampled_from(NUMBERS), customers),
    "transfer": st.tuples(
        st.just("transfer"),
        st.sampled_from(NUMBERS),
        customers,
        st.sampled_from([*CONVERSATION_USERS, "dee"]),
    ),
    "replied": st.tuples(
        st.just("replied"), st.sampled_from(NUMBERS), customers, st.sampled_from(CONVERSATION_USERS)
    ),
    "heartbeat": st.tuples(st.just("heartbeat"), st.sampled_from(CONVERSATION_USERS)),
    "again": st.tuples(st.just("again"), st.integers(0, 60)),
}
# Mostly messages, so that rule 3 meets users at capacity, unheard and back again.
CONVERSATION_KINDS = ["message"] * 6 + ["closed", "transfer", "replied", "heartbeat"] * 2
conversation_entries = st.sampled_from([*CONVERSATION_KINDS, "again"]).flatmap(
    CONVERSATION_ENTRIES.__getitem__
)
conversation_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("batch"),
            st.lists(st.tuples(conversation_entries, st.integers(0, 2_500)), max_size=16),
        ),
        st.tuples(st.just("clock"), st.integers(0, 3_000)),
        st.tuples(st.just("presence"), st.sampled_from(CONVERSATION_USERS), statuses),
    ),
    min_size=1,
    max_size=10,
)


def conversation_entry(
    states: dict[str, rules.NumberState], entry: tuple[Any, ...], now: int, sent: int
) -> tuple[str, str, str, str]:
    """What the model decides for one activity or message: user, reason, previous, kind."""
    kind = entry[0]
    if kind == "heartbeat":
        rules.heard(states[NUMBER], entry[1], sent)  # the numbers share one heard dict
        return "", "heartbeat", "", kind
    state, customer = states[entry[1]], entry[2]
    state.now_ms = now
    if kind == "message":
        choice = rules.decide(state, customer)
        rules.apply(state, customer, choice)
        return choice.user, choice.reason, "", kind
    if kind == "closed":
        rules.close(state, customer)
        return "", "closed", "", kind
    if kind == "transfer":
        previous, _ = rules.transfer(state, customer, entry[3])
        return entry[3], "transfer", previous, kind
    rules.replied(state, customer, entry[3], sent)
    return "", "replied", "", kind


def as_message(entry: tuple[Any, ...], inbound_id: str, message_id: str) -> Message:
    kind = entry[0]
    if kind == "heartbeat":
        return Message(inbound_id, ACCOUNT, "", "", message_id, kind, entry[1])
    user = entry[3] if kind in ("transfer", "replied") else ""
    return Message(inbound_id, ACCOUNT, entry[1], entry[2], message_id, kind, user)


@settings(
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    first=st.fixed_dictionaries(
        {
            "groups": st.just({"g1": ["bob"]}),
            "members": st.permutations(["ann", "bob", "cy", "dee"]).map(lambda u: u[:3]),
            "access": st.just([]),
            "assign_unknown": st.just(True),
            "admin": st.sampled_from(["none", "number", "account"]),
            "presence": st.dictionaries(st.sampled_from(CONVERSATION_USERS), statuses),
            "cursor": st.integers(0, 5),
        }
    ),
    capacity=st.sampled_from([0, 0, 1, 2, 3]),
    owner_online_only=st.booleans(),
    ttl_s=st.sampled_from([0, 1, 2, 3]),
    online_only=st.sampled_from([True, True, True, False]),
    steps=conversation_steps,
)
def test_conversations_decide_as_the_rules_model(
    rd: Any,
    rb: Any,
    first: dict[str, Any],
    capacity: int,
    owner_online_only: bool,
    ttl_s: int,
    online_only: bool,
    steps: list[tuple[Any, ...]],
) -> None:
    rb.flushdb()
    first = {**first, "online_only": online_only}
    shared_heard: dict[str, int] = {}
    states = {}
    for number_id in NUMBERS:
        state = given_number_state(rd, first, number_id)
        rd.hset(keys.number(ACCOUNT, number_id), "capacity", capacity)
        rd.hset(keys.number(ACCOUNT, number_id), "owner_online_only", int(owner_online_only))
        state.capacity, state.owner_online_only = capacity, owner_online_only
        state.presence_ttl_ms, state.heard = ttl_s * 1000, shared_heard
        states[number_id] = state
    states[OTHER_NUMBER].presence = states[NUMBER].presence  # one account, one presence
    rd.hset(keys.account_settings(ACCOUNT), "presence_ttl_s", ttl_s)
    assigner, link = Assigner(Scripts(rb), dedup_window_s=86_400), transport(rb)
    now, events_seen = 1_800_000_000_000, 0
    sent_before: list[tuple[Message, Decision]] = []
    for step_no, step in enumerate(steps):
        if step[0] == "clock":
            now += step[1]
            continue
        if step[0] == "presence":
            set_presence(rd, states[NUMBER], step[1], step[2])
            continue
        batch: list[tuple[Message, Decision]] = []
        for entry_no, (entry, ago) in enumerate(step[1]):
            if entry[0] == "again":
                if sent_before:
                    message, decided = sent_before[entry[1] % len(sent_before)]
                    batch.append((message, dataclasses.replace(decided, new=False)))
                continue
            sent = now - ago
            message = as_message(
                entry, f"{sent}-{step_no * 100 + entry_no}", f"c{step_no}.{entry_no}"
            )
            user, reason, previous, kind = conversation_entry(states, entry, now, sent)
            event_id = ""
            if kind == "transfer":
                events_seen += 1
                event_id = f"{ACCOUNT}:{events_seen}"
            event(f"conversation {reason}")
            batch.append((message, Decision(user, reason, now, True, previous, event_id)))
        outcomes = assigner.decide(link, [m for m, _ in batch], now)

        assert outcomes == [d for _, d in batch], step_no
        assert [(o.previous, o.event_id, o.new) for o in outcomes if isinstance(o, Decision)] == [
            (d.previous, d.event_id, d.new) for _, d in batch
        ], step_no
        for number_id, state in states.items():
            assert stored_cursor(rd, number_id) == state.cursor, (step_no, number_id)
            assert rd.hgetall(keys.owners(ACCOUNT, number_id)) == state.owners, step_no
            assert rd.hgetall(keys.open_conversations(ACCOUNT, number_id)) == state.open, step_no
            stored_load = {
                u: int(n) for u, n in rd.hgetall(keys.open_counts(ACCOUNT, number_id)).items()
            }
            assert {u: n for u, n in stored_load.items() if n} == {
                u: n for u, n in state.load.items() if n
            }, step_no
            assert set(rd.hkeys(keys.replied(ACCOUNT, number_id))) == state.replied, step_no
        assert {u: int(t) for u, t in rd.hgetall(keys.heard(ACCOUNT)).items()} == shared_heard
        sent_before.extend((m, d) for m, d in batch if d.new)
    link.close()
