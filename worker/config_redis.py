"""The configuration (worker.config) read from Redis and written to it, atomically.

``apply`` writes a checked configuration in one MULTI/EXEC, so workers see all of it or none
of it, and bumps each account's version in the same transaction (compiled rotations go
stale). Each account, group and number in the file is written as the file says; the ones it
leaves out stay, unless ``prune`` removes an account's other groups and numbers. Cursors,
owners and presence are state, not configuration: apply never touches them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from typing import Any

from worker import keys
from worker.config import AccountConfig, Config, NumberConfig
from worker.keys import group_name

SCAN_COUNT = 1000


def _names(client: Any, accounts: Collection[str] | None) -> dict[str, dict[str, set[str]]]:
    """account -> {"settings"|"group"|"number" -> names} for every configuration key."""
    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    patterns = (
        [keys.account_pattern(a) for a in accounts]
        if accounts is not None
        else [keys.ALL_ACCOUNTS_PATTERN]
    )
    for pattern in patterns:
        for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
            parsed = keys.config_key(key)
            if parsed is not None:
                kind, account, name = parsed
                found[account][kind].add(name)
    return found


def load(client: Any, accounts: Collection[str] | None = None) -> Config:
    """The current configuration (of the given accounts, else of all), from a decoding client.

    A group that a number names but that has no users is listed empty, so the result always
    passes ``config.parse`` again."""
    config: Config = {}
    for account, kinds in sorted(_names(client, accounts).items()):
        pipe = client.pipeline(transaction=False)
        pipe.hget(keys.account_settings(account), "admin")
        groups, numbers = sorted(kinds["group"]), sorted(kinds["number"])
        for name in groups:
            pipe.lrange(keys.group(account, name), 0, -1)
        for number in numbers:
            pipe.hgetall(keys.number(account, number))
            pipe.lrange(keys.members(account, number), 0, -1)
            pipe.smembers(keys.access(account, number))
        replies = iter(pipe.execute())
        loaded = AccountConfig(admin=next(replies) or None)
        loaded.groups = {name: next(replies) for name in groups}
        for number in numbers:
            settings, members, access = next(replies), next(replies), next(replies)
            loaded.numbers[number] = NumberConfig(
                members=members,
                access=sorted(access),
                assign_unknown=settings.get("assign_unknown") != "0",
                online_only=settings.get("online_only") != "0",
                admin=settings.get("admin") or None,
            )
            for entry in [*members, *access]:
                referenced = group_name(entry)
                if referenced is not None:
                    loaded.groups.setdefault(referenced, [])
        config[account] = loaded
    return config


def apply(client: Any, config: Config, prune: bool = False) -> None:
    """Writes the whole configuration in one transaction."""
    existing = _names(client, list(config)) if prune else {}
    pipe = client.pipeline(transaction=True)
    for account, wanted in config.items():
        _write_account(pipe, account, wanted)
        if prune and account in existing:
            _prune(pipe, account, wanted, existing[account])
        pipe.incr(keys.version(account))
    pipe.execute()


def _write_account(pipe: Any, account: str, wanted: AccountConfig) -> None:
    if wanted.admin:
        pipe.hset(keys.account_settings(account), "admin", wanted.admin)
    else:
        pipe.hdel(keys.account_settings(account), "admin")
    for name, users in wanted.groups.items():
        pipe.delete(keys.group(account, name))
        if users:
            pipe.rpush(keys.group(account, name), *users)
    for number, settings in wanted.numbers.items():
        fields: dict[str, Any] = {
            "assign_unknown": int(settings.assign_unknown),
            "online_only": int(settings.online_only),
        }
        if settings.admin:
            fields["admin"] = settings.admin
        pipe.delete(keys.number(account, number))
        pipe.hset(keys.number(account, number), mapping=fields)
        for key, entries, write in (
            (keys.members(account, number), settings.members, pipe.rpush),
            (keys.access(account, number), settings.access, pipe.sadd),
        ):
            pipe.delete(key)
            if entries:
                write(key, *entries)


def _prune(pipe: Any, account: str, wanted: AccountConfig, existing: dict[str, set[str]]) -> None:
    """Removes the configuration of the account's groups and numbers the file leaves out;
    a pruned number's cursor and owners stay, in case it comes back."""
    for name in existing["group"] - set(wanted.groups):
        pipe.delete(keys.group(account, name))
    for number in existing["number"] - set(wanted.numbers):
        pipe.delete(
            keys.number(account, number),
            keys.members(account, number),
            keys.access(account, number),
            keys.rotation(account, number),
            keys.allowed(account, number),
            keys.compiled(account, number),
        )
