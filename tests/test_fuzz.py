"""Hostile input: 10,000 random entries, mixed with valid ones, pushed at two worker processes.

Each entry's fate is checked against the contract's words, written out again here on their own
(accepted forms of account and phone numbers, the message size limit), not against the parser.
"""

from __future__ import annotations

import random
import re
import subprocess
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import (
    ACCOUNT,
    DEAD_LETTER_FIELDS,
    NUMBER,
    USERS,
    finish,
    given_five_available_users,
    pending_count,
)
from tests.redis_server import RedisServer
from worker import keys

SEED = 20_261_127
HOSTILE = 10_000
VALID = 2_500
MAX_MESSAGE_BYTES = 64 * 1024  # the default
ACCOUNTS = (ACCOUNT, "default")  # the accounts with NUMBER set up
CODES = {"missing_field", "invalid_field", "unknown_number", "too_large", "poison"}

Fields = dict[bytes, bytes]

TEXTS = [
    "",
    " ",
    "*",
    "?",
    "[a-z]",
    "{x}",
    "{acme}",
    "}{",
    "rota:inbound",
    "rota:{acme}:number:15550001000:cursor",
    "\r\n",
    "PING\r\n",
    "*1\r\n$8\r\nFLUSHALL\r\n",
    "redis.call('FLUSHALL')",
    "]] redis.call('FLUSHALL') --[[",
    "'); redis.call('SET', 'pwned', 1); --",
    "return redis.call('KEYS', '*')",
    "%s%s%n",
    "' OR '1'='1",
    "${jndi:ldap://example.invalid/a}",
    "<script>alert(1)</script>",
    "\x00",
    "\u202egnp.exe",
    "null",
    "-1",
    "0",
    "group:sales",
    "default",
    ACCOUNT,
    NUMBER,
    "12345",  # 5 digits
    "1234567890123456",  # 16 digits
    "\u0663" * 10,  # Arabic-Indic digits
    "\uff14\uff14\uff17\uff17\uff10\uff10\uff19",  # fullwidth digits
    "\u0664\u0664\u0667\u0667\u0660\u0660\u0669\u0660\u0660\u0661\u0662\u0663",
    "+44 7700 900123",
    "(+44) 7700-900.123",
    "44 7700 900123 ext 5",
    "\U0001f4a9" * 20,
    "é" * 300,
]
BINARY = [b"\xff", b"\xfe\xff", b"\x80abc", b"\xc3\x28", b"abc\xed\xa0\x80", bytes(range(256))]
NAMES = [b"*", b"{x}", b"rota:inbound", b"\r\n", b"", b"\xff\xfe", b"error", b"inbound_id"]
NAMES += [b"deliveries", b"detail", b"name", b"text", b"user", b"reason", "\u0663".encode()]
OURS = ["account", "number", "from", "message_id"]
PHONE_NOISE = "+ -.()"


# --- The contract's words, written out again -----------------------------------------------


def text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def phone(value: bytes) -> str | None:
    """6-15 ASCII digits once +, spaces, dashes, dots and brackets are dropped."""
    digits = re.sub(r"[+ \-.()]", "", text(value) or "")
    return digits if re.fullmatch(r"[0-9]{6,15}", digits) else None


def codes_that_apply(fields: Fields) -> set[str]:
    """Every dead-letter code the contract allows for this entry; empty: it must be decided."""
    codes = set()
    if sum(len(name) + len(value) for name, value in fields.items()) > MAX_MESSAGE_BYTES:
        codes.add("too_large")
    number, customer = fields.get(b"number"), fields.get(b"from")
    if not number or not customer:
        codes.add("missing_field")
    for value in (number, customer):
        if value and phone(value) is None:
            codes.add("invalid_field")
    account = fields.get(b"account") or b"default"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text(account) or ""):
        codes.add("invalid_field")
    message_id = fields.get(b"message_id", b"")
    if text(message_id) is None or len(message_id) > 256:
        codes.add("invalid_field")
    if not codes and (text(account), phone(number or b"")) not in {(a, NUMBER) for a in ACCOUNTS}:
        codes.add("unknown_number")
    return codes


# --- Random entries ------------------------------------------------------------------------


def hostile_value(rng: random.Random, index: int) -> bytes:
    kind = rng.randrange(8)
    if index % 1_000 == 999:
        return rng.choice([b"1", b"x"]) * (1 << 20)  # 1 MiB
    if kind == 0:
        return rng.choice(BINARY)
    if kind == 1:
        return "".join(chr(rng.randrange(1, 0x2FFFF)) for _ in range(rng.randrange(1, 40))).encode(
            errors="surrogatepass"
        )
    if kind == 2:
        return "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 21))).encode()
    if kind == 3:
        return b"x" * rng.choice([MAX_MESSAGE_BYTES - 100, MAX_MESSAGE_BYTES + 1, 300])
    if kind == 4:
        return noisy_phone(rng, rng.choice([NUMBER, "447700900123", "12345", "1234567890123456"]))
    return rng.choice(TEXTS).encode()


def noisy_phone(rng: random.Random, digits: str) -> bytes:
    out = [c + (rng.choice(PHONE_NOISE) if rng.random() < 0.3 else "") for c in digits]
    return ("+" + "".join(out)).encode() if rng.random() < 0.5 else "".join(out).encode()


