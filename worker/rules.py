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
    return presence.is_available(state.presence.get(user))


def eligible(state: NumberState) -> list[str]:
    users = rotation(state)
    return [u for u in users if is_available(state, u)] if state.online_only else users


def decide(state: NumberState, customer: str) -> Choice:
    may_use = allowed(state)
    owner = state.owners.get(customer)
    if owner is not None and (may_use is None or owner in may_use or owner == state.admin):
        return Choice(owner, "owner")
    if not state.assign_unknown:
        return Choice("", "unknown_disabled")
    users = rotation(state)
    for i in range(len(users)):
        user = users[(state.cursor + i) % len(users)]
        if not state.online_only or is_available(state, user):
            return Choice(user, "round_robin", cursor_step=i + 1, new_owner=True)
    if state.admin:
        return Choice(state.admin, "admin_fallback", new_owner=True)
    return Choice("", "no_admin")


def apply(state: NumberState, customer: str, choice: Choice) -> None:
    """What the decision writes: the cursor and the new owner."""
    state.cursor += choice.cursor_step
    if choice.new_owner:
        state.owners[customer] = choice.user
