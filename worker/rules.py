"""The contract's decision rules in plain Python, over a snapshot of one number.

decide.lua is what decides; this model explains a number (``rota number show``: who is
eligible, who is next) and is the reference the property test holds the script to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from worker import presence
from worker.keys import group_name


@dataclass
class NumberState:
    members: list[str]
    access: set[str] = field(default_factory=set)
    groups: dict[str, list[str]] = field(default_factory=dict)
    assign_unknown: bool = True
    online_only: bool = True
    admin: str | None = None  # the number's, else the account's
    cursor: int = 0
    presence: dict[str, str] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    # Conversations
    capacity: int = 0  # open conversations a user may hold before rule 3 skips them; 0: off
    owner_online_only: bool = False
    presence_ttl_ms: int = 0  # the account's presence_ttl_s in ms; 0: off
    now_ms: int = 0  # the decision's time, for the presence TTL
    heard: dict[str, int] = field(default_factory=dict)  # user -> unix ms last heard
    open: dict[str, str] = field(default_factory=dict)  # customer -> the user holding it open
    load: dict[str, int] = field(default_factory=dict)  # user -> open conversations held
    replied: set[str] = field(default_factory=set)  # customers whose holder replied
    # The waiting queue and the timers
    queue_when_nobody: bool = False  # when_nobody = queue: rule 4 queues instead
    queue_max_wait_ms: int = 0  # a queued conversation's wait before the admin; 0: none
    reply_timeout_ms: int = 0  # 0: off
    queue: list[str] = field(default_factory=list)  # customers waiting, oldest first
    queued_at: dict[str, int] = field(default_factory=dict)  # customer -> unix ms queued
    deadlines: dict[str, int] = field(default_factory=dict)  # customer -> timer due, unix ms
    tried: dict[str, list[str]] = field(default_factory=dict)  # customer -> held it since open


@dataclass(frozen=True)
class Move:
    """A conversation given to a user without a new message (the queue, a timer, a transfer)."""

    customer: str
    user: str
    reason: str
    previous: str = ""


@dataclass(frozen=True)
class Choice:
    user: str
    reason: str
    cursor_step: int = 0  # how far the cursor moves
    new_owner: bool = False


def expand(entries: list[str] | set[str], groups: dict[str, list[str]]) -> list[str]:
    users: list[str] = []
    for entry in entries:
        name = group_name(entry)
        users.extend(groups.get(name, []) if name is not None else [entry])
    return users


def allowed(state: NumberState) -> set[str] | None:
    """Who may use the number; None when access is empty (everyone)."""
    return set(expand(state.access, state.groups)) if state.access else None


def rotation(state: NumberState) -> list[str]:
    """L: members expanded in place, first place kept, users outside access dropped."""
    may_use = allowed(state)
    seen: dict[str, None] = {}
    for user in expand(state.members, state.groups):
        if may_use is None or user in may_use:
            seen.setdefault(user, None)
    return list(seen)


def is_available(state: NumberState, user: str) -> bool:
    """Status available and, with a presence TTL, heard from within it."""
    if not presence.is_available(state.presence.get(user)):
        return False
    ttl = state.presence_ttl_ms
    return ttl == 0 or state.now_ms - state.heard.get(user, 0) <= ttl


def within_capacity(state: NumberState, user: str) -> bool:
    return state.capacity == 0 or state.load.get(user, 0) < state.capacity


def is_eligible(state: NumberState, user: str) -> bool:
    online = not state.online_only or is_available(state, user)
    return online and within_capacity(state, user)


def eligible(state: NumberState) -> list[str]:
    return [u for u in rotation(state) if is_eligible(state, u)]


def at_capacity(state: NumberState) -> list[str]:
    return [u for u in rotation(state) if not within_capacity(state, u)]


def _owner_keeps(state: NumberState, customer: str) -> str | None:
    """Rule 1's owner, when the owner may still take the customer."""
    may_use, owner = allowed(state), state.owners.get(customer)
    if owner is None or not (may_use is None or owner in may_use or owner == state.admin):
        return None
    holds = state.open.get(customer) == owner
    if state.owner_online_only and not holds:
        online = is_available(state, owner) and within_capacity(state, owner)
        return owner if online else None
    return owner


