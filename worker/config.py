"""Rota's configuration as a TOML file: accounts, their admins, groups and numbers.

    [accounts.acme]
    admin = "boss"                          # left out: no account admin
    presence_ttl_s = 300                    # left out: 0 (off)

    [accounts.acme.groups]
    sales = ["alice", "bob"]

    [accounts.acme.numbers.15550001000]
    members = ["carol", "group:sales"]      # rotation order
    access = ["carol", "group:sales"]       # empty or left out: everyone may use the number
    assign_unknown = true                   # left out: true
    online_only = true                      # left out: true
    capacity = 5                            # left out: 0 (off)
    owner_online_only = true                # left out: false
    when_nobody = "queue"                   # left out: "admin"
    queue_max_wait_s = 600                  # left out: 0 (none)
    reply_timeout_s = 120                   # left out: 0 (off)
    admin = "boss2"                         # left out: the account's admin
    whatsapp_phone_number_id = "106540352242922"  # Meta's id of it; left out: none

``parse`` checks all of a file and names the line of the first error; ``render`` writes the
same format (``rota export``). No Redis here: worker.config_redis reads and writes it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker import rules, words
from worker.keys import group_name
from worker.tomlpos import Path, key_lines, line_of

ACCOUNT_KEYS = ("admin", "presence_ttl_s", "groups", "numbers")
NUMBER_KEYS = (
    "members",
    "access",
    "assign_unknown",
    "online_only",
    "capacity",
    "owner_online_only",
    "when_nobody",
    "queue_max_wait_s",
    "reply_timeout_s",
    "admin",
    "whatsapp_phone_number_id",
)
# What rule 4 does when nobody is eligible: give the chat to the admin, or let it wait.
WHEN_NOBODY = ("admin", "queue")
# The largest whole-number setting (seconds, a capacity): far beyond any real one, and small
# enough that the script's arithmetic on it (seconds to milliseconds) stays exact.
MAX_WHOLE = 2**31 - 1
HEADER = "# Rota configuration: `rota apply FILE` writes it, `rota export` prints it."
WRAP_AT = 100


@dataclass
class NumberConfig:
    members: list[str] = field(default_factory=list)
    access: list[str] = field(default_factory=list)
    assign_unknown: bool = True
    online_only: bool = True
    capacity: int = 0  # open conversations per user on the number; 0: no limit
    owner_online_only: bool = False
    when_nobody: str = "admin"  # one of WHEN_NOBODY
    queue_max_wait_s: int = 0  # a queued conversation's wait before the admin; 0: none
    reply_timeout_s: int = 0  # 0: off
    admin: str | None = None
    # The WhatsApp Cloud API's id of this number (metadata.phone_number_id of its webhooks):
    # how rota serve finds the account of a delivery.
    whatsapp_phone_number_id: str | None = None


@dataclass
class AccountConfig:
    admin: str | None = None
    presence_ttl_s: int = 0  # 0: presence never goes stale
    groups: dict[str, list[str]] = field(default_factory=dict)
    numbers: dict[str, NumberConfig] = field(default_factory=dict)


Config = dict[str, AccountConfig]


_WHATSAPP_ID = re.compile(r"[0-9]{1,64}")


def whatsapp_phone_number_id(text: str) -> str:
    """Meta's id of a business phone number: digits (it is not the phone number itself)."""
    if not _WHATSAPP_ID.fullmatch(text):
        raise words.InvalidWord(
            f"whatsapp_phone_number_id {text[:80]!r} must be 1-64 digits (Meta's phone number id)"
        )
    return text


class ConfigError(ValueError):
    """An invalid file: ``FILE:LINE: where: what``."""


