"""decide.lua against worker.rules: random numbers, random steps, the same decisions throughout."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from worker import admin, keys, rules
from worker.assign import Assigner, Decision, sent_ms
from worker.clock import local_ms as now_ms
from worker.connection import transport
from worker.messages import SWEEP, Message
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
        assert_stored_as_model(rd, states, step_no)  # no queue nor timers: empty on both sides
        assert {u: int(t) for u, t in rd.hgetall(keys.heard(ACCOUNT)).items()} == shared_heard
        sent_before.extend((m, d) for m, d in batch if d.new)
    link.close()


# --- The waiting queue and the timers, on a controlled clock (ARGV now) -------------------

HOLDER = "(holder)"  # whoever holds the conversation in the model when the entry comes
QUEUE_ENTRIES = {
    "message": st.tuples(st.just("message"), st.sampled_from(NUMBERS), customers),
    "closed": st.tuples(st.just("closed"), st.sampled_from(NUMBERS), customers),
    "transfer": st.tuples(
        st.just("transfer"),
        st.sampled_from(NUMBERS),
        customers,
        st.sampled_from([*CONVERSATION_USERS, "dee", HOLDER]),
    ),
    # Mostly the holder's reply, which stops the reply timer.
    "replied": st.tuples(
        st.just("replied"),
        st.sampled_from(NUMBERS),
        customers,
        st.sampled_from([*CONVERSATION_USERS, HOLDER, HOLDER, HOLDER]),
    ),
    "heartbeat": st.tuples(st.just("heartbeat"), st.sampled_from(CONVERSATION_USERS)),
    # A timer: mostly of a customer with a deadline, the clock moved to it ("due"); sometimes
    # one not due yet ("early"), or any customer, with a timer or not ("anyone").
    "timer": st.tuples(
        st.just("timer"),
        st.sampled_from(NUMBERS),
        st.integers(0, 20),
        st.sampled_from(["due"] * 4 + ["early", "anyone"]),
    ),
    "queue": st.tuples(st.just("queue"), st.sampled_from(NUMBERS)),
    "again": st.tuples(st.just("again"), st.integers(0, 60)),
}
QUEUE_KINDS = [
    *["message"] * 6, *["closed", "replied", "timer"] * 2, "transfer", "heartbeat", "queue",
    "again",
]  # fmt: skip
queue_entries = st.sampled_from(QUEUE_KINDS).flatmap(QUEUE_ENTRIES.__getitem__)
QUEUE_STEPS = {
    "batch": st.tuples(
        st.just("batch"),
        st.lists(st.tuples(queue_entries, st.integers(0, 2_500)), min_size=1, max_size=12),
        st.integers(0, 999),  # how far past the latest due timer the clock moves
    ),
    # What a worker's sweep sends: every timer due after the clock moved, and every queue.
    "sweep": st.tuples(st.just("sweep"), st.integers(0, 2_500)),
    "clock": st.tuples(st.just("clock"), st.integers(0, 2_500)),
    # Plain statuses (the odd ones are the tests' above): users come and go often.
    "presence": st.tuples(
        st.just("presence"),
        st.sampled_from(CONVERSATION_USERS),
        st.sampled_from(["available", "available", "available", "away", "unavailable", None]),
    ),
    "when_nobody": st.tuples(
        st.just("when_nobody"), st.sampled_from(NUMBERS), st.sampled_from(["queue", "admin"])
    ),
}
QUEUE_STEP_KINDS = ["batch"] * 4 + ["sweep", "presence"] * 2 + ["clock", "when_nobody"]
queue_steps = st.lists(
    st.sampled_from(QUEUE_STEP_KINDS).flatmap(QUEUE_STEPS.__getitem__), min_size=8, max_size=30
)
queue_numbers = st.fixed_dictionaries(
    {
        "members": st.permutations(["ann", "bob", "cy", "dee"]).map(lambda u: u[:3]),
        "online_only": st.sampled_from([True, True, True, False]),
        "cursor": st.integers(0, 5),
        "admin": st.sampled_from([None, None, "night-boss", "cy"]),  # cy: an admin in L
        "capacity": st.sampled_from([0, 1, 1, 2]),  # at capacity, everyone: the queue fills
        "owner_online_only": st.booleans(),
        "when_nobody": st.sampled_from(["queue", "queue", "admin"]),
        "queue_max_wait_s": st.sampled_from([0, 1, 2]),
        "reply_timeout_s": st.sampled_from([0, 1, 1, 2]),
    }
)

# A move as compared: number, customer, user, reason, previous, event_id, after, waited_ms.
MoveSeen = tuple[str, str, str, str, str, str, int, int | None]


def given_queue_number(
    rd: Any, number_id: str, number: dict[str, Any], account_admin: str | None
) -> rules.NumberState:
    admin.set_number(
        rd,
        ACCOUNT,
        number_id,
        members=number["members"],
        online_only=number["online_only"],
        capacity=number["capacity"],
        owner_online_only=number["owner_online_only"],
    )
    settings_ = {
        "when_nobody": number["when_nobody"],
        "queue_max_wait_s": number["queue_max_wait_s"],
        "reply_timeout_s": number["reply_timeout_s"],
        **({"admin": number["admin"]} if number["admin"] else {}),
    }
    rd.hset(keys.number(ACCOUNT, number_id), mapping=settings_)
    if number["cursor"]:
        rd.set(keys.cursor(ACCOUNT, number_id), number["cursor"])
    return rules.NumberState(
        members=list(number["members"]),
        online_only=number["online_only"],
        admin=number["admin"] or account_admin,
        cursor=number["cursor"],
        capacity=number["capacity"],
        owner_online_only=number["owner_online_only"],
        queue_when_nobody=number["when_nobody"] == "queue",
        queue_max_wait_ms=number["queue_max_wait_s"] * 1000,
        reply_timeout_ms=number["reply_timeout_s"] * 1000,
    )


def timers_at(
    states: dict[str, rules.NumberState], entries: list[tuple[Any, ...]], now: int, lag: int
) -> tuple[list[tuple[Any, ...]], int]:
    """Each timer entry with its customer, from the model's deadlines as the batch starts, and
    the batch's clock: ``lag`` ms past the latest deadline of a "due" timer, if later."""
    resolved, latest = [], None
    for entry in entries:
        if entry[0][0] != "timer":
            resolved.append(entry)
            continue
        (_, number_id, pick, mode), ago = entry
        deadlines = sorted(states[number_id].deadlines.items(), key=lambda kv: (kv[1], kv[0]))
        if mode == "anyone" or not deadlines:
            customer = MANY_CUSTOMERS[pick % len(MANY_CUSTOMERS)]
        else:
            customer, due = deadlines[pick % len(deadlines)]
            if mode == "due":
                latest = due if latest is None else max(latest, due)
        event(f"queue timer {mode}{'' if deadlines else ' (no deadline)'}")
        resolved.append((("timer", number_id, customer), ago))
    return resolved, now if latest is None else max(now, latest + lag)


