"""The configuration in Redis: the one reader and writer of accounts, groups and numbers.

``rota account/group/number set`` (merge: what is given changes, the rest stays) and ``rota
apply`` (replace: each account, group and number in the file is written as the file says)
write through the same functions here; ``rota export``, ``number show`` and the rules model
read through them.

Every write of one account is one MULTI/EXEC (an account's keys share its Cluster slot), so
workers see all of it or none of it. Redis does not roll a transaction back: it aborts one
only for what it refuses before EXEC (ACL, out of memory, a read-only replica, a moved
slot). So lists and sets are replaced whole (DEL, then written), and the keys a transaction
writes into without replacing them (a settings hash, the version counter) are checked under
WATCH first; a wrong type there fails the write before anything is written, and a change by
someone else in between makes it start again.

The version rule, the same on every path: a transaction that writes or deletes a number's
members or access, or a group's users, increments ``rota:{A}:version`` once (the script
compiles exactly those); nothing else moves it (admins and flags are read by each decision).

``apply`` writes account after account, in the file's order, and stops at the first that
fails (``ApplyFailed`` says which were written). Cursors, owners and presence are state, not
configuration: nothing here writes them.

A number's ``whatsapp_phone_number_id`` is also listed in ``rota:whatsapp`` (id -> ``ACCOUNT
NUMBER``), where the webhook looks a delivery's account up. That hash is in a Cluster slot of its
own, so it cannot share the account's transaction: the id is listed just before the transaction
that sets it, and an id the number no longer has is unlisted just after (only while it still
names that number). So the list never misses an id a number has; after a crash in between it
may name a number for an id it lost, until that id is set elsewhere or ``rota reindex`` runs.
An id another number still has is refused (``Conflict``), before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from worker import index, keys
from worker.config import MAX_WHOLE, AccountConfig, Config, NumberConfig
from worker.connection import AsyncClient, refusal
from worker.keys import group_name

FLAGS = ("assign_unknown", "online_only", "owner_online_only")
WHATSAPP_ID = "whatsapp_phone_number_id"
WHOLES = ("capacity", "queue_max_wait_s", "reply_timeout_s")  # 0: off
NEW_NUMBER = {"assign_unknown": "1", "online_only": "1"}  # the contract's defaults
ACCOUNT_FIELDS = ("admin", "presence_ttl_s")
MAX_TRIES = 100  # of one transaction whose watched keys keep changing


@dataclass(frozen=True)
class NumberChange:
    """What one write sets on a number; a field left None is kept as it is."""

    members: Sequence[str] | None = None
    access: Sequence[str] | None = None
    assign_unknown: bool | None = None
    online_only: bool | None = None
    admin: str | None = None
    capacity: int | None = None
    owner_online_only: bool | None = None
    when_nobody: str | None = None
    queue_max_wait_s: int | None = None
    reply_timeout_s: int | None = None
    whatsapp_phone_number_id: str | None = None  # "": removed

    @classmethod
    def whole(cls, number: NumberConfig) -> NumberChange:
        """All of a number, written over its just deleted settings: the conversation settings
        only when on (absent is off), so a file without them writes what it did before them."""
        return cls(
            number.members,
            number.access,
            number.assign_unknown,
            number.online_only,
            number.admin,
            capacity=number.capacity or None,
            owner_online_only=number.owner_online_only or None,
            when_nobody=number.when_nobody if number.when_nobody != "admin" else None,
            queue_max_wait_s=number.queue_max_wait_s or None,
            reply_timeout_s=number.reply_timeout_s or None,
            whatsapp_phone_number_id=number.whatsapp_phone_number_id,
        )

    def fields(self) -> dict[str, str]:
        """The settings hash's fields this change gives."""
        given = {
            name: str(int(value)) for name in FLAGS if (value := getattr(self, name)) is not None
        }
        given.update(
            {name: str(value) for name in WHOLES if (value := getattr(self, name)) is not None}
        )
        if self.when_nobody is not None:
            given["when_nobody"] = self.when_nobody
        if self.admin is not None:
            given["admin"] = self.admin
        if self.whatsapp_phone_number_id:
            given[WHATSAPP_ID] = self.whatsapp_phone_number_id
        return given

    @property
    def compiled(self) -> bool:
        """Whether it writes what the script compiles (so the version moves)."""
        return self.members is not None or self.access is not None