class _Invalid(ValueError):
    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def parse(text: str, filename: str) -> Config:
    """The whole file, checked; raises ConfigError naming the first problem's line."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        where = re.search(r"\(at line (\d+), column \d+\)", str(error))
        reason = re.sub(r"\s*\(at .*\)$", "", str(error))
        line = where.group(1) if where else str(text.count("\n") + 1)  # "at end of document"
        raise ConfigError(f"{filename}:{line}: {reason[:1].lower()}{reason[1:]}") from None
    except UnicodeError as error:
        raise ConfigError(f"{filename}: not UTF-8: {error}") from None
    try:
        return _config(document)
    except _Invalid as invalid:
        line = line_of(key_lines(text), invalid.path)
        at = f"{filename}:{line}" if line is not None else filename
        raise ConfigError(f"{at}: {_dotted(invalid.path)}: {invalid}") from None


def _dotted(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _table(value: Any, path: Path, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(path, "must be a table")
    for key in value:
        if allowed is not None and key not in allowed:
            raise _Invalid((*path, key), f"unknown key (expected one of {', '.join(allowed)})")
    return value


def _word(parse_: Callable[[str], str], value: Any, path: Path) -> str:
    if not isinstance(value, str):
        raise _Invalid(path, "must be a string")
    try:
        return parse_(value)
    except words.InvalidWord as invalid:
        raise _Invalid(path, str(invalid)) from None


def _list(parse_: Callable[[str], str], value: Any, path: Path) -> list[str]:
    if not isinstance(value, list):
        raise _Invalid(path, "must be a list of strings")
    return [_word(parse_, item, (*path, i)) for i, item in enumerate(value)]


def _bool(value: Any, path: Path) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(path, "must be true or false")
    return value


def _whole(value: Any, path: Path) -> int:
    # bool is an int in Python, not in TOML: `capacity = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WHOLE:
        raise _Invalid(path, f"must be a whole number from 0 to {MAX_WHOLE}")
    return value


def _choice(choices: tuple[str, ...], value: Any, path: Path) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _Invalid(path, f"must be {' or '.join(map(_string, choices))}")
    return value


def _config(document: dict[str, Any]) -> Config:
    top = _table(document, (), ("accounts",))
    accounts = _table(top.get("accounts", {}), ("accounts",))
    config = {
        _word(words.account, name, ("accounts", name)): _account(value, ("accounts", name))
        for name, value in accounts.items()
    }
    _one_number_per_whatsapp_id(accounts, config)
    return config


def _one_number_per_whatsapp_id(accounts: dict[str, Any], config: Config) -> None:
    """A delivery names one phone_number_id: two numbers with it could not both get it."""
    holders: dict[str, tuple[str, str]] = {}
    for (name, account), table in zip(config.items(), accounts.values(), strict=True):
        keys_ = table.get("numbers", {})
        for (number, settings), key in zip(account.numbers.items(), keys_, strict=True):
            found = settings.whatsapp_phone_number_id
            if found is None:
                continue
            if found in holders:
                first = " ".join(holders[found])
                path = ("accounts", name, "numbers", key, "whatsapp_phone_number_id")
                raise _Invalid(path, f"{found} is already the id of account {first}")
            holders[found] = (name, number)


def _account(value: Any, path: Path) -> AccountConfig:
    table = _table(value, path, ACCOUNT_KEYS)
    account = AccountConfig()
    if "admin" in table:
        account.admin = _word(words.user, table["admin"], (*path, "admin"))
    if "presence_ttl_s" in table:
        account.presence_ttl_s = _whole(table["presence_ttl_s"], (*path, "presence_ttl_s"))
    groups = _table(table.get("groups", {}), (*path, "groups"))
    for name, users in groups.items():
        where = (*path, "groups", name)
        account.groups[_word(words.group, name, where)] = _list(words.user, users, where)
    numbers = _table(table.get("numbers", {}), (*path, "numbers"))
    for key, number_value in numbers.items():
        where = (*path, "numbers", key)
        number = _word(words.phone, key, where)
        if number in account.numbers:
            raise _Invalid(where, f"number {number} is listed twice")
        account.numbers[number] = _number(number_value, where, account.groups)
    return account


def _number(value: Any, path: Path, groups: dict[str, list[str]]) -> NumberConfig:
    table = _table(value, path, NUMBER_KEYS)
    number = NumberConfig()
    for name in ("members", "access"):
        entries = _list(words.member, table.get(name, []), (*path, name))
        for i, entry in enumerate(entries):
            group = group_name(entry)
            if group is not None and group not in groups:
                raise _Invalid((*path, name, i), f"group {group} is not defined in this account")
        setattr(number, name, entries)
    for name in ("assign_unknown", "online_only", "owner_online_only"):
        if name in table:
            setattr(number, name, _bool(table[name], (*path, name)))
    for name in ("capacity", "queue_max_wait_s", "reply_timeout_s"):
        if name in table:
            setattr(number, name, _whole(table[name], (*path, name)))
    if "when_nobody" in table:
        number.when_nobody = _choice(WHEN_NOBODY, table["when_nobody"], (*path, "when_nobody"))
    if "admin" in table:
        number.admin = _word(words.user, table["admin"], (*path, "admin"))
    if "whatsapp_phone_number_id" in table:
        where = (*path, "whatsapp_phone_number_id")
        number.whatsapp_phone_number_id = _word(
            whatsapp_phone_number_id, table["whatsapp_phone_number_id"], where
        )
    return number


def warnings(config: Config) -> list[str]:
    """Members that a number's access leaves out (they will never get chats)."""
    found = []
    for account_name, account in sorted(config.items()):
        for number_name, number in sorted(account.numbers.items()):
            state = rules.NumberState(
                members=number.members, access=set(number.access), groups=account.groups
            )
            may_use = rules.allowed(state)
            for user in rules.expand(state.members, state.groups):
                if may_use is not None and user not in may_use:
                    found.append(
                        f"{account_name} {number_name}: member {user} has no access "
                        "and will not get chats"
                    )
    return found