def valid_entry(rng: random.Random, index: int, kind: str = "valid") -> Fields:
    fields = {
        b"number": noisy_phone(rng, NUMBER),
        b"from": noisy_phone(rng, f"4477009{rng.randrange(2_000):05d}"),  # some come back
        b"message_id": f"wamid.{kind}.{index}".encode(),
        b"text": rng.choice(TEXTS).encode(),
    }
    if rng.random() < 0.7:
        fields[b"account"] = rng.choice(ACCOUNTS).encode()
    return fields


def hostile_entry(rng: random.Random, index: int) -> Fields:
    """A valid entry with some of our fields dropped or replaced, and hostile extra fields."""
    fields = valid_entry(rng, index, "hostile")
    for name in rng.sample(OURS, rng.randrange(1, len(OURS) + 1)):
        if rng.random() < 0.25:
            fields.pop(name.encode(), None)
        else:
            fields[name.encode()] = hostile_value(rng, index)
    for _ in range(rng.randrange(3)):
        fields[rng.choice(NAMES)] = hostile_value(rng, index + 1)
    return fields


def given_entries(rb: Any) -> dict[str, Fields]:
    """10,000 hostile and 2,500 valid entries, shuffled, pushed; their fields by entry id."""
    rng = random.Random(SEED)
    entries = [hostile_entry(rng, i) for i in range(HOSTILE)]
    entries += [valid_entry(rng, i) for i in range(VALID)]
    rng.shuffle(entries)
    pushed: dict[str, Fields] = {}
    for start in range(0, len(entries), 500):
        pipe = rb.pipeline(transaction=False)
        for fields in entries[start : start + 500]:
            pipe.xadd("rota:inbound", fields)
        for entry_id, fields in zip(pipe.execute(), entries[start : start + 500], strict=True):
            pushed[entry_id.decode()] = fields
    return pushed


# --- The test ------------------------------------------------------------------------------


@pytest.mark.chaos
def test_hostile_entries_never_crash_a_worker_and_each_is_decided_or_dead_lettered(
    rd: Any, rb: Any, redis_server: RedisServer, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # Given a number on two accounts, and 12,500 entries of which 10,000 are hostile
    for account in ACCOUNTS:
        given_five_available_users(rd, account=account)
    pushed = given_entries(rb)
    assert len(pushed) == HOSTILE + VALID

    # When two burst workers drain the stream
    processes = [workers(redis_server.url, "--burst") for _ in range(2)]
    outcomes = [finish(p, timeout=120) for p in processes]

    # Then neither crashed nor logged anything at warning or above
    assert outcomes == [(0, "")] * 2

    # and each entry has exactly one fate: decided (identical repeats allowed), or dead-lettered
    # with its fields and a code that applies to it
    decided: dict[str, set[tuple[tuple[bytes, bytes], ...]]] = defaultdict(set)
    for _, event in rb.xrange("rota:assignments"):
        decided[event[b"inbound_id"].decode()].add(tuple(sorted(event.items())))
    dead: dict[str, list[Fields]] = defaultdict(list)
    for _, letter in rb.xrange("rota:dead"):
        dead[letter[b"inbound_id"].decode()].append(letter)
    assert set(decided) | set(dead) == set(pushed), "every entry has a fate"
    assert set(decided) & set(dead) == set(), "no entry has two"
    ours = {name.encode() for name in DEAD_LETTER_FIELDS}
    for inbound_id, fields in pushed.items():
        applies = codes_that_apply(fields)
        if not applies:
            assert inbound_id in decided, f"valid entry {inbound_id} not decided"
            [event] = [dict(e) for e in decided[inbound_id]]
            assert event[b"user"].decode() in USERS
            assert event[b"customer"].decode() == phone(fields[b"from"])
            assert event[b"number"] == NUMBER.encode()
            continue
        assert inbound_id in dead, f"{inbound_id} ({applies}) decided"
        [letter] = dead[inbound_id]
        assert letter[b"error"].decode() in applies
        assert {k: v for k, v in letter.items() if k not in ours} == {
            k: v for k, v in fields.items() if k not in ours
        }
    assert pending_count(rd) == 0

    # and one decision per message (account, number, message_id); each cursor counts its
    # number's round-robin decisions
    by_message: dict[tuple[str, ...], set[tuple[str, str, str]]] = defaultdict(set)
    for _, event in rd.xrange("rota:assignments"):
        message = (event["account"], event["number"], event["message_id"])
        by_message[message].add((event["user"], event["reason"], event["at"]))
    assert all(len(decisions) == 1 for decisions in by_message.values())
    reasons = {message: next(iter(decisions))[1] for message, decisions in by_message.items()}
    for account in ACCOUNTS:
        round_robin = [m for m, why in reasons.items() if (m[0], why) == (account, "round_robin")]
        assert int(rd.get(keys.cursor(account, NUMBER)) or 0) == len(round_robin)

    # and no key outside rota:, nor of any account but the two, was written
    allowed = {f"{keys.account_prefix(a)}:".encode() for a in ACCOUNTS}
    streams = {b"rota:inbound", b"rota:assignments", b"rota:dead"}
    streams.add(keys.published("rota:inbound").encode())  # where a lost group starts again
    streams.add(keys.accounts().encode())  # the index of configured accounts
    strays = [
        key
        for key in rb.scan_iter(count=1_000)
        if key not in streams and not any(key.startswith(prefix) for prefix in allowed)
    ]
    assert strays == []
    print(
        f"\nfuzz: {len(pushed):,} entries ({HOSTILE:,} hostile): {len(decided):,} decided, "
        f"{len(dead):,} dead-lettered ("
        + ", ".join(
            f"{code} {sum(ls[0][b'error'] == code.encode() for ls in dead.values()):,}"
            for code in sorted(CODES)
        )
        + ")"
    )