class Conflict(ValueError):
    """A ``whatsapp_phone_number_id`` that another number has: nothing was written."""


class ApplyFailed(redis.RedisError):
    """An account's transaction failed: the ones before it are written, it and the rest not."""

    def __init__(self, written: list[str], not_written: list[str], cause: Exception) -> None:
        self.written, self.not_written, self.cause = written, not_written, cause
        reason = (str(cause).splitlines() or [type(cause).__name__])[0]
        refused = refusal(cause)
        if refused is not None:
            reason = f"redis refused: {refused}"
        elif isinstance(cause, (redis.ConnectionError, redis.TimeoutError)):
            reason = f"redis unreachable: {reason}"
        super().__init__(
            f"apply stopped at account {not_written[0]} ({reason}); "
            f"written: {', '.join(written) or 'none'}; not written: {', '.join(not_written)}"
        )


# --- Reading --------------------------------------------------------------------------------


def read_number(client: Any, account: str, number: str) -> NumberConfig | None:
    """One number's configuration, read in one MULTI (a consistent snapshot); None when it has
    no settings. From a decoding client."""
    pipe = client.pipeline(transaction=True)
    _queue_read_number(pipe, account, number)
    settings, members, access = pipe.execute()
    return _number_from(settings, members, access)


def _queue_read_number(pipe: Any, account: str, number: str) -> None:
    pipe.hgetall(keys.number(account, number))
    pipe.lrange(keys.members(account, number), 0, -1)
    pipe.smembers(keys.access(account, number))


def _number_from(
    settings: dict[str, str], members: list[str], access: set[str]
) -> NumberConfig | None:
    if not settings:
        return None
    return NumberConfig(
        members=members,
        access=sorted(access),
        assign_unknown=settings.get("assign_unknown") != "0",
        online_only=settings.get("online_only") != "0",
        capacity=whole(settings.get("capacity")),
        owner_online_only=settings.get("owner_online_only") == "1",
        when_nobody=when_nobody(settings.get("when_nobody")),
        queue_max_wait_s=whole(settings.get("queue_max_wait_s")),
        reply_timeout_s=whole(settings.get("reply_timeout_s")),
        admin=settings.get("admin") or None,
        whatsapp_phone_number_id=settings.get(WHATSAPP_ID) or None,
    )


def whole(value: str | None) -> int:
    """A whole-number setting as stored; absent, or not a whole number in range (written by
    hand), is 0: off."""
    if value is None or not value.isascii() or not value.isdigit():
        return 0
    number = int(value)
    return number if number <= MAX_WHOLE else 0


def when_nobody(value: str | None) -> str:
    """As the worker reads it: ``queue`` only as exactly that, anything else is ``admin``."""
    return "queue" if value == "queue" else "admin"


def unix_ms(value: str | None) -> int | None:
    """A stored time (unix ms: a heard time, a queued-at); None when absent or no whole
    number (written by hand)."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def read_account(client: Any, account: str) -> AccountConfig:
    """The account's own settings (not its groups and numbers), from a decoding client."""
    admin, ttl = client.hmget(keys.account_settings(account), ACCOUNT_FIELDS)
    return _account_from(admin, ttl)


def _account_from(admin: str | None, presence_ttl_s: str | None) -> AccountConfig:
    return AccountConfig(admin=admin or None, presence_ttl_s=whole(presence_ttl_s))


def load(client: Any, accounts: Collection[str] | None = None) -> Config:
    """The current configuration (of the given accounts, else of all), from a decoding client,
    each account read in one MULTI.

    A group that a number names but that has no users is listed empty, so the result always
    passes ``config.parse`` again."""
    config: Config = {}
    for account, kinds in sorted(index.names(client, accounts).items()):
        pipe = client.pipeline(transaction=True)
        pipe.hmget(keys.account_settings(account), ACCOUNT_FIELDS)
        groups, numbers = sorted(kinds["group"]), sorted(kinds["number"])
        for name in groups:
            pipe.lrange(keys.group(account, name), 0, -1)
        for number in numbers:
            _queue_read_number(pipe, account, number)
        replies = iter(pipe.execute())
        loaded = _account_from(*next(replies))
        loaded.groups = {name: next(replies) for name in groups}
        for number in numbers:
            read = _number_from(next(replies), next(replies), next(replies))
            if read is None:  # removed since the index was read
                continue
            loaded.numbers[number] = read
            for entry in [*read.members, *read.access]:
                referenced = group_name(entry)
                if referenced is not None:
                    loaded.groups.setdefault(referenced, [])
        config[account] = loaded
    return config