def render(config: Config) -> str:
    """The TOML text of a configuration, sorted, in the format ``parse`` reads."""
    lines = [HEADER, ""]
    for name in sorted(config):
        account, prefix = config[name], f"accounts.{_key(name)}"
        lines.append(f"[{prefix}]")
        if account.admin:
            lines.append(f"admin = {_string(account.admin)}")
        if account.presence_ttl_s:
            lines.append(f"presence_ttl_s = {account.presence_ttl_s}")
        lines.append("")
        if account.groups:
            lines.append(f"[{prefix}.groups]")
            lines.extend(_assign(_key(g), account.groups[g]) for g in sorted(account.groups))
            lines.append("")
        for number_name in sorted(account.numbers):
            number = account.numbers[number_name]
            lines.append(f"[{prefix}.numbers.{number_name}]")
            lines.append(_assign("members", number.members))
            lines.append(_assign("access", sorted(number.access)))
            lines.append(f"assign_unknown = {str(number.assign_unknown).lower()}")
            lines.append(f"online_only = {str(number.online_only).lower()}")
            # Conversation settings only when on: files written before them export unchanged.
            if number.capacity:
                lines.append(f"capacity = {number.capacity}")
            if number.owner_online_only:
                lines.append("owner_online_only = true")
            if number.when_nobody != "admin":
                lines.append(f"when_nobody = {_string(number.when_nobody)}")
            if number.queue_max_wait_s:
                lines.append(f"queue_max_wait_s = {number.queue_max_wait_s}")
            if number.reply_timeout_s:
                lines.append(f"reply_timeout_s = {number.reply_timeout_s}")
            if number.admin:
                lines.append(f"admin = {_string(number.admin)}")
            if number.whatsapp_phone_number_id:
                lines.append(
                    f"whatsapp_phone_number_id = {_string(number.whatsapp_phone_number_id)}"
                )
            lines.append("")
    return "\n".join(lines)


def _assign(key: str, values: list[str]) -> str:
    one_line = f"{key} = [{', '.join(map(_string, values))}]"
    if len(one_line) <= WRAP_AT:
        return one_line
    return "\n".join([f"{key} = [", *(f"    {_string(v)}," for v in values), "]"])


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _string(name)


def _string(value: str) -> str:
    """A TOML basic string (json.dumps is not one: it writes surrogate pairs for emoji)."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