def _round_robin(state: NumberState, skip: Sequence[str] = ()) -> Choice | None:
    """Rule 3 over the users not in ``skip``; None when none is eligible."""
    users = rotation(state)
    for i in range(len(users)):
        user = users[(state.cursor + i) % len(users)]
        if user not in skip and is_eligible(state, user):
            return Choice(user, "round_robin", cursor_step=i + 1, new_owner=True)
    return None


def decide(state: NumberState, customer: str) -> Choice:
    """Rules 1-5 for a message (the queue served before: see ``message``)."""
    if customer in state.queued_at:
        return Choice("", "queued")
    owner = _owner_keeps(state, customer)
    if owner is not None:
        return Choice(owner, "owner")
    if not state.assign_unknown:
        return Choice("", "unknown_disabled")
    chosen = _round_robin(state)
    if chosen is not None:
        return chosen
    if state.queue_when_nobody:
        return Choice("", "queued")
    if state.admin:
        return Choice(state.admin, "admin_fallback", new_owner=True)
    return Choice("", "no_admin")


def _hold(state: NumberState, customer: str, user: str | None) -> None:
    """The customer's conversation passes to ``user`` (None: closed); open counts follow."""
    holder = state.open.get(customer)
    if holder == user:
        return
    if holder is not None:
        state.load[holder] = state.load.get(holder, 0) - 1
        del state.open[customer]
    if user is not None:
        state.load[user] = state.load.get(user, 0) + 1
        state.open[customer] = user


def apply(state: NumberState, customer: str, choice: Choice) -> None:
    """What the decision writes: the cursor, the new owner, the conversation opened (with a
    reply timer when rule 3 or 1 opened it) or queued."""
    state.cursor += choice.cursor_step
    if choice.new_owner:
        state.owners[customer] = choice.user
    if choice.reason == "queued":
        if customer not in state.queued_at:
            state.queue.append(customer)
            state.queued_at[customer] = state.now_ms
            if state.queue_max_wait_ms:
                state.deadlines[customer] = state.now_ms + state.queue_max_wait_ms
        return
    if choice.user and state.open.get(customer) != choice.user:
        _hold(state, customer, choice.user)
        _opened(state, customer, choice.reason)


def _opened(state: NumberState, customer: str, reason: str) -> None:
    """The conversation has a new user from a rule: tried starts again, and the reply timer
    runs for round_robin and owner."""
    state.tried.pop(customer, None)
    if state.reply_timeout_ms and reason in ("round_robin", "owner"):
        state.deadlines[customer] = state.now_ms + state.reply_timeout_ms
    else:
        state.deadlines.pop(customer, None)


def message(state: NumberState, customer: str) -> tuple[Choice, list[Move]]:
    """A message: the queue is served first (first come, first served), then rules 1-5."""
    moves = serve_queue(state)
    choice = decide(state, customer)
    apply(state, customer, choice)
    return choice, moves


def _unqueue(state: NumberState, customer: str) -> None:
    if state.queued_at.pop(customer, None) is not None:
        state.queue.remove(customer)
        state.deadlines.pop(customer, None)


def _give(state: NumberState, customer: str, user: str, reason: str, step: int = 0) -> Move:
    """A conversation given to ``user`` without a message: owner, holder, cursor follow."""
    previous = state.open.get(customer, "")
    state.cursor += step
    state.owners[customer] = user
    _hold(state, customer, user)
    return Move(customer, user, reason, previous)


