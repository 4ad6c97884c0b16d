"""Which accounts, numbers and groups have configuration, kept in sets beside it, so that
``rota export``, ``rota apply --prune`` and ``rota stats ACCOUNT`` find them without SCAN: an
ACL cannot limit SCAN to Rota's own keys (it lists every key name of the database), so Rota's
Redis user is not granted it.

Every writer of configuration notes what it writes: the account's sets in the same transaction
as the configuration, the list of accounts (a key in another Cluster slot) just before it. So
an entry may outlive what it names (a key deleted by hand: readers check that it exists), but
nothing written by ``rota`` is ever missing. ``rebuild`` fills the sets from a SCAN, once, for
configuration written before they existed or by hand.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from typing import Any

from worker import keys

SCAN_COUNT = 1000
# account -> {"settings" | "group" | "number" -> names}; "settings" holds "" when the account's
# settings hash exists.
Names = dict[str, dict[str, set[str]]]


def note_accounts(client: Any, accounts: Collection[str]) -> None:
    """Before the accounts' own transactions."""
    if accounts:
        client.sadd(keys.accounts(), *accounts)


def note(
    pipe: Any, account: str, numbers: Collection[str] = (), groups: Collection[str] = ()
) -> None:
    """In the transaction that writes the account's numbers and groups."""
    if numbers:
        pipe.sadd(keys.indexed_numbers(account), *numbers)
    if groups:
        pipe.sadd(keys.indexed_groups(account), *groups)


def forget(
    pipe: Any, account: str, numbers: Collection[str] = (), groups: Collection[str] = ()
) -> None:
    """In the transaction that deletes them."""
    if numbers:
        pipe.srem(keys.indexed_numbers(account), *numbers)
    if groups:
        pipe.srem(keys.indexed_groups(account), *groups)


def names(client: Any, accounts: Collection[str] | None = None, check: bool = True) -> Names:
    """The configuration of the given accounts (else of every indexed one), from a decoding
    client: the indexed names whose keys exist, or (``check`` off) every indexed name."""
    wanted = sorted(client.smembers(keys.accounts()) if accounts is None else accounts)
    pipe = client.pipeline(transaction=False)
    for account in wanted:
        pipe.smembers(keys.indexed_numbers(account))
        pipe.smembers(keys.indexed_groups(account))
    replies = iter(pipe.execute())
    listed: list[tuple[str, str, str]] = []
    for account in wanted:
        listed.append((account, "settings", ""))
        listed += [(account, "number", number) for number in next(replies)]
        listed += [(account, "group", group) for group in next(replies)]
    if check:
        pipe = client.pipeline(transaction=False)
        for account, kind, name in listed:
            pipe.exists(_key(account, kind, name))
        listed = [entry for entry, exists in zip(listed, pipe.execute(), strict=True) if exists]
    found: Names = defaultdict(lambda: defaultdict(set))
    for account, kind, name in listed:
        found[account][kind].add(name)
    return found


def _key(account: str, kind: str, name: str) -> str:
    if kind == "settings":
        return keys.account_settings(account)
    return keys.number(account, name) if kind == "number" else keys.group(account, name)


def rebuild(client: Any) -> Names:
    """Notes every configuration key a SCAN finds (needs a Redis user allowed to SCAN); adds,
    never removes, so writers running meanwhile lose nothing."""
    found: Names = defaultdict(lambda: defaultdict(set))
    for key in client.scan_iter(match=keys.ALL_ACCOUNTS_PATTERN, count=SCAN_COUNT):
        parsed = keys.config_key(key)
        if parsed is not None:
            kind, account, name = parsed
            found[account][kind].add(name)
    note_accounts(client, list(found))
    for account, kinds in found.items():
        pipe = client.pipeline(transaction=True)
        note(pipe, account, kinds["number"], kinds["group"])
        pipe.execute()
    return found