# --- Writing --------------------------------------------------------------------------------


def set_account(
    client: Any, account: str, admin: str | None = None, presence_ttl_s: int | None = None
) -> None:
    """Changes what is given (a ``presence_ttl_s`` of 0 turns it off), keeps the rest."""
    given: dict[str, str | int | None] = {"admin": admin, "presence_ttl_s": presence_ttl_s}
    fields = {name: value for name, value in given.items() if value is not None}
    settings = [keys.account_settings(account)]
    _transact(
        client, account, settings, lambda pipe, _: _queue_account(pipe, account, fields), False
    )


def set_group(client: Any, account: str, name: str, users: Sequence[str]) -> None:
    _transact(client, account, [], lambda pipe, _: _queue_group(pipe, account, name, users), True)


def set_number(client: Any, account: str, number: str, change: NumberChange) -> None:
    """Merges the change into the number; a new number gets the contract's defaults. Raises
    Conflict, writing nothing, when the change's whatsapp_phone_number_id is another number's."""
    settings = keys.number(account, number)
    given = change.whatsapp_phone_number_id
    before = client.hget(settings, WHATSAPP_ID) if given is not None else None
    if given:
        _refuse_conflicts(client, {given: (account, number)})
        _list_whatsapp_ids(client, {given: (account, number)})

    def queue(pipe: Any, lengths: dict[str, int]) -> None:
        _queue_number(pipe, account, number, change, new=lengths[settings] == 0)

    _transact(client, account, [settings], queue, change.compiled)
    if before and before != given:
        _unlist_whatsapp_id(client, before, account, number)


def apply(client: Any, config: Config, prune: bool = False) -> None:
    """Writes each account as the configuration says, one transaction each, in order; with
    ``prune`` also removes the account's groups and numbers it leaves out. Raises ApplyFailed
    at the first account that fails: the ones before it are written, it and the rest not."""
    claims = {
        found: (account, number)
        for account, wanted in config.items()
        for number, settings in wanted.numbers.items()
        if (found := settings.whatsapp_phone_number_id)
    }

    def rewritten(account: str, number: str) -> bool:
        """Whether this apply writes the number (so its id is the file's) or may prune it."""
        return account in config and (prune or number in config[account].numbers)

    _refuse_conflicts(client, claims, rewritten)
    written: list[str] = []
    for account, wanted in config.items():
        try:
            _apply_account(client, account, wanted, prune)
        except (redis.RedisError, RedisClusterException) as error:
            raise ApplyFailed(written, [a for a in config if a not in written], error) from error
        written.append(account)


def _apply_account(client: Any, account: str, wanted: AccountConfig, prune: bool) -> None:
    # Unchecked: what the index names but is gone leaves the index too.
    existing = index.names(client, [account], check=False).get(account) if prune else None
    stale_groups = existing["group"] - set(wanted.groups) if existing else set()
    stale_numbers = existing["number"] - set(wanted.numbers) if existing else set()

    def queue(pipe: Any, _: dict[str, int]) -> None:
        _queue_account(
            pipe, account, {"admin": wanted.admin, "presence_ttl_s": wanted.presence_ttl_s}
        )
        for name, users in wanted.groups.items():
            _queue_group(pipe, account, name, users)
        for number, settings in wanted.numbers.items():
            pipe.delete(keys.number(account, number))  # replaced: it holds what the file says
            _queue_number(pipe, account, number, NumberChange.whole(settings), new=True)
        _queue_prune(pipe, account, stale_groups, stale_numbers)

    compiled = bool(wanted.groups or wanted.numbers or stale_groups or stale_numbers)
    replaced = sorted({*wanted.numbers, *stale_numbers})
    before = _whatsapp_ids(client, account, replaced)
    _list_whatsapp_ids(
        client,
        {
            found: (account, number)
            for number, settings in wanted.numbers.items()
            if (found := settings.whatsapp_phone_number_id)
        },
    )
    _transact(client, account, [keys.account_settings(account)], queue, compiled)
    for number, old in before.items():
        kept = wanted.numbers.get(number)
        if kept is None or kept.whatsapp_phone_number_id != old:
            _unlist_whatsapp_id(client, old, account, number)