def sweep_entries(states: dict[str, rules.NumberState], now: int) -> list[tuple[Any, ...]]:
    """A sweep's batch: the timers due by ``now`` in the timers zset's order (deadline, then
    member), a number's queue as its member "NUMBER" (score 0) comes first."""
    due = [
        (deadline, member) for member, deadline in model_timers(states).items() if deadline <= now
    ]
    entries: list[tuple[Any, ...]] = []
    for _, member in sorted(due):
        number_id, _, customer = member.partition(":")
        entry = ("timer", number_id, customer) if customer else ("queue", number_id)
        entries.append((entry, 0))
    event(f"queue sweep of {min(len(entries), 3)}{'+' if len(entries) > 3 else ''}")
    return entries


def call_numbers(entries: list[tuple[Message, Any]]) -> list[str]:
    """The numbers of one account's call, in order of first appearance (heartbeats have none)."""
    return list(dict.fromkeys(message.number for message, _ in entries if message.number))


def model_queue_batch(
    states: dict[str, rules.NumberState],
    entries: list[tuple[Any, ...]],
    sent_before: list[tuple[Message, Decision]],
    step_no: int,
    now: int,
    ttl_on: bool,
    events: itertools.count[int],
) -> tuple[list[tuple[Message, Decision]], list[MoveSeen]]:
    """The batch's entries with the outcome each must get, and the moves, by the model called
    exactly where decide.lua serves the queue."""
    # Every entry's message first: a heartbeat serves the queue of every number of the call,
    # one whose first entry comes after the heartbeat too. Then the model, in batch order.
    batch: list[tuple[Message, Any]] = []
    for entry_no, (entry, ago) in enumerate(entries):
        kind, sent = entry[0], now - ago
        inbound_id, message_id = f"{sent}-{step_no * 100 + entry_no}", f"q{step_no}.{entry_no}"
        if kind == "again":
            if sent_before:
                message, decided = sent_before[entry[1] % len(sent_before)]
                batch.append((message, dataclasses.replace(decided, new=False)))
        elif kind == "heartbeat":
            batch.append((Message(inbound_id, ACCOUNT, "", "", message_id, kind, entry[1]), entry))
        elif kind in SWEEP:
            customer = entry[2] if kind == "timer" else ""
            batch.append((Message("", ACCOUNT, entry[1], customer, "", kind), entry))
        else:
            _, number_id, customer = entry[:3]
            message = Message(inbound_id, ACCOUNT, number_id, customer, message_id, kind)
            batch.append((message, (*entry, sent)))
    numbers_ = call_numbers(batch)
    outcomes: list[tuple[Message, Decision]] = []
    moves: list[MoveSeen] = []
    seen_fields: set[str] = set()
    last_sent = -1  # the batch position of the last entry sent to the script

    def moved(
        number_id: str, given: list[rules.Move], after: int, waiting: dict[str, int], why: str
    ) -> None:
        for move in given:
            waited = now - waiting[move.customer] if move.customer in waiting else None
            event_id = f"{ACCOUNT}:{next(events)}"
            customer, user, reason, previous = move.customer, move.user, move.reason, move.previous
            moves.append((number_id, customer, user, reason, previous, event_id, after, waited))
            event(f"queue move {move.reason} by {why}")

    for entry_no, (message, entry) in enumerate(batch):
        if isinstance(entry, Decision):  # an entry of an earlier batch again: no change
            if message.dedup_field not in seen_fields:  # else the Assigner does not send it
                seen_fields.add(message.dedup_field)
                last_sent = entry_no
            outcomes.append((message, entry))
            continue
        kind = entry[0]
        if kind == "heartbeat":
            rules.heard(states[NUMBER], entry[1], sent_ms(message.inbound_id))
            if ttl_on:
                for number_id in numbers_:
                    waiting = dict(states[number_id].queued_at)
                    moved(number_id, rules.serve_queue(states[number_id]), entry_no, waiting, kind)
            outcomes.append((message, Decision("", kind, now)))
            last_sent = entry_no
            seen_fields.add(message.dedup_field)
            continue
        number_id = entry[1]
        state = states[number_id]
        waiting = dict(state.queued_at)
        user, reason, previous, event_id = "", kind, "", ""
        if kind == "message":
            choice, served = rules.message(state, entry[2])
            moved(number_id, served, last_sent, waiting, kind)
            user, reason = choice.user, choice.reason
        elif kind == "closed":
            moved(number_id, rules.close(state, entry[2]), entry_no, waiting, kind)
        elif kind == "transfer":
            user = entry[3] if entry[3] != HOLDER else state.open.get(entry[2], "dee")
            event_id = f"{ACCOUNT}:{next(events)}"
            previous, served = rules.transfer(state, entry[2], user)
            moved(number_id, served, entry_no, waiting, kind)
            message = dataclasses.replace(message, user=user)
        elif kind == "replied":
            replier = entry[3] if entry[3] != HOLDER else state.open.get(entry[2], "ann")
            message = dataclasses.replace(message, user=replier)
            served = rules.replied(state, entry[2], replier, entry[4])
            moved(number_id, served, entry_no, waiting, kind)
        elif kind == "timer":
            moved(number_id, rules.timer(state, entry[2]), entry_no, waiting, kind)
        else:  # queue
            moved(number_id, rules.serve_queue(state), entry_no, waiting, kind)
        event(f"queue entry {reason}")
        outcomes.append((message, Decision(user, reason, now, True, previous, event_id)))
        if kind not in SWEEP:
            seen_fields.add(message.dedup_field)
        last_sent = entry_no
    return outcomes, moves


