"""The contract's decision rules in plain Python, over a snapshot of one number.

decide.lua is what decides; this model explains a number (``rota number show``: who is
eligible, who is next) and is the reference the property test holds the script to.
"""

from __future__ import annotations

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


def decide(state: NumberState, customer: str) -> Choice:
    owner = _owner_keeps(state, customer)
    if owner is not None:
        return Choice(owner, "owner")
    if not state.assign_unknown:
        return Choice("", "unknown_disabled")
    users = rotation(state)
    for i in range(len(users)):
        user = users[(state.cursor + i) % len(users)]
        if is_eligible(state, user):
            return Choice(user, "round_robin", cursor_step=i + 1, new_owner=True)
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
    """What the decision writes: the cursor, the new owner, the conversation opened."""
    state.cursor += choice.cursor_step
    if choice.new_owner:
        state.owners[customer] = choice.user
    if choice.user:
        _hold(state, customer, choice.user)


def close(state: NumberState, customer: str) -> None:
    if customer in state.open:
        _hold(state, customer, None)
        state.replied.discard(customer)


def transfer(state: NumberState, customer: str, user: str) -> str:
    """The user takes the conversation now; the user who had it (or "")."""
    previous = state.open.get(customer, "")
    _hold(state, customer, user)
    state.owners[customer] = user
    state.replied.discard(customer)
    return previous


def heard(state: NumberState, user: str, at_ms: int) -> None:
    state.heard[user] = max(state.heard.get(user, 0), at_ms)


def replied(state: NumberState, customer: str, user: str, at_ms: int) -> None:
    heard(state, user, at_ms)
    if state.open.get(customer) == user:
        state.replied.add(customer)
