"""The waiting queue and the reply timers, rule by rule, each with a running worker and short
timeouts (1-2 s): what lands on rota:assignments and what the conversation keys hold.

Tests never assert how soon a timer acts: they wait for its effect with a generous deadline.
Where a rule says that nothing happens, they wait for evidence that the moment has passed: the
timer's member leaving the timers set, or a later conversation's timer acting first.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from tests.conftest import Cli, Target
from tests.helpers import ACCOUNT, NUMBER, drained, events, finish, given_number, send
from worker import admin, keys
from worker.log import logger
from worker.runner import Runner
from worker.settings import Settings

C0, C1, C2, C3, C4, C5 = (f"44770090000{i}" for i in range(6))
BOSS = "boss"
PATIENCE_S = 10  # how long a test waits for an effect: far past any deadline it sets
T = TypeVar("T")


# --- A running worker ----------------------------------------------------------------------


class Worker:
    """The worker loop in a thread, as ``rota worker`` runs it: started, stopped, started
    again (a new Runner, a new consumer, each time)."""

    def __init__(self, target: Target, settings: Settings) -> None:
        self.target, self.settings = target, settings
        self.started = 0
        self._running: tuple[Runner, threading.Thread, list[int], Any] | None = None

    def start(self) -> None:
        assert self._running is None
        client = self.target.client()
        self.started += 1
        runner = Runner(client, self.settings, logger(self.settings), f"w{self.started}")
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(runner.run()), daemon=True)
        thread.start()
        self._running = (runner, thread, codes, client)

    def stop(self) -> None:
        assert self._running is not None
        runner, thread, codes, client = self._running
        self._running = None
        runner.request_stop()
        thread.join(timeout=PATIENCE_S)
        client.close()
        assert codes == [0], "the worker stopped cleanly"

    @property
    def running(self) -> bool:
        return self._running is not None


@pytest.fixture
def worker(target: Target, settings: Settings) -> Iterator[Worker]:
    running = Worker(target, settings)
    running.start()
    yield running
    if running.running:
        running.stop()


# --- Given ---------------------------------------------------------------------------------


def given_conversations(
    rd: Any,
    members: list[str],
    *,
    queue: bool = True,
    max_wait_s: int = 0,
    reply_timeout_s: int = 0,
    **number_settings: Any,
) -> None:
    """The number, with the conversation settings the command line cannot set yet written
    into its settings hash."""
    given_number(rd, members, **number_settings)
    fields = {"when_nobody": "queue" if queue else "admin"}
    if max_wait_s:
        fields["queue_max_wait_s"] = str(max_wait_s)
    if reply_timeout_s:
        fields["reply_timeout_s"] = str(reply_timeout_s)
    rd.hset(keys.number(ACCOUNT, NUMBER), mapping=fields)


def available(rd: Any, *users: str) -> None:
    """Statuses written as a CRM writes them, with HSET (one command: seen all at once)."""
    rd.hset(keys.presence(ACCOUNT), mapping=dict.fromkeys(users, "available"))


# --- When ----------------------------------------------------------------------------------


def wait_for(what: str, found: Callable[[], T | None]) -> T:
    """Polls until ``found`` gives something true; that."""
    deadline = time.monotonic() + PATIENCE_S
    while not (value := found()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {PATIENCE_S} s for {what}")
        time.sleep(0.05)
    return value


def entry_of(rd: Any, settings: Settings, inbound_id: str) -> dict[str, str] | None:
    return next((e for e in events(rd, settings) if e["inbound_id"] == inbound_id), None)


def decided(rd: Any, settings: Settings, customer: str) -> dict[str, str]:
    """A message of the customer, and its decision once the worker published it."""
    entry_id = send(rd, settings, customer)
    return wait_for(f"the decision of {customer}", lambda: entry_of(rd, settings, entry_id))


def activity(rd: Any, settings: Settings, kind: str, customer: str = "", **fields: str) -> str:
    """One CRM activity entry, taken once the worker has acknowledged everything before it."""
    conversation = {"number": NUMBER, "customer": customer} if customer else {}
    entry_id = admin.send(
        rd, settings, {"type": kind, "account": ACCOUNT, **conversation, **fields}
    )
    wait_for(f"the {kind} entry acknowledged", lambda: drained(rd))
    return entry_id


def transferred(rd: Any, settings: Settings, customer: str, user: str) -> dict[str, str]:
    entry_id = activity(rd, settings, "transfer", customer, user=user)
    return wait_for("the transfer's event", lambda: entry_of(rd, settings, entry_id))


def moves_of(rd: Any, settings: Settings, customer: str) -> list[dict[str, str]]:
    """The customer's conversation events without a message (from the queue, timers)."""
    return [
        e
        for e in events(rd, settings)
        if e["customer"] == customer and e["message_id"] == "" and e["inbound_id"] == ""
    ]


