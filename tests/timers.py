"""Traffic and checks for the chaos test of the waiting queue and the reply timeouts (issue 13).

One number with 4 members at capacity 400, an admin, when_nobody = queue and a 1 s reply
timeout; distinct customers each send one message and nobody ever replies. The first 1,600
conversations open by round robin and the rest wait. A reply timeout that finds every untried
member full goes to the admin, which frees the member's slot for the head of the queue: the
queue drains a generation a second. Once it is empty, timeouts find free slots and move
conversations from member to member, each to one who has not held it, until the admin has them
all.

What the model (worker.rules) then says of each customer's events, in the order the script
made them: one decision for its message, round_robin, or queued and then one round_robin event
from the queue; then 0 to 3 reply_timeout events, each to a member who has not held it, with
the member before as previous; then one admin_fallback event from the last member; nothing
after. Each timer event comes at least the reply timeout after the one before it, the opening
included, as the script checks the deadline against the same "now" it stamps the event with: a
timer fired twice moves the conversation early.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from tests.helpers import ACCOUNT, NUMBER, given_number, given_presence, pending_count
from worker import keys

MEMBERS = [f"agent{i}" for i in range(4)]
ADMIN = "boss"  # not a member: capacity does not apply to the fallback
CAPACITY = 400
REPLY_TIMEOUT_MS = 1_000
ACT_WITHIN_MS = 1_000  # of a timer's deadline, while any worker runs
PIPELINE = 5_000
EVERY_NTH_QUEUE = 5  # of the snapshots, the queue's order kept for the first come, first served


def given_queueing_number(rd: Any) -> None:
    """4 available members with capacity 400, an admin, when_nobody queue, reply timeout 1 s."""
    given_number(rd, MEMBERS, online_only=False, admin=ADMIN, capacity=CAPACITY)
    rd.hset(
        keys.number(ACCOUNT, NUMBER),
        mapping={"when_nobody": "queue", "reply_timeout_s": REPLY_TIMEOUT_MS // 1000},
    )
    given_presence(rd, **dict.fromkeys(MEMBERS, "available"))


def given_customers(rd: Any, count: int) -> dict[str, str]:
    """``count`` first messages of distinct customers; message id -> customer."""
    customer_of = {}
    pipe = rd.pipeline(transaction=False)
    for i in range(count):
        customer, message_id = f"4479{i:08d}", f"wamid.timer.{i:06d}"
        customer_of[message_id] = customer
        fields = {"account": ACCOUNT, "number": NUMBER, "from": customer}
        pipe.xadd("rota:inbound", {**fields, "message_id": message_id})
        if len(pipe) >= PIPELINE:
            pipe.execute()
    pipe.execute()
    return customer_of


def all_with_the_admin(rd: Any, count: int) -> bool:
    """One small reply: cheap enough to poll while workers run."""
    return int(rd.hget(keys.open_counts(ACCOUNT, NUMBER), ADMIN) or 0) == count


# --- Snapshots while the workers run --------------------------------------------------------


@dataclass
class Snapshot:
    open: dict[str, str]  # customer -> holder
    load: dict[str, int]  # user -> open count
    queue: list[str]  # the waiting customers, oldest first
    queued: int  # entries of the queued hash


def snapshot(rd: Any) -> Snapshot:
    """The number's conversations at one instant (MULTI/EXEC: no script runs between)."""
    pipe = rd.pipeline(transaction=True)
    pipe.hgetall(keys.open_conversations(ACCOUNT, NUMBER))
    pipe.hgetall(keys.open_counts(ACCOUNT, NUMBER))
    pipe.lrange(keys.queue(ACCOUNT, NUMBER), 0, -1)
    pipe.hlen(keys.queued(ACCOUNT, NUMBER))
    open_, load, queue, queued = pipe.execute()
    return Snapshot(open_, {u: int(c) for u, c in load.items()}, queue, queued)


def problems(state: Snapshot) -> list[str]:
    """What is wrong with one snapshot: counts that are not the open conversations per holder,
    a member above capacity, a queue and queued hash that disagree, a customer both open and
    waiting, or a waiting customer that a member with a free slot could take."""
    found = []
    counted = Counter(state.open.values())
    stored = {u: c for u, c in state.load.items() if c != 0}
    if stored != dict(counted):
        found.append(f"open counts {stored} but open conversations per user {dict(counted)}")
    above = {u: c for u, c in state.load.items() if u in MEMBERS and c > CAPACITY}
    if above:
        found.append(f"above capacity {CAPACITY}: {above}")
    if len(state.queue) != state.queued or len(set(state.queue)) != len(state.queue):
        found.append(f"queue of {len(state.queue)} but {state.queued} queued")
    both = set(state.queue) & set(state.open)
    if both:
        found.append(f"open and waiting: {sorted(both)[:5]}")
    free = [u for u in MEMBERS if state.load.get(u, 0) < CAPACITY]
    if state.queue and free:
        found.append(f"{len(state.queue)} waiting while {free} have a free slot")
    return found