def stored_timers(rd: Any) -> dict[str, int]:
    return {m: int(s) for m, s in rd.zrange(keys.timers(ACCOUNT), 0, -1, withscores=True)}


def model_timers(states: dict[str, rules.NumberState]) -> dict[str, int]:
    timers: dict[str, int] = {}
    for number_id, state in states.items():
        timers.update({keys.timer(number_id, c): due for c, due in state.deadlines.items()})
        if state.queue:
            timers[keys.timer(number_id)] = 0
    return timers


def assert_stored_as_model(rd: Any, states: dict[str, rules.NumberState], step_no: int) -> None:
    for number_id, state in states.items():
        where = (step_no, number_id)
        assert stored_cursor(rd, number_id) == state.cursor, where
        assert rd.hgetall(keys.owners(ACCOUNT, number_id)) == state.owners, where
        assert rd.hgetall(keys.open_conversations(ACCOUNT, number_id)) == state.open, where
        stored_load = {
            u: int(n) for u, n in rd.hgetall(keys.open_counts(ACCOUNT, number_id)).items()
        }
        assert {u: n for u, n in stored_load.items() if n} == {
            u: n for u, n in state.load.items() if n
        }, where
        assert set(rd.hkeys(keys.replied(ACCOUNT, number_id))) == state.replied, where
        assert rd.lrange(keys.queue(ACCOUNT, number_id), 0, -1) == state.queue, where
        stored_queued = {c: int(t) for c, t in rd.hgetall(keys.queued(ACCOUNT, number_id)).items()}
        assert stored_queued == state.queued_at, where
        stored_tried = {
            c: users.split(",") for c, users in rd.hgetall(keys.tried(ACCOUNT, number_id)).items()
        }
        assert stored_tried == state.tried, where
    assert stored_timers(rd) == model_timers(states), step_no