def moved(rd: Any, settings: Settings, customer: str, count: int = 1) -> list[dict[str, str]]:
    """Waits for the customer's ``count``-th move; the moves."""
    return wait_for(
        f"{count} move(s) of {customer}",
        lambda: (found := moves_of(rd, settings, customer))[count - 1 :] and found,
    )


def timer_fired(rd: Any, customer: str) -> None:
    wait_for(f"the timer of {customer} to fire", lambda: timer_of(rd, customer) is None)


# --- Then ----------------------------------------------------------------------------------


def told(event: dict[str, str]) -> tuple[str, str, str]:
    return event["user"], event["reason"], event.get("previous", "")


def queue_of(rd: Any) -> list[str]:
    waiting: list[str] = rd.lrange(keys.queue(ACCOUNT, NUMBER), 0, -1)
    return waiting


def queued_at(rd: Any) -> dict[str, str]:
    since: dict[str, str] = rd.hgetall(keys.queued(ACCOUNT, NUMBER))
    return since


def timer_of(rd: Any, customer: str) -> float | None:
    """The customer's timer: a reply deadline or the end of a queue wait, unix ms."""
    due: float | None = rd.zscore(keys.timers(ACCOUNT), keys.timer(NUMBER, customer))
    return due


def queue_mark(rd: Any) -> float | None:
    """The number's member of the timers set, there while its queue is not empty."""
    mark: float | None = rd.zscore(keys.timers(ACCOUNT), NUMBER)
    return mark


def holders(rd: Any) -> dict[str, str]:
    held: dict[str, str] = rd.hgetall(keys.open_conversations(ACCOUNT, NUMBER))
    return held


def owners(rd: Any) -> dict[str, str]:
    owned: dict[str, str] = rd.hgetall(keys.owners(ACCOUNT, NUMBER))
    return owned


def open_counts(rd: Any) -> dict[str, int]:
    return admin.open_counts(rd, ACCOUNT, NUMBER)


def tried(rd: Any, customer: str) -> str | None:
    users: str | None = rd.hget(keys.tried(ACCOUNT, NUMBER), customer)
    return users


def a_move_from_the_queue(event: dict[str, str], customer: str, user: str) -> None:
    """The event of a conversation the queue gave to ``user``."""
    assert {k: v for k, v in event.items() if k not in ("at", "event_id")} == {
        "account": ACCOUNT,
        "number": NUMBER,
        "customer": customer,
        "message_id": "",
        "inbound_id": "",
        "user": user,
        "reason": "round_robin",
        "previous": "",
    }
    assert event["event_id"] != "" and int(event["at"]) > 0


def the_events_agree_with_the_state(rd: Any, settings: Settings) -> None:
    """Every event without a message has its own event_id and a previous; each open
    conversation's last entry names its holder, each queued one's says ``queued``."""
    published = events(rd, settings)
    ids = [e["event_id"] for e in published if "event_id" in e]
    assert len(ids) == len(set(ids)), "event ids are unique"
    for event in published:
        if event["message_id"] == "":
            assert event["event_id"] != "" and "previous" in event, event
    last = {e["customer"]: e for e in published}
    assert {c: last[c]["user"] for c in holders(rd)} == holders(rd)
    assert [told(last[c])[:2] for c in queue_of(rd)] == [("", "queued")] * len(queue_of(rd))