def _transact(
    client: Any,
    account: str,
    hashes: Sequence[str],
    queue: Callable[[Any, dict[str, int]], None],
    compiled: bool,
) -> None:
    """One MULTI/EXEC of the writes ``queue`` adds, plus the version's increment when they are
    ``compiled`` inputs; first, under WATCH, ``hashes`` (written into, not replaced) must be
    hashes or absent and the version an integer, else nothing is written. ``queue`` gets the
    length of each of ``hashes``, unchanged until EXEC (or EXEC fails and it starts again)."""
    version = keys.version(account)
    watched = [*hashes, version] if compiled else list(hashes)
    index.note_accounts(client, [account])
    with client.pipeline(transaction=True) as pipe:
        for _ in range(MAX_TRIES):
            try:
                lengths: dict[str, int] = {}
                if watched:
                    pipe.watch(*watched)
                    lengths = _check(pipe, hashes, version if compiled else None)
                pipe.multi()
                queue(pipe, lengths)
                if compiled:
                    pipe.incr(version)
                pipe.execute()
                return
            except redis.WatchError:
                continue
    raise redis.WatchError(f"account {account}'s configuration changed during {MAX_TRIES} tries")


def _check(pipe: Any, hashes: Sequence[str], version: str | None) -> dict[str, int]:
    """Each of ``hashes``' length; raises (naming the key) unless each is a hash or absent and
    ``version`` holds an integer or nothing: what would make EXEC fail after some writes."""
    lengths = {key: int(_named(key, pipe.hlen)) for key in hashes}
    if version is not None:
        value = _named(version, pipe.get)
        if value is not None and not _is_integer(value):
            raise redis.ResponseError(f"{version} holds {value!r}, not an integer")
    return lengths


def _named(key: str, read: Callable[[str], Any]) -> Any:
    try:
        return read(key)
    except redis.ResponseError as error:
        if type(error) is not redis.ResponseError:  # NOPERM ...: keep what it is
            raise
        raise redis.ResponseError(f"{key}: {error}") from error  # WRONGTYPE: which key


def _is_integer(value: str) -> bool:
    """What INCR accepts: a signed 64-bit integer in its plain decimal form."""
    try:
        number = int(value)
    except ValueError:
        return False
    return str(number) == value and -(2**63) <= number < 2**63


def _queue_account(pipe: Any, account: str, fields: Mapping[str, str | int | None]) -> None:
    """Writes the given account settings; an empty or 0 value is removed (absent: none, off)."""
    key = keys.account_settings(account)
    for name, value in fields.items():
        if value:
            pipe.hset(key, name, str(value))
        else:
            pipe.hdel(key, name)


def _queue_group(pipe: Any, account: str, name: str, users: Sequence[str]) -> None:
    index.note(pipe, account, groups=[name])
    pipe.delete(keys.group(account, name))
    if users:
        pipe.rpush(keys.group(account, name), *users)


def _queue_number(pipe: Any, account: str, number: str, change: NumberChange, new: bool) -> None:
    """Merges ``change`` into the number's keys; a ``new`` number (no settings, or settings
    just deleted) gets the contract's defaults for what the change leaves out."""
    index.note(pipe, account, numbers=[number])
    fields = {**NEW_NUMBER, **change.fields()} if new else change.fields()
    if fields:
        pipe.hset(keys.number(account, number), mapping=fields)
    if change.whatsapp_phone_number_id == "":
        pipe.hdel(keys.number(account, number), WHATSAPP_ID)
    for key, entries, write in (
        (keys.members(account, number), change.members, pipe.rpush),
        (keys.access(account, number), change.access, pipe.sadd),
    ):
        if entries is not None:
            pipe.delete(key)
            if entries:
                write(key, *entries)


def _queue_prune(pipe: Any, account: str, groups: set[str], numbers: set[str]) -> None:
    """Removes the given groups and numbers' configuration; a pruned number's state (cursor,
    owners, open conversations with their counts and replies) stays, in case it comes back."""
    index.forget(pipe, account, numbers=numbers, groups=groups)
    for name in groups:
        pipe.delete(keys.group(account, name))
    for number in numbers:
        pipe.delete(
            keys.number(account, number),
            keys.members(account, number),
            keys.access(account, number),
            keys.rotation(account, number),
            keys.allowed(account, number),
            keys.compiled(account, number),
        )