@dataclass
class Sampler:
    """Snapshots taken while the workers run: every problem seen, the longest queue, and some
    of the queue's orders (for first come, first served)."""

    samples: int = 0
    seen: list[str] = field(default_factory=list)
    longest_queue: int = 0
    queues: list[list[str]] = field(default_factory=list)

    def sample(self, rd: Any) -> None:
        state = snapshot(rd)
        self.samples += 1
        self.seen += problems(state)
        self.longest_queue = max(self.longest_queue, len(state.queue))
        if state.queue and self.samples % EVERY_NTH_QUEUE == 0:
            self.queues.append(state.queue)


# --- Checks after the workers stopped --------------------------------------------------------


Event = dict[str, str]


def event_number(event: Event) -> int:
    """The event sequence's number in ``ACCOUNT:N``: the order the script made the moves in."""
    account, _, n = event["event_id"].partition(":")
    assert account == ACCOUNT and n.isdigit(), event
    return int(n)


def distinct(events: list[Event], key: str) -> dict[str, Event]:
    """``key`` -> its one event: at least once allows repeats, never two different ones."""
    seen: dict[str, set[tuple[tuple[str, str], ...]]] = defaultdict(set)
    for event in events:
        seen[event[key]].add(tuple(sorted(event.items())))
    differing = {k: contents for k, contents in seen.items() if len(contents) != 1}
    assert not differing, f"{key}s published with different contents: {list(differing.items())[:3]}"
    return {k: dict(next(iter(contents))) for k, contents in seen.items()}


@dataclass
class History:
    """One customer's conversation as its events tell it."""

    decision: Event
    moves: list[Event]  # in event number order

    def opening(self) -> tuple[Event, list[Event]]:
        """What gave the conversation its first user (the decision, or the queue's event),
        and the moves after it."""
        if self.decision["reason"] == "queued" and self.moves:
            return self.moves[0], self.moves[1:]
        return self.decision, self.moves

    def problems(self) -> list[str]:
        """How the events differ from what the model says (see the module's docstring)."""
        reason = self.decision["reason"]
        if reason == "queued":
            first = self.moves[0] if self.moves else {}
            if self.decision["user"] != "" or first.get("reason") != "round_robin":
                return ["queued, never served from the queue"]
            if first["previous"] != "":
                return [f"served from the queue, previous {first['previous']!r}"]
        elif reason != "round_robin":
            return [f"decided {reason}"]
        opening, moves = self.opening()
        found = [] if opening["user"] in MEMBERS else [f"opened for {opening['user']!r}"]
        held, at = [opening["user"]], int(opening["at"])
        for k, move in enumerate(moves):
            if k == len(moves) - 1:
                if (move["reason"], move["user"]) != ("admin_fallback", ADMIN):
                    found.append(f"last {move['reason']} to {move['user']!r}, not the admin")
            elif move["reason"] != "reply_timeout":
                found.append(f"move {k + 1} of {len(moves)} is {move['reason']}")
            elif move["user"] not in MEMBERS or move["user"] in held:
                found.append(f"timed out to {move['user']!r} after {held}")
            if move["previous"] != held[-1]:
                found.append(f"previous {move['previous']!r}, held by {held[-1]!r}")
            if int(move["at"]) < at + REPLY_TIMEOUT_MS:
                found.append(f"timer fired {int(move['at']) - at} ms after {held[-1]} got it")
            held.append(move["user"])
            at = int(move["at"])
        if not moves:
            found.append("never reached the admin")
        return found

    @property
    def timeouts(self) -> int:
        return sum(move["reason"] == "reply_timeout" for move in self.moves)

    @property
    def holders(self) -> list[str]:
        """Everyone who held it since it opened, the admin last (what the tried hash lists)."""
        opening, moves = self.opening()
        return [opening["user"], *(move["user"] for move in moves)]

    def lateness_ms(self) -> list[int]:
        """How long after its deadline each timer fired."""
        opening, moves = self.opening()
        times = [int(opening["at"]), *(int(move["at"]) for move in moves)]
        return [b - a - REPLY_TIMEOUT_MS for a, b in pairwise(times)]