def serve_queue(state: NumberState) -> list[Move]:
    """Waiting conversations, oldest first, to users by rule 3 while anyone is eligible; with
    when_nobody no longer ``queue``, the rest to the admin (if set)."""
    moves = []
    while state.queue:
        customer = state.queue[0]
        chosen = _round_robin(state)
        if chosen is None and (state.queue_when_nobody or not state.admin):
            break
        _unqueue(state, customer)
        if chosen is None:
            assert state.admin
            moves.append(_give(state, customer, state.admin, "admin_fallback"))
            _opened(state, customer, "admin_fallback")
        else:
            moves.append(_give(state, customer, chosen.user, "round_robin", chosen.cursor_step))
            _opened(state, customer, "round_robin")
    return moves


def timer(state: NumberState, customer: str) -> list[Move]:
    """The customer's timer, if due at ``now_ms``: a queued conversation waited long enough
    goes to the admin; an open one whose user did not reply moves on (see below). Then the
    queue is served."""
    due = state.deadlines.get(customer)
    moves: list[Move] = []
    if due is not None and due <= state.now_ms:
        del state.deadlines[customer]
        if customer in state.queued_at:
            if state.admin:
                _unqueue(state, customer)
                moves.append(_give(state, customer, state.admin, "admin_fallback"))
                _opened(state, customer, "admin_fallback")
        elif customer in state.open and customer not in state.replied:
            moves.extend(_reply_timeout(state, customer))
    return moves + serve_queue(state)


def _reply_timeout(state: NumberState, customer: str) -> list[Move]:
    """To the next eligible user by rule 3 who has not held it since it opened, with a new
    timer; when nobody is left, to the admin, without one; without an admin it stays."""
    holder = state.open[customer]
    tried = state.tried.get(customer, [holder])
    chosen = _round_robin(state, tried)
    if chosen is not None:
        move = _give(state, customer, chosen.user, "reply_timeout", chosen.cursor_step)
        state.deadlines[customer] = state.now_ms + state.reply_timeout_ms
    elif state.admin and state.admin != holder:
        move = _give(state, customer, state.admin, "admin_fallback")
    else:
        return []
    state.tried[customer] = [*tried, *([move.user] if move.user not in tried else [])]
    return [move]


def close(state: NumberState, customer: str) -> list[Move]:
    """Closes the conversation (open or queued); the queue is served after."""
    _unqueue(state, customer)
    if customer in state.open:
        _hold(state, customer, None)
        state.replied.discard(customer)
        state.deadlines.pop(customer, None)
        state.tried.pop(customer, None)
    return serve_queue(state)


def transfer(state: NumberState, customer: str, user: str) -> tuple[str, list[Move]]:
    """The user takes the conversation now, without a reply timer; the user who had it (or
    ""), and what the queue gave after."""
    _unqueue(state, customer)
    previous = state.open.get(customer, "")
    if previous:
        tried = state.tried.get(customer, [previous])
        state.tried[customer] = [*tried, *([user] if user not in tried else [])]
    else:
        state.tried.pop(customer, None)
    _hold(state, customer, user)
    state.owners[customer] = user
    state.replied.discard(customer)
    state.deadlines.pop(customer, None)
    return previous, serve_queue(state)


def heard(state: NumberState, user: str, at_ms: int) -> None:
    state.heard[user] = max(state.heard.get(user, 0), at_ms)


def replied(state: NumberState, customer: str, user: str, at_ms: int) -> list[Move]:
    """The user answered: the holder's reply stops the reply timer; the queue is served after
    (a reply is a heartbeat)."""
    heard(state, user, at_ms)
    if state.open.get(customer) == user:
        state.replied.add(customer)
        state.deadlines.pop(customer, None)
    return serve_queue(state)


def tried(state: NumberState, customer: str) -> list[str]:
    """Who held the open conversation since it opened (``rota conversation show``)."""
    holder = state.open.get(customer)
    return state.tried.get(customer, [holder]) if holder else []