# --- rota:whatsapp: phone_number_id -> the number that has it -------------------------------


async def whatsapp_accounts(
    client: AsyncClient, phone_number_ids: Collection[str]
) -> dict[str, str]:
    """phone_number_id -> the account of the number that has it, for the ids listed (one
    HMGET), from a decoding asyncio client (the webhook's)."""
    wanted = list(phone_number_ids)
    if not wanted:
        return {}
    found = await client.hmget(keys.whatsapp_numbers(), wanted)
    return {
        phone_number_id: owner.partition(" ")[0]
        for phone_number_id, owner in zip(wanted, found, strict=True)
        if isinstance(owner, str) and owner
    }


def _owner(account: str, number: str) -> str:
    return f"{account} {number}"


def _whatsapp_ids(client: Any, account: str, numbers: Sequence[str]) -> dict[str, str]:
    """number -> its whatsapp_phone_number_id, for those of ``numbers`` that have one."""
    if not numbers:
        return {}
    pipe = client.pipeline(transaction=False)
    for number in numbers:
        pipe.hget(keys.number(account, number), WHATSAPP_ID)
    found = pipe.execute()
    return {number: value for number, value in zip(numbers, found, strict=True) if value}


def _refuse_conflicts(
    client: Any,
    claims: Mapping[str, tuple[str, str]],
    rewritten: Callable[[str, str], bool] = lambda account, number: False,
) -> None:
    """Raises Conflict when an id claimed for one number is listed for another that still has
    it (and that is not ``rewritten`` by the same write, which says what its id becomes)."""
    if not claims:
        return
    ids = list(claims)
    listed = client.hmget(keys.whatsapp_numbers(), ids)
    others = {
        phone_number_id: (account, number)
        for phone_number_id, owner in zip(ids, listed, strict=True)
        if owner and owner != _owner(*claims[phone_number_id])
        for account, _, number in [owner.partition(" ")]
        if not rewritten(account, number)
    }
    if not others:
        return
    pipe = client.pipeline(transaction=False)
    for account, number in others.values():
        pipe.hget(keys.number(account, number), WHATSAPP_ID)
    for (phone_number_id, (account, number)), has in zip(
        others.items(), pipe.execute(), strict=True
    ):
        if has == phone_number_id:
            raise Conflict(
                f"whatsapp_phone_number_id {phone_number_id} is already account {account} "
                f"number {number}'s; remove it there first"
            )


def _list_whatsapp_ids(client: Any, claims: Mapping[str, tuple[str, str]]) -> None:
    """Before the transaction that sets them."""
    if claims:
        mapping = {found: _owner(*owner) for found, owner in claims.items()}
        client.hset(keys.whatsapp_numbers(), mapping=mapping)


def _unlist_whatsapp_id(client: Any, phone_number_id: str, account: str, number: str) -> None:
    """After the transaction that took the id off the number: removes its entry if it still
    names that number (another may have been given the id meanwhile)."""
    key, owner = keys.whatsapp_numbers(), _owner(account, number)
    with client.pipeline(transaction=True) as pipe:
        for _ in range(MAX_TRIES):
            try:
                pipe.watch(key)
                if pipe.hget(key, phone_number_id) != owner:
                    return
                pipe.multi()
                pipe.hdel(key, phone_number_id)
                pipe.execute()
                return
            except redis.WatchError:
                continue


def rebuild_whatsapp(client: Any, numbers: Mapping[str, Collection[str]]) -> int:
    """``rota reindex``: lists the id of each of the given numbers (account -> numbers) and
    unlists each listed id whose number no longer has it. Returns how many ids are listed."""
    claims: dict[str, tuple[str, str]] = {}
    for account, names in sorted(numbers.items()):
        for number, found in _whatsapp_ids(client, account, sorted(names)).items():
            claims[found] = (account, number)
    _list_whatsapp_ids(client, claims)
    for phone_number_id, owner in client.hgetall(keys.whatsapp_numbers()).items():
        account, _, number = owner.partition(" ")
        if client.hget(keys.number(account, number), WHATSAPP_ID) != phone_number_id:
            _unlist_whatsapp_id(client, phone_number_id, account, number)
    return int(client.hlen(keys.whatsapp_numbers()))