# --- when_nobody = queue: the message waits, and gets the first user who is eligible ---------


@dataclass(frozen=True)
class Freeing:
    """A number on which nobody is eligible, what makes one user eligible, and that user."""

    given: Callable[[Any, Settings], None]
    free: Callable[[Any, Settings, Cli], None]
    user: str


def _nobody_available(rd: Any, settings: Settings) -> None:
    given_conversations(rd, ["alice", "bob"])


def _bob_unheard(rd: Any, settings: Settings) -> None:
    admin.set_account(rd, ACCOUNT, presence_ttl_s=60)
    given_conversations(rd, ["alice", "bob"])
    available(rd, "bob")  # but never heard from: not available with a presence TTL


def _alice_full(rd: Any, settings: Settings) -> None:
    given_conversations(rd, ["alice"], online_only=False, capacity=1)
    assert told(decided(rd, settings, C0)) == ("alice", "round_robin", "")


def _only_alice_a_member(rd: Any, settings: Settings) -> None:
    given_conversations(rd, ["alice"])
    available(rd, "bob")


def _presence_set(rd: Any, settings: Settings, rota: Cli) -> None:
    rota("presence", "set", ACCOUNT, "bob", "Available")


def _presence_hset(rd: Any, settings: Settings, rota: Cli) -> None:
    available(rd, "bob")


def _heartbeat(rd: Any, settings: Settings, rota: Cli) -> None:
    activity(rd, settings, "heartbeat", user="bob")


def _close_alices(rd: Any, settings: Settings, rota: Cli) -> None:
    activity(rd, settings, "closed", C0)


def _transfer_alices(rd: Any, settings: Settings, rota: Cli) -> None:
    transferred(rd, settings, C0, "carol")


def _online_only_off(rd: Any, settings: Settings, rota: Cli) -> None:
    admin.set_number(rd, ACCOUNT, NUMBER, online_only=False)


def _add_bob(rd: Any, settings: Settings, rota: Cli) -> None:
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice", "bob"])


FREEING = {
    "rota-presence-set": Freeing(_nobody_available, _presence_set, "bob"),
    "presence-hset": Freeing(_nobody_available, _presence_hset, "bob"),
    "heartbeat-with-presence-ttl": Freeing(_bob_unheard, _heartbeat, "bob"),
    "closed-frees-capacity": Freeing(_alice_full, _close_alices, "alice"),
    "transfer-frees-capacity": Freeing(_alice_full, _transfer_alices, "alice"),
    "online-only-turned-off": Freeing(_nobody_available, _online_only_off, "alice"),
    "member-added": Freeing(_only_alice_a_member, _add_bob, "bob"),
}


@pytest.mark.parametrize("how", sorted(FREEING))
def test_queued_customer_gets_the_first_user_who_becomes_eligible(
    rd: Any, settings: Settings, worker: Worker, rota: Cli, how: str
) -> None:
    """Breaks if a queued message gets a user or the admin, if the queue is not served after
    that change, or if the move is not a round_robin event from nobody."""
    case = FREEING[how]
    case.given(rd, settings)

    assert told(decided(rd, settings, C1)) == ("", "queued", "")
    assert (queue_of(rd), list(queued_at(rd)), queue_mark(rd)) == ([C1], [C1], 0)
    assert C1 not in holders(rd) and C1 not in owners(rd)

    case.free(rd, settings, rota)

    [move] = moved(rd, settings, C1)
    a_move_from_the_queue(move, C1, case.user)
    assert (queue_of(rd), queued_at(rd), queue_mark(rd)) == ([], {}, None)
    user = case.user
    assert (holders(rd)[C1], owners(rd)[C1], open_counts(rd)[user]) == (user, user, 1)
    the_events_agree_with_the_state(rd, settings)