@settings(
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    first=queue_numbers,
    second=queue_numbers,
    account_admin=st.sampled_from([None, "boss"]),
    presence=st.dictionaries(st.sampled_from(CONVERSATION_USERS), statuses),
    ttl_s=st.sampled_from([0, 0, 1, 2]),
    steps=queue_steps,
)
def test_queue_and_timers_decide_as_the_rules_model_on_a_controlled_clock(
    rd: Any,
    rb: Any,
    first: dict[str, Any],
    second: dict[str, Any],
    account_admin: str | None,
    presence: dict[str, str | None],
    ttl_s: int,
    steps: list[tuple[Any, ...]],
) -> None:
    rb.flushdb()
    if account_admin:
        admin.set_account(rd, ACCOUNT, account_admin)
    rd.hset(keys.account_settings(ACCOUNT), "presence_ttl_s", ttl_s)
    states = {
        NUMBER: given_queue_number(rd, NUMBER, first, account_admin),
        OTHER_NUMBER: given_queue_number(rd, OTHER_NUMBER, second, account_admin),
    }
    shared_heard: dict[str, int] = {}
    for state in states.values():
        state.presence_ttl_ms, state.heard = ttl_s * 1000, shared_heard
    states[OTHER_NUMBER].presence = states[NUMBER].presence  # one account, one presence
    for user, status in presence.items():
        set_presence(rd, states[NUMBER], user, status)
    assigner, link = Assigner(Scripts(rb), dedup_window_s=86_400), transport(rb)
    now, events, moves_so_far = 1_800_000_000_000, itertools.count(1), 0
    sent_before: list[tuple[Message, Decision]] = []
    for step_no, step in enumerate(steps):
        if step[0] == "clock":
            now += step[1]
            continue
        if step[0] == "presence":
            set_presence(rd, states[NUMBER], step[1], step[2])
            continue
        if step[0] == "when_nobody":
            rd.hset(keys.number(ACCOUNT, step[1]), "when_nobody", step[2])
            states[step[1]].queue_when_nobody = step[2] == "queue"
            continue
        if step[0] == "sweep":
            now += step[1]
            entries = sweep_entries(states, now)
        else:
            entries, now = timers_at(states, step[1], now, step[2])
        for state in states.values():
            state.now_ms = now
        batch, expected_moves = model_queue_batch(
            states, entries, sent_before, step_no, now, ttl_s > 0, events
        )
        if not batch:  # nothing due, or only repeats with nothing sent before: no call
            continue
        decided = assigner.decide_batch(link, [m for m, _ in batch], now)

        assert decided.outcomes == [d for _, d in batch], step_no
        assert [getattr(o, "new", None) for o in decided.outcomes] == [d.new for _, d in batch]
        seen = [
            (m.number, m.customer, m.user, m.reason, m.previous, m.event_id, m.after, m.waited_ms)
            for m in decided.moves
        ]
        assert seen == expected_moves, step_no
        assert all(m.at == now for m in decided.moves), step_no
        moves_so_far += len(expected_moves)
        assert rd.xlen(keys.outbox(ACCOUNT)) == moves_so_far, step_no
        timed = bool(model_timers(states)) or moves_so_far > 0
        assert decided.timed == ({ACCOUNT} if timed else set()), step_no
        assert_stored_as_model(rd, states, step_no)
        assert {u: int(t) for u, t in rd.hgetall(keys.heard(ACCOUNT)).items()} == shared_heard
        sent_before.extend((m, d) for m, d in batch if d.new and m.kind not in SWEEP)
    link.close()


