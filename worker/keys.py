"""Every Redis key name Rota uses. The only module that spells ``rota:``.

Keys of one account carry the hash tag ``{ACCOUNT}`` so a decision touches one Cluster slot.
"""

from __future__ import annotations

import re

PREFIX = "rota"
GROUP_REF = "group:"
RQ_PREFIX = f"{PREFIX}:rq"  # rq's keys (webhook jobs): rota:rq:queue:webhooks, rota:rq:job:ID...


def account_prefix(account: str) -> str:
    return f"{PREFIX}:{{{account}}}"


def presence(account: str) -> str:
    return f"{account_prefix(account)}:presence"


def account_settings(account: str) -> str:
    return f"{account_prefix(account)}:settings"


def group(account: str, name: str) -> str:
    return f"{account_prefix(account)}:group:{name}"


def number(account: str, number: str) -> str:
    return f"{account_prefix(account)}:number:{number}"


def members(account: str, number_: str) -> str:
    return f"{number(account, number_)}:members"


def access(account: str, number_: str) -> str:
    return f"{number(account, number_)}:access"


def cursor(account: str, number_: str) -> str:
    return f"{number(account, number_)}:cursor"


def owners(account: str, number_: str) -> str:
    return f"{number(account, number_)}:owners"


def heard(account: str) -> str:
    """user -> unix ms Rota last heard from the user (presence set, heartbeat, replied)."""
    return f"{account_prefix(account)}:heard"


def open_conversations(account: str, number_: str) -> str:
    """customer -> the user holding the customer's open conversation on the number."""
    return f"{number(account, number_)}:open"


def open_counts(account: str, number_: str) -> str:
    """user -> how many open conversations the user holds on the number."""
    return f"{number(account, number_)}:load"


def replied(account: str, number_: str) -> str:
    """customer -> 1 when the user holding the open conversation has replied since it opened."""
    return f"{number(account, number_)}:replied"


def queue(account: str, number_: str) -> str:
    """The customers waiting for a user on the number (when_nobody = queue), oldest first."""
    return f"{number(account, number_)}:queue"


def queued(account: str, number_: str) -> str:
    """customer -> unix ms it was queued, for each customer in the number's queue."""
    return f"{number(account, number_)}:queued"


def tried(account: str, number_: str) -> str:
    """customer -> the users (comma-separated, in order) who held the open conversation since
    it opened, once a second user held it (a reply timeout, a transfer)."""
    return f"{number(account, number_)}:tried"


def timers(account: str) -> str:
    """``NUMBER:CUSTOMER`` -> unix ms the conversation's timer is due (its reply deadline, or
    its queue wait's end); ``NUMBER`` -> 0 while the number's queue is not empty."""
    return f"{account_prefix(account)}:timers"


def timer(number_: str, customer: str = "") -> str:
    """A member of ``timers``: ``NUMBER:CUSTOMER`` for a conversation's timer, ``NUMBER`` for a
    number's waiting queue (lua/decide.lua spells the same)."""
    return f"{number_}:{customer}" if customer else number_


def outbox(account: str) -> str:
    """Conversation events written by the same script as the change they tell of, until a
    worker has copied them to the events stream."""
    return f"{account_prefix(account)}:outbox"


def swept_accounts() -> str:
    """The accounts the workers' sweeps visit (those that ever had a timer or an event in
    their outbox): not an account's key, so in a Cluster slot of its own."""
    return f"{PREFIX}:swept"


def event_sequence(account: str) -> str:
    """A counter that numbers the events published without a message (transfers...)."""
    return f"{account_prefix(account)}:events"


def version(account: str) -> str:
    """Bumped once by every write of members, access or groups (the rule is in
    worker.config_redis): compiled rotations go stale."""
    return f"{account_prefix(account)}:version"


def rotation(account: str, number_: str) -> str:
    """The compiled rotation L of a number."""
    return f"{number(account, number_)}:rotation"


def allowed(account: str, number_: str) -> str:
    """The number's access with groups expanded."""
    return f"{number(account, number_)}:allowed"


def compiled(account: str, number_: str) -> str:
    """``VERSION|RESTRICTED|SIZE``: the configuration version rotation and allowed were built
    at, whether access restricts the number, and |L|."""
    return f"{number(account, number_)}:compiled"


def dedup(account: str, bucket: int) -> str:
    """Decisions already made, by ``NUMBER:MESSAGE_ID``, for one time bucket."""
    return f"{account_prefix(account)}:dedup:{bucket}"


def chats(account: str, day: str) -> str:
    """New chats per user on one UTC day (``YYYY-MM-DD``): user -> count."""
    return f"{account_prefix(account)}:chats:{day}"


def published(inbound_stream: str) -> str:
    """The id up to which Rota's group has acknowledged every entry of an inbound stream,
    noted by worker.retention: where the group starts again if it is lost."""
    return f"{inbound_stream}:published"


def replay_claim(dead_stream: str, dead_id: str) -> str:
    """Held for a moment by the one replay that moves this dead letter when its streams are
    in different Cluster slots (worker.dead)."""
    return f"{dead_stream}:replaying:{dead_id}"


def accounts() -> str:
    """The names of the accounts that have configuration (worker.index): not an account's key,
    so in a Cluster slot of its own."""
    return f"{PREFIX}:accounts"


def whatsapp_numbers() -> str:
    """A WhatsApp Cloud API ``phone_number_id`` -> ``ACCOUNT NUMBER``, the number whose
    ``whatsapp_phone_number_id`` it is: how ``rota serve`` finds a delivery's account. Written by
    the writes of that setting (worker.config_redis); not an account's key, so in a Cluster
    slot of its own."""
    return f"{PREFIX}:whatsapp"


def indexed_numbers(account: str) -> str:
    """The account's numbers that have settings (worker.index)."""
    return f"{account_prefix(account)}:numbers"


def indexed_groups(account: str) -> str:
    """The account's groups (worker.index)."""
    return f"{account_prefix(account)}:groups"


def account_pattern(account: str) -> str:
    """SCAN pattern for every key of one account (braces are not special in Redis globs)."""
    return f"{account_prefix(account)}:*"


def group_name(entry: str) -> str | None:
    """``group:NAME`` -> ``NAME``; a plain user -> None."""
    return entry[len(GROUP_REF) :] if entry.startswith(GROUP_REF) else None


ALL_ACCOUNTS_PATTERN = f"{PREFIX}:{{*}}:*"  # SCAN pattern for every key of every account
_CONFIG_KEY = re.compile(
    rf"{PREFIX}:\{{(?P<account>[^}}]+)\}}:"
    r"(?:(?P<settings>settings)|group:(?P<group>.+)|number:(?P<number>[0-9]+))"
)


def config_key(key: str) -> tuple[str, str, str] | None:
    """``("settings", ACCOUNT, "")``, ``("group", ACCOUNT, NAME)`` or ``("number", ACCOUNT,
    NUMBER)`` for a key that holds configuration; None for any other key."""
    match = _CONFIG_KEY.fullmatch(key)
    if match is None:
        return None
    account = match["account"]
    if match["settings"]:
        return "settings", account, ""
    if match["group"] is not None:
        return "group", account, match["group"]
    return "number", account, match["number"]
