"""Traffic and checks for the tests of a number's capacity under many workers (issue 12).

The traffic is distinct customers only, each sending one message, with `closed` entries for
earlier customers in between: no customer ever returns, so rule 1 never reopens a conversation
at capacity and no rotation user may ever hold more than the capacity, at any instant.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.helpers import ACCOUNT, NUMBER, cursor, given_number, given_presence, pending_count
from worker import keys

CAPACITY = 5
MEMBERS = [f"agent{i}" for i in range(8)]
ADMIN = "boss"  # not a member: capacity does not apply to the fallback
CLOSE_RATE = 0.95  # a close after this share of messages keeps the rotation's slots turning
RECENT = 10  # most closes are of one of the last few customers still open, the CRM's pace
ANY_OPEN = 0.3  # the others of any customer still open, so old conversations close too
PIPELINE = 5_000


@dataclass
class Traffic:
    message_ids: list[str] = field(default_factory=list)
    customer_of: dict[str, str] = field(default_factory=dict)  # message id -> customer
    message_entries: set[str] = field(default_factory=set)  # inbound ids of the messages
    closes: int = 0


def given_capacity_number(rd: Any) -> None:
    """8 members, online_only off, capacity 5, an admin so nothing is lost."""
    given_number(rd, MEMBERS, online_only=False, admin=ADMIN, capacity=CAPACITY)
    given_presence(rd, **dict.fromkeys(MEMBERS, "available"))


def given_customers_and_closes(rd: Any, customers: int, seed: int) -> Traffic:
    """``customers`` first messages of distinct customers, a `closed` entry of an earlier
    customer after most of them, all pushed on the inbound stream before any worker starts."""
    rng = random.Random(seed)
    traffic, still_open = Traffic(), []
    pipe, queued, kinds = rd.pipeline(transaction=False), 0, []
    for i in range(customers):
        customer, message_id = f"4478{i:08d}", f"wamid.cap.{i:06d}"
        traffic.message_ids.append(message_id)
        traffic.customer_of[message_id] = customer
        pipe.xadd(
            "rota:inbound",
            {"account": ACCOUNT, "number": NUMBER, "from": customer, "message_id": message_id},
        )
        kinds.append(True)
        still_open.append(customer)
        if rng.random() < CLOSE_RATE:
            if rng.random() < ANY_OPEN:
                k = rng.randrange(len(still_open))
            else:
                k = len(still_open) - 1 - rng.randrange(min(RECENT, len(still_open)))
            closed = still_open.pop(k)
            pipe.xadd(
                "rota:inbound",
                {
                    "type": "closed",
                    "account": ACCOUNT,
                    "number": NUMBER,
                    "customer": closed,
                    "message_id": f"close.{i:06d}",
                },
            )
            kinds.append(False)
            traffic.closes += 1
        queued += 1
        if queued >= PIPELINE or i == customers - 1:
            ids = pipe.execute()
            traffic.message_entries.update(
                e for e, is_message in zip(ids, kinds, strict=True) if is_message
            )
            pipe, queued, kinds = rd.pipeline(transaction=False), 0, []
    return traffic


@dataclass
class Snapshot:
    open: dict[str, str]  # customer -> holder
    load: dict[str, int]  # user -> open count


def snapshot(rd: Any) -> Snapshot:
    """Open conversations and open counts at one instant (MULTI/EXEC: no script runs between)."""
    pipe = rd.pipeline(transaction=True)
    pipe.hgetall(keys.open_conversations(ACCOUNT, NUMBER))
    pipe.hgetall(keys.open_counts(ACCOUNT, NUMBER))
    open_, load = pipe.execute()
    return Snapshot(open_, {user: int(count) for user, count in load.items()})


def problems(state: Snapshot) -> list[str]:
    """What is wrong with one snapshot: a count negative, a rotation user above capacity, or
    counts that are not the open conversations counted per holder."""
    found = []
    negative = {u: c for u, c in state.load.items() if c < 0}
    if negative:
        found.append(f"negative open counts {negative}")
    above = {u: c for u, c in state.load.items() if u in MEMBERS and c > CAPACITY}
    if above:
        found.append(f"above capacity {CAPACITY}: {above}")
    counted = Counter(state.open.values())
    stored = {u: c for u, c in state.load.items() if c != 0}
    if stored != dict(counted):
        found.append(f"open counts {stored} but open conversations per user {dict(counted)}")
    return found


@dataclass
class Sampler:
    """Snapshots taken while the workers run; every problem seen, and how full users got."""

    samples: int = 0
    seen: list[str] = field(default_factory=list)
    fullest: int = 0  # the most open conversations one rotation user held in a sample

    def sample(self, rd: Any) -> None:
        state = snapshot(rd)
        self.samples += 1
        self.seen += problems(state)
        members = [c for u, c in state.load.items() if u in MEMBERS]
        self.fullest = max([self.fullest, *members])


def events_by_inbound_id(rd: Any) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """inbound id -> the distinct events published for it (a repeat must be identical)."""
    seen: dict[str, set[tuple[tuple[str, str], ...]]] = defaultdict(set)
    for _, event in rd.xrange("rota:assignments"):
        seen[event.get("inbound_id", "")].add(tuple(sorted(event.items())))
    return seen


def assert_each_message_decided_once(rd: Any, traffic: Traffic) -> dict[str, dict[str, str]]:
    """Exactly the messages have events (closes publish none), each one decision; returns
    message id -> its decision."""
    seen = events_by_inbound_id(rd)
    assert set(seen) == traffic.message_entries, "every message, and only messages, decided"
    differing = [i for i, events in seen.items() if len(events) != 1]
    assert not differing, f"inbound entries decided more than one way: {differing[:5]}"
    decisions = {}
    for events in seen.values():
        decision = dict(next(iter(events)))
        decisions[decision["message_id"]] = decision
    assert set(decisions) == set(traffic.message_ids)
    return decisions


def assert_final_state(rd: Any, traffic: Traffic, decisions: dict[str, dict[str, str]]) -> None:
    """Counts exact and within capacity; each open conversation held by the user its only
    message went to (nothing transfers here), who is also the owner."""
    state = snapshot(rd)
    assert problems(state) == []
    owners = rd.hgetall(keys.owners(ACCOUNT, NUMBER))
    for message_id, decision in decisions.items():
        customer = traffic.customer_of[message_id]
        assert decision["customer"] == customer
        assert owners[customer] == decision["user"]
        assert state.open.get(customer, decision["user"]) == decision["user"]


def assert_decided_within_capacity(rd: Any, traffic: Traffic, sampler: Sampler) -> Counter[str]:
    """No snapshot had a rotation user above capacity, a negative count, or counts that differ
    from the open conversations, and users did fill up; each message has one decision (closes
    none), round robin or the admin; the open counts are exact at the end, nothing pending,
    nothing dead-lettered. The reasons counted."""
    assert sampler.seen == [], sampler.seen[:5]
    assert sampler.fullest == CAPACITY
    decisions = assert_each_message_decided_once(rd, traffic)
    reasons = Counter(d["reason"] for d in decisions.values())
    assert set(reasons) == {"round_robin", "admin_fallback"}
    assert {d["user"] for d in decisions.values() if d["reason"] == "admin_fallback"} == {ADMIN}
    assert {d["user"] for d in decisions.values() if d["reason"] == "round_robin"} <= set(MEMBERS)
    assert reasons["round_robin"] > len(MEMBERS) * CAPACITY, "closes freed slots for the rotation"
    # (the cursor moves past the users it skips at capacity too: at least one per decision)
    assert cursor(rd) >= reasons["round_robin"]
    assert_final_state(rd, traffic, decisions)
    assert pending_count(rd) == 0
    assert rd.xlen("rota:dead") == 0
    return reasons