def test_a_call_of_only_the_queue_entry_serves_the_queue_from_any_cursor(rd: Any, rb: Any) -> None:
    """The shortest case the property test found: a sweep's queue entry alone in its call,
    the rotation compiled before and the cursor past place 0 (the call read no place of L)."""
    admin.set_number(rd, ACCOUNT, NUMBER, members=["ann", "bob"])
    rd.hset(keys.number(ACCOUNT, NUMBER), "when_nobody", "queue")
    rd.set(keys.cursor(ACCOUNT, NUMBER), 1)
    assigner, link, now = (
        Assigner(Scripts(rb), dedup_window_s=86_400),
        transport(rb),
        1_800_000_000_000,
    )
    customer = MANY_CUSTOMERS[0]
    waiting = assigner.decide(link, [Message(f"{now}-0", ACCOUNT, NUMBER, customer, "m0")], now)
    assert waiting == [Decision("", "queued", now)]
    rd.hset(keys.presence(ACCOUNT), "bob", "available")

    served = assigner.decide_batch(link, [Message("", ACCOUNT, NUMBER, "", "", "queue")], now + 100)

    assert [(m.customer, m.user, m.reason, m.waited_ms) for m in served.moves] == [
        (customer, "bob", "round_robin", 100)
    ]
    assert rd.llen(keys.queue(ACCOUNT, NUMBER)) == 0
    link.close()