def histories(rd: Any, customer_of: dict[str, str]) -> dict[str, History]:
    """customer -> its History; fails unless every message has exactly one decision and every
    event id one content, numbered 1..N without a gap as the event sequence counted."""
    published = [fields for _, fields in rd.xrange("rota:assignments")]
    decisions = distinct([e for e in published if e["message_id"]], "message_id")
    moves = distinct([e for e in published if not e["message_id"]], "event_id")
    assert set(decisions) == set(customer_of), "every message, and only those, has a decision"
    numbers = sorted(event_number(move) for move in moves.values())
    assert numbers == list(range(1, len(numbers) + 1)), "an event number made but not published"
    assert int(rd.get(keys.event_sequence(ACCOUNT)) or 0) == len(numbers)
    by_customer: dict[str, History] = {}
    for message_id, decision in decisions.items():
        assert decision["customer"] == customer_of[message_id]
        by_customer[decision["customer"]] = History(decision, [])
    for move in sorted(moves.values(), key=event_number):
        assert move["customer"] in by_customer, f"an event of a customer who never wrote: {move}"
        by_customer[move["customer"]].moves.append(move)
    return by_customer


def served_in_order(found: dict[str, History], queues: list[list[str]]) -> list[str]:
    """Queue orders seen in snapshots whose customers were not served first come, first
    served (by the numbers of their events from the queue)."""
    served = {
        customer: event_number(h.moves[0])
        for customer, h in found.items()
        if h.decision["reason"] == "queued" and h.moves
    }
    wrong = []
    for queue in queues:
        order = [served.get(customer, 0) for customer in queue]
        if order != sorted(order) or 0 in order:
            wrong.append(f"queue of {len(queue)} from {queue[0]} served out of order")
    return wrong


def last_entry_not_the_holder(rd: Any) -> int:
    """Customers whose last entry on the events stream names someone other than the admin who
    holds them all: a move a sweep published late from a killed worker's outbox, after the
    customer's next move (the contract says the last entry names the holder)."""
    last: dict[str, str] = {}
    for _, event in rd.xrange("rota:assignments"):
        last[event["customer"]] = event["user"]
    return sum(user != ADMIN for user in last.values())


def assert_every_timer_fired_once(
    rd: Any, customer_of: dict[str, str], sampler: Sampler
) -> dict[str, History]:
    """Every snapshot sound, each customer's events as the model says, the queue served in
    order, and the state agreeing with the events: all with the admin, counts exact, nothing
    waiting, no timer, no outbox entry, nothing pending or dead. The histories, for figures."""
    assert sampler.seen == [], sampler.seen[:5]
    assert sampler.longest_queue > len(MEMBERS) * CAPACITY, "the queue filled up"
    found = histories(rd, customer_of)
    wrong = {c: p for c, h in found.items() if (p := h.problems())}
    assert not wrong, f"{len(wrong)} customers' events differ: {list(wrong.items())[:5]}"
    assert served_in_order(found, sampler.queues) == []
    # Straight to the admin while the queue drains; past every member once it is empty
    paths = Counter(h.timeouts for h in found.values())
    assert paths[0] > len(found) // 2 and paths[len(MEMBERS) - 1] > 0, paths
    latest = {c: max(h.lateness_ms(), default=0) for c, h in found.items()}
    late = {c: ms for c, ms in latest.items() if ms > ACT_WITHIN_MS}
    assert not late, f"{len(late)} timers fired more than 1 s late: {list(late.items())[:5]}"

    n = NUMBER
    everyone = set(found)
    assert rd.hgetall(keys.open_conversations(ACCOUNT, n)) == dict.fromkeys(everyone, ADMIN)
    assert rd.hgetall(keys.owners(ACCOUNT, n)) == dict.fromkeys(everyone, ADMIN)
    load = {u: int(c) for u, c in rd.hgetall(keys.open_counts(ACCOUNT, n)).items() if c != "0"}
    assert load == {ADMIN: len(everyone)}
    tried = rd.hgetall(keys.tried(ACCOUNT, n))
    assert tried == {c: ",".join(h.holders) for c, h in found.items()}, "tried agrees"
    assert rd.llen(keys.queue(ACCOUNT, n)) == 0
    assert rd.hlen(keys.queued(ACCOUNT, n)) == 0
    assert rd.hlen(keys.replied(ACCOUNT, n)) == 0
    assert rd.zrange(keys.timers(ACCOUNT), 0, -1, withscores=True) == []
    assert rd.xlen(keys.outbox(ACCOUNT)) == 0
    assert pending_count(rd) == 0
    assert rd.xlen("rota:dead") == 0
    return found