def test_queue_served_by_the_sweep_follows_rule_3_from_the_cursor(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if the sweep's walk of L does not start at the cursor: with the cursor at bob's
    place, alice (place 0) would get the customer."""
    given_conversations(rd, ["alice", "bob", "carol"])
    available(rd, "alice")
    assert told(decided(rd, settings, C0)) == ("alice", "round_robin", "")  # the cursor: 1
    rd.hset(keys.presence(ACCOUNT), "alice", "away")
    assert told(decided(rd, settings, C1)) == ("", "queued", "")

    available(rd, "alice", "bob", "carol")  # nothing but the sweep sees this

    a_move_from_the_queue(moved(rd, settings, C1)[0], C1, "bob")
    assert rd.get(keys.cursor(ACCOUNT, NUMBER)) == "2"
    the_events_agree_with_the_state(rd, settings)


def test_queue_is_first_come_first_served_and_a_new_customer_waits_behind(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if users go to the queue out of order, if a queued customer's second message
    moves or re-queues it, or if a message is decided before the queue is served."""
    given_conversations(rd, ["alice", "bob", "carol"], capacity=1)  # one user frees one slot
    for customer in (C1, C2, C3):
        assert told(decided(rd, settings, customer)) == ("", "queued", "")
    since = queued_at(rd)[C1]

    assert told(decided(rd, settings, C1)) == ("", "queued", "")  # waiting, and keeps its place
    assert (queue_of(rd), queued_at(rd)[C1]) == ([C1, C2, C3], since)

    # alice becomes free as a new customer writes: the oldest waiting gets her, not the new one
    pipe = rd.pipeline(transaction=False)
    pipe.hset(keys.presence(ACCOUNT), "alice", "available")
    pipe.xadd(settings.inbound_stream, {"account": ACCOUNT, "number": NUMBER, "from": C4})
    pipe.execute()
    a_move_from_the_queue(moved(rd, settings, C1)[0], C1, "alice")
    wait_for("C4's decision", lambda: [e for e in events(rd, settings) if e["customer"] == C4])
    assert queue_of(rd) == [C2, C3, C4]

    available(rd, "bob", "carol")
    moved(rd, settings, C3)
    activity(rd, settings, "closed", C1)  # alice free again
    moved(rd, settings, C4)

    by_customer = [(e["customer"], told(e)) for e in events(rd, settings)]
    assert by_customer == [
        (C1, ("", "queued", "")),
        (C2, ("", "queued", "")),
        (C3, ("", "queued", "")),
        (C1, ("", "queued", "")),
        (C1, ("alice", "round_robin", "")),
        (C4, ("", "queued", "")),
        (C2, ("bob", "round_robin", "")),
        (C3, ("carol", "round_robin", "")),
        (C4, ("alice", "round_robin", "")),
    ]
    assert (queue_of(rd), queued_at(rd), queue_mark(rd)) == ([], {}, None)
    assert holders(rd) == {C2: "bob", C3: "carol", C4: "alice"}
    the_events_agree_with_the_state(rd, settings)


# --- queue_max_wait_s ------------------------------------------------------------------------


def test_queued_customer_goes_to_the_admin_after_queue_max_wait(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if the wait never ends, ends at the wrong deadline, leaves the customer in the
    queue, or if the admin's conversation gets a reply timer."""
    given_conversations(rd, ["alice"], admin=BOSS, max_wait_s=1, reply_timeout_s=1)

    assert told(decided(rd, settings, C1)) == ("", "queued", "")
    assert timer_of(rd, C1) == int(queued_at(rd)[C1]) + 1000

    [move] = moved(rd, settings, C1)
    assert told(move) == (BOSS, "admin_fallback", "")
    assert (queue_of(rd), queued_at(rd), queue_mark(rd)) == ([], {}, None)
    assert (holders(rd), owners(rd), open_counts(rd)) == ({C1: BOSS}, {C1: BOSS}, {BOSS: 1})
    assert timer_of(rd, C1) is None  # admin_fallback starts no reply timer
    the_events_agree_with_the_state(rd, settings)


def test_queued_customer_without_an_admin_keeps_waiting_after_queue_max_wait(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if the wait's end moves or drops the customer when there is no admin."""
    given_conversations(rd, ["alice"], max_wait_s=1)

    assert told(decided(rd, settings, C1)) == ("", "queued", "")
    timer_fired(rd, C1)

    assert moves_of(rd, settings, C1) == []
    assert (queue_of(rd), list(queued_at(rd)), queue_mark(rd), holders(rd)) == ([C1], [C1], 0, {})

    available(rd, "alice")  # still waiting: the first user who comes takes it
    a_move_from_the_queue(moved(rd, settings, C1)[0], C1, "alice")
    the_events_agree_with_the_state(rd, settings)


# --- reply_timeout_s -------------------------------------------------------------------------


def test_unreplied_conversation_moves_to_each_untried_user_then_to_the_admin(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if a timeout skips rule 3 (cursor, eligibility), returns to a user who held it,
    ends anywhere but the admin, or leaves a timer on the admin's conversation."""
    given_conversations(
        rd, ["alice", "bob", "carol", "dave"], queue=False, admin=BOSS, reply_timeout_s=1
    )
    available(rd, "alice", "bob", "dave")  # carol is not eligible

    first = decided(rd, settings, C1)
    assert told(first) == ("alice", "round_robin", "")
    assert timer_of(rd, C1) == int(first["at"]) + 1000

    moves = moved(rd, settings, C1, 3)
    assert [told(m) for m in moves] == [
        ("bob", "reply_timeout", "alice"),
        ("dave", "reply_timeout", "bob"),
        (BOSS, "admin_fallback", "dave"),
    ]
    assert timer_of(rd, C1) is None
    assert tried(rd, C1) == f"alice,bob,dave,{BOSS}"
    assert (holders(rd), owners(rd), open_counts(rd)) == ({C1: BOSS}, {C1: BOSS}, {BOSS: 1})
    assert rd.get(keys.cursor(ACCOUNT, NUMBER)) == "4"  # alice, then bob, then past carol
    the_events_agree_with_the_state(rd, settings)


def test_user_who_did_not_reply_loses_the_owner_and_the_capacity_slot(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if the silent user keeps the customer or the open count: with capacity 1 she
    would then be full and the next customer would get nobody."""
    given_conversations(rd, ["alice", "bob"], queue=False, capacity=1, reply_timeout_s=1)
    available(rd, "alice", "bob")
    assert told(decided(rd, settings, C1)) == ("alice", "round_robin", "")

    [move] = moved(rd, settings, C1)
    assert told(move) == ("bob", "reply_timeout", "alice")
    assert (holders(rd), owners(rd), open_counts(rd)) == ({C1: "bob"}, {C1: "bob"}, {"bob": 1})

    assert told(decided(rd, settings, C2)) == ("alice", "round_robin", "")
    the_events_agree_with_the_state(rd, settings)


def test_unreplied_conversation_without_an_admin_stays_when_nobody_is_left(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if the timeout moves the conversation to nobody, or back to the same user."""
    given_conversations(rd, ["alice"], queue=False, reply_timeout_s=1)
    available(rd, "alice")
    assert told(decided(rd, settings, C1)) == ("alice", "round_robin", "")

    timer_fired(rd, C1)

    assert moves_of(rd, settings, C1) == []
    assert (holders(rd), owners(rd), open_counts(rd)) == (
        {C1: "alice"},
        {C1: "alice"},
        {"alice": 1},
    )
    the_events_agree_with_the_state(rd, settings)


def test_reply_by_the_holder_stops_the_reply_timer(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if the holder's reply leaves the timer running: C1 would move before C2 does."""
    given_conversations(rd, ["alice", "bob"], queue=False, reply_timeout_s=2)
    available(rd, "alice", "bob")
    assert told(decided(rd, settings, C1)) == ("alice", "round_robin", "")

    activity(rd, settings, "replied", C1, user="alice")
    assert timer_of(rd, C1) is None
    assert told(decided(rd, settings, C2)) == ("bob", "round_robin", "")  # due after C1's was

    assert [told(m) for m in moved(rd, settings, C2)] == [("alice", "reply_timeout", "bob")]
    assert moves_of(rd, settings, C1) == []
    assert holders(rd) == {C1: "alice", C2: "alice"}
    the_events_agree_with_the_state(rd, settings)


def test_reply_by_someone_else_does_not_stop_the_reply_timer(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if any user's reply stops the timer, not only the holder's."""
    given_conversations(rd, ["alice", "bob"], queue=False, reply_timeout_s=1)
    available(rd, "alice", "bob")
    assert told(decided(rd, settings, C1)) == ("alice", "round_robin", "")

    activity(rd, settings, "replied", C1, user="bob")

    assert [told(m) for m in moved(rd, settings, C1)] == [("bob", "reply_timeout", "alice")]
    assert holders(rd) == {C1: "bob"}
    the_events_agree_with_the_state(rd, settings)


def test_transferred_conversation_has_no_reply_timer(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if a transfer keeps or starts a reply timer: C1 would move before C2 does."""
    given_conversations(rd, ["alice", "bob"], queue=False, reply_timeout_s=2)
    available(rd, "alice", "bob")
    assert told(decided(rd, settings, C1)) == ("alice", "round_robin", "")

    assert told(transferred(rd, settings, C1, "bob")) == ("bob", "transfer", "alice")
    assert timer_of(rd, C1) is None
    assert told(decided(rd, settings, C2)) == ("bob", "round_robin", "")  # due after C1's was

    assert [told(m) for m in moved(rd, settings, C2)] == [("alice", "reply_timeout", "bob")]
    assert moves_of(rd, settings, C1) == []
    assert holders(rd) == {C1: "bob", C2: "alice"}
    the_events_agree_with_the_state(rd, settings)


def test_conversation_opened_by_admin_fallback_has_no_reply_timer(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if the admin's conversation gets a reply timer: C1 would move before C2 does."""
    given_conversations(rd, ["alice", "bob"], queue=False, admin=BOSS, reply_timeout_s=1)
    assert told(decided(rd, settings, C1)) == (BOSS, "admin_fallback", "")
    assert timer_of(rd, C1) is None

    available(rd, "alice", "bob")
    assert told(decided(rd, settings, C2)) == ("alice", "round_robin", "")
    assert [told(m) for m in moved(rd, settings, C2)] == [("bob", "reply_timeout", "alice")]

    assert moves_of(rd, settings, C1) == []
    assert holders(rd) == {C1: BOSS, C2: "bob"}
    the_events_agree_with_the_state(rd, settings)


# --- closed and transfer of a queued conversation ------------------------------------------


def test_closed_or_transferred_queued_conversation_leaves_the_queue(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Breaks if a closed or transferred customer stays in the queue (or keeps its wait's
    timer): the first user who comes would then get it instead of C3."""
    given_conversations(rd, ["alice"], max_wait_s=60)
    for customer in (C1, C2, C3):
        assert told(decided(rd, settings, customer)) == ("", "queued", "")
    assert all(timer_of(rd, c) is not None for c in (C1, C2, C3))

    activity(rd, settings, "closed", C1)
    assert (queue_of(rd), sorted(queued_at(rd)), timer_of(rd, C1)) == ([C2, C3], [C2, C3], None)
    assert C1 not in holders(rd)

    assert told(transferred(rd, settings, C2, "bob")) == ("bob", "transfer", "")
    assert (queue_of(rd), list(queued_at(rd)), timer_of(rd, C2)) == ([C3], [C3], None)
    assert (holders(rd), open_counts(rd)) == ({C2: "bob"}, {"bob": 1})

    available(rd, "alice")
    a_move_from_the_queue(moved(rd, settings, C3)[0], C3, "alice")
    assert moves_of(rd, settings, C1) == []
    assert (queue_of(rd), queued_at(rd), queue_mark(rd)) == ([], {}, None)
    assert holders(rd) == {C2: "bob", C3: "alice"}
    the_events_agree_with_the_state(rd, settings)


# --- Timers survive the workers --------------------------------------------------------------


def server_ms(rd: Any) -> int:
    seconds, micros = rd.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.mark.parametrize("kind", ["reply_timeout", "queue_max_wait"])
def test_timer_due_while_no_worker_ran_fires_when_a_worker_starts(
    rd: Any, settings: Settings, target: Target, workers: Callable[..., Any], kind: str
) -> None:
    """With ``rota worker`` processes. Breaks if timers live in a worker rather than in Redis,
    or if a starting worker does not sweep what fell due before it."""
    if kind == "reply_timeout":
        given_conversations(rd, ["alice", "bob"], queue=False, reply_timeout_s=2)
        available(rd, "alice", "bob")
        first, then = ("alice", "round_robin", ""), ("bob", "reply_timeout", "alice")
    else:
        given_conversations(rd, ["alice"], admin=BOSS, max_wait_s=2)
        first, then = ("", "queued", ""), (BOSS, "admin_fallback", "")
    process = workers(target.url)
    assert told(decided(rd, settings, C1)) == first

    process.send_signal(signal.SIGTERM)
    assert finish(process, PATIENCE_S) == (0, "")
    due = timer_of(rd, C1)
    assert due is not None
    wait_for("the deadline to pass", lambda: server_ms(rd) > due + 500)
    assert (moves_of(rd, settings, C1), timer_of(rd, C1)) == ([], due)  # nobody fired it

    workers(target.url)
    assert [told(m) for m in moved(rd, settings, C1)] == [then]
    the_events_agree_with_the_state(rd, settings)


# --- Events ----------------------------------------------------------------------------------


def test_every_move_is_one_event_and_the_last_entry_names_the_holder(
    rd: Any, settings: Settings, worker: Worker
) -> None:
    """Many moves at once (the queue, reply timeouts, the wait's end, the admin) until every
    timer has acted. Breaks if a move is published twice or not at all, if an event's previous
    is not the user before, or if the last entry of a customer is not who holds it."""
    given_conversations(
        rd, ["alice", "bob"], capacity=1, admin=BOSS, max_wait_s=2, reply_timeout_s=1
    )
    available(rd, "alice", "bob")
    customers = [C1, C2, C3, C4, C5]
    for customer in customers:
        send(rd, settings, customer)
    wait_for("every decision", lambda: len(events(rd, settings)) >= len(customers))
    wait_for("every timer to act", lambda: rd.zcard(keys.timers(ACCOUNT)) == 0)

    published = events(rd, settings)
    assert [told(e)[:2] for e in published[:2]] == [
        ("alice", "round_robin"),
        ("bob", "round_robin"),
    ]
    moves = [e for e in published if e["message_id"] == ""]
    sequence = int(rd.get(keys.event_sequence(ACCOUNT)))
    assert sorted(e["event_id"] for e in moves) == sorted(
        f"{ACCOUNT}:{n}" for n in range(1, sequence + 1)
    ), "each numbered event published once"
    for customer in customers:
        held = ""
        for event in (e for e in published if e["customer"] == customer):
            if event["message_id"] == "":
                assert event["previous"] == held, (customer, event)
            held = event["user"]
    assert holders(rd) == dict.fromkeys(customers, BOSS)  # every chain ends with the admin
    assert open_counts(rd) == {BOSS: len(customers)}
    assert (queue_of(rd), queued_at(rd)) == ([], {})
    the_events_agree_with_the_state(rd, settings)
