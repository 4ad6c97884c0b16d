"""Account, number, group, presence and owner settings; ``number show``.

Inputs arrive validated (worker.words); configuration is read and written by
worker.config_redis, each command's writes in one MULTI/EXEC.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from worker import chats, clock, config_redis, index, keys, presence, rules
from worker import client as rota_client
from worker.config import NumberConfig
from worker.keys import group_name
from worker.settings import Settings


def accounts(client: Any) -> list[str]:
    """The accounts noted as having configuration (worker.index), sorted, from a decoding
    client; one whose keys were all deleted by hand may still be listed."""
    return sorted(client.smembers(keys.accounts()))


def numbers(client: Any, account: str) -> list[str]:
    """The account's numbers that have settings (worker.index), sorted."""
    return sorted(index.names(client, [account]).get(account, {}).get("number", ()))


def set_account(
    client: Any, account: str, admin: str | None = None, presence_ttl_s: int | None = None
) -> None:
    config_redis.set_account(client, account, admin, presence_ttl_s)


def set_group(client: Any, account: str, group: str, users: Sequence[str]) -> None:
    config_redis.set_group(client, account, group, users)


def set_presence(client: Any, account: str, user: str, status: str) -> None:
    """The status as given (tests write what a CRM's HSET could), heard now (worker.client)."""
    rota_client.write_presence(client, account, user, status)


def set_owner(client: Any, account: str, number: str, customer: str, user: str) -> None:
    client.hset(keys.owners(account, number), customer, user)


def set_number(
    client: Any,
    account: str,
    number: str,
    members: Sequence[str] | None = None,
    access: Sequence[str] | None = None,
    assign_unknown: bool | None = None,
    online_only: bool | None = None,
    admin: str | None = None,
    capacity: int | None = None,
    owner_online_only: bool | None = None,
    when_nobody: str | None = None,
    queue_max_wait_s: int | None = None,
    reply_timeout_s: int | None = None,
    whatsapp_phone_number_id: str | None = None,
) -> list[str]:
    """Changes what is given, keeps the rest, atomically (worker.config_redis); new numbers get
    assign_unknown and online_only on; a ``whatsapp_phone_number_id`` of "" removes it (one
    that another number has raises config_redis.Conflict, writing nothing). Returns warnings:
    members that access leaves out."""
    change = config_redis.NumberChange(
        members,
        access,
        assign_unknown,
        online_only,
        admin,
        capacity=capacity,
        owner_online_only=owner_online_only,
        when_nobody=when_nobody,
        queue_max_wait_s=queue_max_wait_s,
        reply_timeout_s=reply_timeout_s,
        whatsapp_phone_number_id=whatsapp_phone_number_id,
    )
    config_redis.set_number(client, account, number, change)
    state = load_number(client, account, number)
    may_use = rules.allowed(state)
    if may_use is None:
        return []
    members_ = dict.fromkeys(rules.expand(state.members, state.groups))  # first place kept
    outside = [user for user in members_ if user not in may_use]
    return [f"member {user} has no access to {number} and will not get chats" for user in outside]


def load_number(client: Any, account: str, number: str) -> rules.NumberState:
    """A snapshot of one number for the rules model (owners left out: they can be millions)."""
    config = config_redis.read_number(client, account, number) or NumberConfig()
    members, access = config.members, set(config.access)
    names = {n for n in map(group_name, [*members, *access]) if n is not None}
    groups = {name: client.lrange(keys.group(account, name), 0, -1) for name in sorted(names)}
    account_config = config_redis.read_account(client, account)
    state = rules.NumberState(
        members=members,
        access=access,
        groups=groups,
        assign_unknown=config.assign_unknown,
        online_only=config.online_only,
        admin=config.admin or client.hget(keys.account_settings(account), "admin") or None,
        cursor=int(client.get(keys.cursor(account, number)) or 0),
        capacity=config.capacity,
        owner_online_only=config.owner_online_only,
        presence_ttl_ms=account_config.presence_ttl_s * 1000,
        now_ms=clock.server_ms(client),
        load=open_counts(client, account, number),
        queue_when_nobody=config.when_nobody == "queue",
        queue_max_wait_ms=config.queue_max_wait_s * 1000,
        reply_timeout_ms=config.reply_timeout_s * 1000,
    )
    state.queue, state.queued_at = waiting(client, account, number)
    users = rules.expand(members, groups)
    state.presence = presence.statuses(client, account, users)
    if users and state.presence_ttl_ms:
        heard = client.hmget(keys.heard(account), users)
        state.heard = {
            u: t for u, t in zip(users, map(config_redis.unix_ms, heard), strict=True) if t
        }
    return state


def waiting(client: Any, account: str, number: str) -> tuple[list[str], dict[str, int]]:
    """The number's queue, oldest first, and when each of its customers was queued (unix ms),
    read in one MULTI. Each customer once, and only with a readable time, so that the model's
    queue and times agree (one edited by hand would otherwise never leave the model's queue)."""
    pipe = client.pipeline(transaction=True)
    pipe.lrange(keys.queue(account, number), 0, -1)
    pipe.hgetall(keys.queued(account, number))
    queue, stored = pipe.execute()
    queued_at: dict[str, int] = {}
    for customer in queue:
        at = config_redis.unix_ms(stored.get(customer))
        if at is not None:
            queued_at.setdefault(customer, at)
    return list(queued_at), queued_at


def oldest_wait_ms(state: rules.NumberState) -> int | None:
    """How long the queue's first customer has waited; None when nobody waits (or its time
    cannot be read)."""
    queued_at = state.queued_at.get(state.queue[0]) if state.queue else None
    return None if queued_at is None else max(0, state.now_ms - queued_at)


def show_number(client: Any, account: str, number: str) -> dict[str, Any] | None:
    """What an operator asks first about a number; None when it has no settings."""
    config = config_redis.read_number(client, account, number)
    if config is None:
        return None
    state = load_number(client, account, number)
    # A new message is decided after the queue is served: waiting customers come first.
    ahead = copy.deepcopy(state)
    rules.serve_queue(ahead)
    next_choice = rules.decide(ahead, customer="")
    today = chats.today(client, account, state.now_ms)
    open_now, full = state.load, rules.at_capacity(state)
    return {
        "account": account,
        "number": number,
        "settings": {
            "assign_unknown": state.assign_unknown,
            "online_only": state.online_only,
            "capacity": config.capacity,
            "owner_online_only": config.owner_online_only,
            "when_nobody": config.when_nobody,
            "queue_max_wait_s": config.queue_max_wait_s,
            "reply_timeout_s": config.reply_timeout_s,
            "presence_ttl_s": state.presence_ttl_ms // 1000,
            "admin": config.admin,
            "effective_admin": state.admin,
            "whatsapp_phone_number_id": config.whatsapp_phone_number_id,
        },
        "members": state.members,
        "access": sorted(state.access),
        "expanded_members": rules.rotation(state),
        "presence": {u: state.presence.get(u, "unavailable") for u in rules.rotation(state)},
        "eligible_now": rules.eligible(state),
        "cursor": state.cursor,
        "next": {"user": next_choice.user, "reason": next_choice.reason},
        "known_customers": client.hlen(keys.owners(account, number)),
        "open": open_now,  # open conversations per user on this number
        "at_capacity": full,
        "queue": len(state.queue),  # customers waiting for a user (when_nobody = queue)
        "oldest_wait_ms": oldest_wait_ms(state),
        # New chats today (UTC) per user of the rotation, on all the account's numbers.
        "chats_today": {user: today.get(user, 0) for user in rules.rotation(state)},
    }


def open_counts(client: Any, account: str, number: str) -> dict[str, int]:
    """user -> open conversations on the number, users with none left out (a count written
    by hand that is no whole number counts as none)."""
    stored = client.hgetall(keys.open_counts(account, number))
    counts = {user: config_redis.whole(value) for user, value in stored.items()}
    return {user: counts[user] for user in sorted(counts) if counts[user] > 0}


def send(client: Any, settings: Settings, fields: dict[str, str]) -> str:
    """XADD, unchecked, to the inbound stream, or to the account's partition."""
    return rota_client.add(client, settings, fields)
