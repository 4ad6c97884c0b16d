"""The ``rota`` command as operators run it: a subprocess, exit codes, stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.helpers import ACCOUNT, NUMBER, dead, events, run_burst, run_rota, send
from tests.redis_server import RedisServer
from worker import admin, cli, clock, keys
from worker.settings import Settings

CUSTOMER = "447700900123"
UNREACHABLE = "redis://127.0.0.1:1/0"

Rota = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def rota(redis_server: RedisServer, rb: Any) -> Rota:
    """Runs ``rota`` against the test server, emptied for this test."""

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_rota(redis_server.url, *args, **env)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


def assert_one_line_failure(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rota: error: "), lines[0]
    assert result.stdout == ""
    return lines[0]


# Each command.


def test_account_set_writes_the_accounts_admin(rota: Rota, rd: Any) -> None:
    ok(rota("account", "set", ACCOUNT, "--admin", "boss@example.com"))

    assert rd.hgetall(keys.account_settings(ACCOUNT)) == {"admin": "boss@example.com"}


def test_number_set_normalises_the_number_and_writes_every_setting(rota: Rota, rd: Any) -> None:
    ok(
        rota(
            "number",
            "set",
            ACCOUNT,
            "+1 (555) 000-1000",
            "--members",
            "alice, group:sales,bob",
            "--access",
            "alice,bob,group:sales",
            "--no-online-only",
            "--admin",
            "boss",
        )
    )

    assert rd.hgetall(keys.number(ACCOUNT, NUMBER)) == {
        "assign_unknown": "1",
        "online_only": "0",
        "admin": "boss",
    }
    assert rd.lrange(keys.members(ACCOUNT, NUMBER), 0, -1) == ["alice", "group:sales", "bob"]
    assert rd.smembers(keys.access(ACCOUNT, NUMBER)) == {"alice", "bob", "group:sales"}


def test_number_set_defaults_and_keeps_what_is_not_given(rota: Rota, rd: Any) -> None:
    ok(rota("number", "set", ACCOUNT, NUMBER, "--members", "alice,bob", "--access", "alice,bob"))
    assert rd.hgetall(keys.number(ACCOUNT, NUMBER)) == {"assign_unknown": "1", "online_only": "1"}

    ok(rota("number", "set", ACCOUNT, NUMBER, "--no-assign-unknown"))

    assert rd.hgetall(keys.number(ACCOUNT, NUMBER)) == {"assign_unknown": "0", "online_only": "1"}
    assert rd.lrange(keys.members(ACCOUNT, NUMBER), 0, -1) == ["alice", "bob"]
    assert rd.smembers(keys.access(ACCOUNT, NUMBER)) == {"alice", "bob"}

    ok(rota("number", "set", ACCOUNT, NUMBER, "--members", "", "--access", ""))

    assert rd.exists(keys.members(ACCOUNT, NUMBER), keys.access(ACCOUNT, NUMBER)) == 0


def test_number_set_warns_about_members_outside_access(rota: Rota, rd: Any) -> None:
    admin.set_group(rd, ACCOUNT, "sales", ["bob", "carol"])

    result = rota(
        "number", "set", ACCOUNT, NUMBER, "--members", "alice,group:sales", "--access", "bob"
    )

    assert result.returncode == 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert all(line.startswith("rota: warning: ") for line in lines)
    assert "alice" in lines[0] and "carol" in lines[1]
    assert "bob" not in result.stderr
    assert rd.lrange(keys.members(ACCOUNT, NUMBER), 0, -1) == ["alice", "group:sales"]


def test_number_set_warns_when_access_names_only_an_empty_group(rota: Rota) -> None:
    result = rota(
        "number", "set", ACCOUNT, NUMBER, "--members", "alice", "--access", "group:nobody"
    )

    assert result.returncode == 0
    assert result.stderr.startswith("rota: warning: member alice has no access"), result.stderr


def test_number_show_prints_settings_eligible_cursor_and_next(rota: Rota, rd: Any) -> None:
    admin.set_group(rd, ACCOUNT, "sales", ["bob", "carol", "alice"])
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice", "group:sales", "dave"])
    admin.set_presence(rd, ACCOUNT, "bob", "available")
    rd.hset(keys.presence(ACCOUNT), "dave", "Available")  # the CRM's own HSET
    admin.set_presence(rd, ACCOUNT, "carol", "in_break")
    rd.set(keys.cursor(ACCOUNT, NUMBER), 6)  # 6 mod 4 = 2: carol, skipped; dave next

    shown = json.loads(ok(rota("number", "show", ACCOUNT, NUMBER)))

    assert shown["account"] == ACCOUNT and shown["number"] == NUMBER
    assert shown["settings"]["assign_unknown"] is True
    assert shown["settings"]["online_only"] is True
    assert shown["members"] == ["alice", "group:sales", "dave"]
    assert shown["expanded_members"] == ["alice", "bob", "carol", "dave"]
    assert shown["eligible_now"] == ["bob", "dave"]
    assert shown["cursor"] == 6
    assert shown["next"] == {"user": "dave", "reason": "round_robin"}


def test_number_show_names_the_admin_when_nobody_is_eligible(rota: Rota, rd: Any) -> None:
    admin.set_account(rd, ACCOUNT, "boss")
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice"])

    shown = json.loads(ok(rota("number", "show", ACCOUNT, "+1-555-000-1000")))

    assert shown["eligible_now"] == []
    assert shown["cursor"] == 0
    assert shown["settings"]["effective_admin"] == "boss"
    assert shown["next"] == {"user": "boss", "reason": "admin_fallback"}


def test_group_set_replaces_the_groups_users_in_order(rota: Rota, rd: Any) -> None:
    ok(rota("group", "set", ACCOUNT, "sales", "carol", "alice@example.com", "bob"))
    assert rd.lrange(keys.group(ACCOUNT, "sales"), 0, -1) == ["carol", "alice@example.com", "bob"]

    ok(rota("group", "set", ACCOUNT, "sales"))
    assert rd.lrange(keys.group(ACCOUNT, "sales"), 0, -1) == []


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("In Break", "in_break"),
        ("in-break", "in_break"),
    ],
)
def test_presence_set_accepts_any_case_spaces_and_dashes(
    rota: Rota, rd: Any, given: str, stored: str
) -> None:
    ok(rota("presence", "set", ACCOUNT, "alice", given))

    assert rd.hgetall(keys.presence(ACCOUNT)) == {"alice": stored}


def test_owner_set_marks_a_known_contact(rota: Rota, rd: Any) -> None:
    ok(rota("owner", "set", ACCOUNT, NUMBER, "+44 7700 900123", "alice"))

    assert rd.hgetall(keys.owners(ACCOUNT, NUMBER)) == {CUSTOMER: "alice"}


def test_send_pushes_one_inbound_message_and_prints_its_id(
    rota: Rota, rd: Any, settings: Settings
) -> None:
    out = ok(
        rota("send", "--account", ACCOUNT, "+1 555 000 1000", "+44 7700 900123",
             "--message-id", "wamid.X", "--text", "hello")
    )  # fmt: skip

    [(entry_id, fields)] = rd.xrange(settings.inbound_stream)
    assert out == f"{entry_id}\n"
    assert fields == {
        "account": ACCOUNT,
        "number": NUMBER,
        "from": CUSTOMER,
        "message_id": "wamid.X",
        "text": "hello",
    }


def test_send_without_account_uses_the_default_account(
    rota: Rota, rd: Any, settings: Settings
) -> None:
    ok(rota("send", NUMBER, CUSTOMER))

    [(_, fields)] = rd.xrange(settings.inbound_stream)
    assert fields == {"account": "default", "number": NUMBER, "from": CUSTOMER}


def test_send_then_worker_burst_publishes_the_decision(
    rota: Rota, rd: Any, settings: Settings
) -> None:
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice", "bob"], online_only=False)
    entry_id = ok(rota("send", "--account", ACCOUNT, NUMBER, CUSTOMER, "--message-id", "w.1"))

    ok(rota("worker", "--burst"))

    [decision] = events(rd, settings)
    assert decision["inbound_id"] == entry_id.strip()
    assert (decision["user"], decision["reason"], decision["message_id"]) == (
        "alice",
        "round_robin",
        "w.1",
    )


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--message-id", "w" * 257], "invalid_field: message_id longer than 256 bytes"),
        (["--message-id", "é" * 129], "invalid_field: message_id longer than 256 bytes"),
        (["--text", "x" * 70_000], "too_large: "),
    ],
)
def test_send_refuses_what_the_worker_would_dead_letter(
    rota: Rota, rd: Any, settings: Settings, extra: list[str], why: str
) -> None:
    line = assert_one_line_failure(rota("send", NUMBER, CUSTOMER, *extra), 2)

    assert line.startswith(f"rota: error: {why}"), line
    assert rd.xlen(settings.inbound_stream) == 0


def test_send_accepts_the_longest_message_id_the_worker_decides(
    rota: Rota, rd: Any, settings: Settings
) -> None:
    admin.set_number(rd, "default", NUMBER, members=["alice"], online_only=False)
    ok(rota("send", NUMBER, CUSTOMER, "--message-id", "w" * 256))

    ok(rota("worker", "--burst"))

    assert [e["message_id"] for e in events(rd, settings)] == ["w" * 256]
    assert dead(rd, settings) == []


def test_dead_list_and_replay_round_trip(rota: Rota, rd: Any, rb: Any, settings: Settings) -> None:
    entry_id = send(rd, settings, CUSTOMER, message_id="w.1")
    assert run_burst(rb, settings) == 0  # the number has no settings yet

    [listed] = [json.loads(line) for line in ok(rota("dead", "list")).splitlines()]
    assert listed.pop("id")
    assert listed == {
        "account": ACCOUNT,
        "number": NUMBER,
        "from": "********0123",  # masked: --unmasked shows it whole
        "message_id": "w.1",
        "error": "unknown_number",
        "detail": f"no settings for account {ACCOUNT} number {NUMBER}",
        "inbound_id": entry_id,
        "deliveries": "1",
    }

    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice"], online_only=False)
    assert ok(rota("dead", "replay")) == f"replayed 1 dead letters onto {settings.inbound_stream}\n"

    assert dead(rd, settings) == []
    assert ok(rota("dead", "list")) == ""
    replayed = rd.xrange(settings.inbound_stream)[-1][1]
    assert replayed == {"account": ACCOUNT, "number": NUMBER, "from": CUSTOMER, "message_id": "w.1"}
    assert run_burst(rb, settings) == 0
    assert [(e["user"], e["reason"], e["message_id"]) for e in events(rd, settings)] == [
        ("alice", "round_robin", "w.1")
    ]


def test_dead_list_shows_and_replay_keeps_fields_that_are_not_utf8(
    rota: Rota, rb: Any, settings: Settings
) -> None:
    rb.xadd(settings.dead_stream, {b"number": b"\xff\xfe", b"error": b"invalid_field"})

    [listed] = [json.loads(line) for line in ok(rota("dead", "list")).splitlines()]
    assert listed["number"] == "\\xff\\xfe"
    assert listed["error"] == "invalid_field"

    ok(rota("dead", "replay"))

    [(_, fields)] = rb.xrange(settings.inbound_stream)
    assert fields == {b"number": b"\xff\xfe"}


# Bad input: exit 2, one line, no traceback. Runtime failures: exit 1, one line.
# These never reach Redis (they fail parsing, or Redis is unreachable), so they run all at
# once, in a pool, the first time a test asks for them: each is one interpreter start.

BAD_INPUT = {
    "bad-account": ["account", "set", "acme corp", "--admin", "boss"],
    "bad-number": ["number", "set", ACCOUNT, "12345"],
    "bad-status": ["presence", "set", ACCOUNT, "alice", "sleeping"],
    "unknown-subcommand": ["account", "frob"],
    "missing-argument": ["presence", "set", ACCOUNT, "alice"],
}
# More bad input, run in-process through the same entry point (one interpreter start each
# would make this table slow): exit 2 and one line on stderr all the same.
MORE_BAD_INPUT = {
    "no-command": [],
    "unknown-command": ["frobnicate"],
    "long-account": ["account", "set", "x" * 65, "--admin", "boss"],
    "missing-option": ["account", "set", ACCOUNT],
    "bad-user": ["account", "set", ACCOUNT, "--admin", "bo ss"],
    "long-number": ["number", "set", ACCOUNT, "1234567890123456"],
    "letters-in-number": ["number", "show", ACCOUNT, "555-CALL-NOW"],
    "bad-group-in-list": ["number", "set", ACCOUNT, NUMBER, "--members", "alice,group:"],
    "bad-user-in-list": ["number", "set", ACCOUNT, NUMBER, "--access", "alice,b b"],
    "missing-number": ["number", "show", ACCOUNT],
    "bad-group-name": ["group", "set", ACCOUNT, "sales team", "bob"],
    "bad-user-in-group": ["group", "set", ACCOUNT, "sales", "bob", "al ice"],
    "missing-user": ["owner", "set", ACCOUNT, NUMBER, CUSTOMER],
    "bad-customer": ["owner", "set", ACCOUNT, NUMBER, "12", "alice"],
    "missing-from": ["send", NUMBER],
    "bad-send-account": ["send", "--account", "a/b", NUMBER, CUSTOMER],
    "bad-count": ["dead", "list", "--count", "many"],
    "zero-count": ["dead", "list", "--count", "0"],
    "negative-count": ["dead", "replay", "--count", "-1"],
    "negative-presence-ttl": ["account", "set", ACCOUNT, "--presence-ttl", "-5"],
    "huge-presence-ttl": ["account", "set", ACCOUNT, "--presence-ttl", "9" * 20],
    "letters-in-capacity": ["number", "set", ACCOUNT, NUMBER, "--capacity", "two"],
    "bad-when-nobody": ["number", "set", ACCOUNT, NUMBER, "--when-nobody", "nobody"],
    "when-nobody-without-value": ["number", "set", ACCOUNT, NUMBER, "--when-nobody"],
    "negative-queue-max-wait": ["number", "set", ACCOUNT, NUMBER, "--queue-max-wait", "-5"],
    "fractional-queue-max-wait": ["number", "set", ACCOUNT, NUMBER, "--queue-max-wait", "1.5"],
    "letters-in-reply-timeout": ["number", "set", ACCOUNT, NUMBER, "--reply-timeout", "1m"],
    "huge-reply-timeout": ["number", "set", ACCOUNT, NUMBER, "--reply-timeout", "9" * 20],
    "heartbeat-without-user": ["presence", "heartbeat", ACCOUNT],
    "heartbeat-bad-user": ["presence", "heartbeat", ACCOUNT, "al ice"],
    "show-bad-customer": ["conversation", "show", ACCOUNT, NUMBER, "12"],
    "replied-without-user": ["conversation", "replied", ACCOUNT, NUMBER, CUSTOMER],
    "close-bad-number": ["conversation", "close", ACCOUNT, "555-CALL-NOW", CUSTOMER],
    "transfer-bad-user": ["conversation", "transfer", ACCOUNT, NUMBER, CUSTOMER, "b b"],
    "unknown-conversation-verb": ["conversation", "reopen", ACCOUNT, NUMBER, CUSTOMER],
}
# The conversation commands and settings.


def test_account_set_presence_ttl_merges_with_the_admin(rota: Rota, rd: Any) -> None:
    ok(rota("account", "set", ACCOUNT, "--admin", "boss"))
    ok(rota("account", "set", ACCOUNT, "--presence-ttl", "120"))
    assert rd.hgetall(keys.account_settings(ACCOUNT)) == {"admin": "boss", "presence_ttl_s": "120"}

    ok(rota("account", "set", ACCOUNT, "--presence-ttl", "0"))  # off
    assert rd.hgetall(keys.account_settings(ACCOUNT)) == {"admin": "boss"}


def test_number_set_capacity_and_owner_online_only(rota: Rota, rd: Any) -> None:
    ok(rota("number", "set", ACCOUNT, NUMBER, "--members", "alice", "--capacity", "3",
            "--owner-online-only"))  # fmt: skip
    assert rd.hgetall(keys.number(ACCOUNT, NUMBER)) == {
        "assign_unknown": "1",
        "online_only": "1",
        "capacity": "3",
        "owner_online_only": "1",
    }

    ok(rota("number", "set", ACCOUNT, NUMBER, "--no-owner-online-only", "--capacity", "0"))
    assert rd.hgetall(keys.number(ACCOUNT, NUMBER)) == {
        "assign_unknown": "1",
        "online_only": "1",
        "capacity": "0",
        "owner_online_only": "0",
    }


def test_number_set_when_nobody_queue_max_wait_and_reply_timeout(rota: Rota, rd: Any) -> None:
    ok(rota("number", "set", ACCOUNT, NUMBER, "--members", "alice", "--when-nobody", "queue",
            "--queue-max-wait", "600", "--reply-timeout", "90"))  # fmt: skip
    assert rd.hgetall(keys.number(ACCOUNT, NUMBER)) == {
        "assign_unknown": "1",
        "online_only": "1",
        "when_nobody": "queue",
        "queue_max_wait_s": "600",
        "reply_timeout_s": "90",
    }
    settings = json.loads(ok(rota("number", "show", ACCOUNT, NUMBER)))["settings"]
    assert (settings["when_nobody"], settings["queue_max_wait_s"]) == ("queue", 600)
    assert settings["reply_timeout_s"] == 90

    # 0 turns a timer off; each flag changes only its own setting
    ok(rota("number", "set", ACCOUNT, NUMBER, "--when-nobody", "admin", "--reply-timeout", "0"))
    assert rd.hgetall(keys.number(ACCOUNT, NUMBER)) == {
        "assign_unknown": "1",
        "online_only": "1",
        "when_nobody": "admin",
        "queue_max_wait_s": "600",
        "reply_timeout_s": "0",
    }
    settings = json.loads(ok(rota("number", "show", ACCOUNT, NUMBER)))["settings"]
    assert (settings["when_nobody"], settings["reply_timeout_s"]) == ("admin", 0)


def test_number_set_names_what_when_nobody_may_be(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTA_REDIS_URL", UNREACHABLE)

    assert cli.main(MORE_BAD_INPUT["bad-when-nobody"]) == 2

    said = capsys.readouterr().err
    assert "nobody" in said and "admin" in said and "queue" in said


def test_number_show_counts_the_queue_and_its_oldest_wait(rota: Rota, rd: Any) -> None:
    # Given two customers queued 5 s and 1 s ago, and nobody to take them
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice"], when_nobody="queue")
    now = clock.server_ms(rd)
    rd.rpush(keys.queue(ACCOUNT, NUMBER), "447700900001", "447700900002")
    rd.hset(keys.queued(ACCOUNT, NUMBER), mapping={"447700900001": now - 5000,
                                                    "447700900002": now - 1000})  # fmt: skip

    shown = json.loads(ok(rota("number", "show", ACCOUNT, NUMBER)))
    waited = clock.server_ms(rd) - now

    assert shown["queue"] == 2
    assert 5000 <= shown["oldest_wait_ms"] <= 5000 + waited
    assert shown["next"] == {"user": "", "reason": "queued"}


def test_number_show_with_nobody_waiting_has_no_oldest_wait(rota: Rota, rd: Any) -> None:
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice"])

    shown = json.loads(ok(rota("number", "show", ACCOUNT, NUMBER)))

    assert (shown["queue"], shown["oldest_wait_ms"]) == (0, None)
    settings = shown["settings"]
    assert (settings["when_nobody"], settings["queue_max_wait_s"]) == ("admin", 0)
    assert settings["reply_timeout_s"] == 0


def test_number_show_next_is_who_a_new_chat_gets_after_the_queue(rota: Rota, rd: Any) -> None:
    # Given alice and bob just became available, and a customer still waiting for either
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice", "bob"], when_nobody="queue")
    admin.set_presence(rd, ACCOUNT, "alice", "available")
    admin.set_presence(rd, ACCOUNT, "bob", "available")
    rd.rpush(keys.queue(ACCOUNT, NUMBER), "447700900001")
    rd.hset(keys.queued(ACCOUNT, NUMBER), "447700900001", clock.server_ms(rd))

    shown = json.loads(ok(rota("number", "show", ACCOUNT, NUMBER)))

    # Then the waiting customer goes first, to alice: a new chat goes to bob
    assert shown["next"] == {"user": "bob", "reason": "round_robin"}
    assert (shown["cursor"], shown["queue"]) == (0, 1)  # what is stored, not yet served


def test_number_show_counts_users_heard_within_the_presence_ttl_as_eligible(
    rota: Rota, rd: Any
) -> None:
    admin.set_account(rd, ACCOUNT, presence_ttl_s=300)
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice", "bob"])
    ok(rota("presence", "set", ACCOUNT, "alice", "available"))  # heard now
    rd.hset(keys.presence(ACCOUNT), "bob", "available")  # never heard from

    shown = json.loads(ok(rota("number", "show", ACCOUNT, NUMBER)))

    assert shown["eligible_now"] == ["alice"]
    assert shown["next"] == {"user": "alice", "reason": "round_robin"}


def test_number_show_counts_open_conversations_and_who_is_at_capacity(rota: Rota, rd: Any) -> None:
    admin.set_account(rd, ACCOUNT, presence_ttl_s=300)
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice", "bob", "carol"], capacity=2)
    rd.hset(keys.open_counts(ACCOUNT, NUMBER), mapping={"alice": 2, "bob": 1, "carol": 0})

    shown = json.loads(ok(rota("number", "show", ACCOUNT, NUMBER)))

    assert shown["open"] == {"alice": 2, "bob": 1}
    assert shown["at_capacity"] == ["alice"]
    assert shown["settings"]["capacity"] == 2
    assert shown["settings"]["owner_online_only"] is False
    assert shown["settings"]["presence_ttl_s"] == 300


def test_number_show_without_capacity_has_nobody_at_capacity(rota: Rota, rd: Any) -> None:
    admin.set_number(rd, ACCOUNT, NUMBER, members=["alice"])
    rd.hset(keys.open_counts(ACCOUNT, NUMBER), "alice", 40)

    shown = json.loads(ok(rota("number", "show", ACCOUNT, NUMBER)))

    assert (shown["open"], shown["at_capacity"]) == ({"alice": 40}, [])
    assert (shown["settings"]["capacity"], shown["settings"]["presence_ttl_s"]) == (0, 0)


def test_presence_set_records_when_rota_heard_from_the_user(rota: Rota, rd: Any) -> None:
    before = clock.server_ms(rd)

    ok(rota("presence", "set", ACCOUNT, "alice", "Available"))

    assert rd.hgetall(keys.presence(ACCOUNT)) == {"alice": "available"}
    assert int(rd.hget(keys.heard(ACCOUNT), "alice")) >= before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["presence", "heartbeat", ACCOUNT, "alice"],
         {"type": "heartbeat", "account": ACCOUNT, "user": "alice"}),
        (["conversation", "replied", ACCOUNT, NUMBER, "+44 7700 900123", "alice"],
         {"type": "replied", "account": ACCOUNT, "number": NUMBER, "customer": CUSTOMER,
          "user": "alice"}),
        (["conversation", "close", ACCOUNT, NUMBER, CUSTOMER],
         {"type": "closed", "account": ACCOUNT, "number": NUMBER, "customer": CUSTOMER}),
        (["conversation", "transfer", ACCOUNT, "+1 555 000 1000", CUSTOMER, "bob"],
         {"type": "transfer", "account": ACCOUNT, "number": NUMBER, "customer": CUSTOMER,
          "user": "bob"}),
    ],
)  # fmt: skip
def test_activity_commands_add_the_entry_and_print_its_id(
    rota: Rota, rd: Any, settings: Settings, args: list[str], expected: dict[str, str]
) -> None:
    out = ok(rota(*args))

    [(entry_id, fields)] = rd.xrange(settings.inbound_stream)
    assert out == f"{entry_id}\n"
    assert fields == expected


def test_conversation_show_prints_json(rota: Rota, rd: Any) -> None:
    assert json.loads(ok(rota("conversation", "show", ACCOUNT, NUMBER, CUSTOMER))) == {
        "user": None,
        "state": "none",
        "replied": False,
        "reply_deadline": None,
        "tried": [],
    }
    rd.hset(keys.owners(ACCOUNT, NUMBER), CUSTOMER, "alice")
    rd.hset(keys.open_conversations(ACCOUNT, NUMBER), CUSTOMER, "alice")

    shown = json.loads(ok(rota("conversation", "show", ACCOUNT, NUMBER, "+44 7700 900123")))

    assert shown == {
        "user": "alice",
        "state": "open",
        "replied": False,
        "reply_deadline": None,
        "tried": ["alice"],
    }


def test_conversation_show_prints_the_queue_the_reply_deadline_and_who_tried(
    rota: Rota, rd: Any
) -> None:
    # Given a customer waiting in the queue (with a queue-wait timer)
    rd.hset(keys.queued(ACCOUNT, NUMBER), CUSTOMER, 1_700_000_000_000)
    rd.zadd(keys.timers(ACCOUNT), {keys.timer(NUMBER, CUSTOMER): 1_700_000_600_000})
    assert json.loads(ok(rota("conversation", "show", ACCOUNT, NUMBER, CUSTOMER))) == {
        "user": None,
        "state": "queued",
        "replied": False,
        "reply_deadline": None,
        "tried": [],
    }
    # When alice got it, did not reply, and it moved on to bob, who must reply by the deadline
    rd.hdel(keys.queued(ACCOUNT, NUMBER), CUSTOMER)
    rd.hset(keys.owners(ACCOUNT, NUMBER), CUSTOMER, "bob")
    rd.hset(keys.open_conversations(ACCOUNT, NUMBER), CUSTOMER, "bob")
    rd.hset(keys.tried(ACCOUNT, NUMBER), CUSTOMER, "alice,bob")
    rd.zadd(keys.timers(ACCOUNT), {keys.timer(NUMBER, CUSTOMER): 1_700_000_120_000})

    assert json.loads(ok(rota("conversation", "show", ACCOUNT, NUMBER, CUSTOMER))) == {
        "user": "bob",
        "state": "open",
        "replied": False,
        "reply_deadline": 1_700_000_120_000,
        "tried": ["alice", "bob"],
    }


UNREACHABLE_COMMANDS = {
    "account-set": ["account", "set", ACCOUNT, "--admin", "boss"],
    "number-show": ["number", "show", ACCOUNT, NUMBER],
    "heartbeat": ["presence", "heartbeat", ACCOUNT, "alice"],
    "conversation-show": ["conversation", "show", ACCOUNT, NUMBER, CUSTOMER],
}
TRACEBACK = ["--traceback", "account", "set", ACCOUNT, "--admin", "boss"]
SETTINGS_ARGS = ["account", "set", ACCOUNT, "--admin", "boss"]


@pytest.fixture(scope="module")
def failures(redis_server: RedisServer) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each failing run once, all started together (they never touch the test's data)."""
    runs: dict[str, tuple[str, list[str], dict[str, str]]] = {
        **{f"bad:{name}": (redis_server.url, args, {}) for name, args in BAD_INPUT.items()},
        **{f"down:{name}": (UNREACHABLE, args, {}) for name, args in UNREACHABLE_COMMANDS.items()},
        "traceback": (UNREACHABLE, TRACEBACK, {}),
        "bad-setting": (redis_server.url, SETTINGS_ARGS, {"ROTA_MAX_DELIVERIES": "many"}),
    }
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {
            name: pool.submit(run_rota, url, *args, **env)
            for name, (url, args, env) in runs.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_no_traceback(
    failures: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    assert_one_line_failure(failures[f"bad:{case}"], 2)


def test_bad_input_names_what_is_wrong(
    failures: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    assert "acme corp" in failures["bad:bad-account"].stderr
    assert "12345" in failures["bad:bad-number"].stderr
    assert "sleeping" in failures["bad:bad-status"].stderr
    assert "frob" in failures["bad:unknown-subcommand"].stderr


@pytest.mark.parametrize("case", sorted(MORE_BAD_INPUT))
def test_more_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.delenv("ROTA_TRACEBACK", raising=False)
    monkeypatch.setenv("ROTA_REDIS_URL", UNREACHABLE)  # were it reached, the exit would be 1

    code = cli.main(MORE_BAD_INPUT[case])

    captured = capsys.readouterr()
    assert_one_line_failure(subprocess.CompletedProcess([], code, captured.out, captured.err), 2)


def test_number_show_of_an_unknown_number_exits_2(rota: Rota) -> None:
    line = assert_one_line_failure(rota("number", "show", ACCOUNT, NUMBER), 2)

    assert NUMBER in line


def test_bad_setting_in_the_environment_exits_2_naming_it(
    failures: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    assert "ROTA_MAX_DELIVERIES" in assert_one_line_failure(failures["bad-setting"], 2)


@pytest.mark.parametrize("case", sorted(UNREACHABLE_COMMANDS))
def test_redis_unreachable_exits_1_with_one_line(
    failures: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    line = assert_one_line_failure(failures[f"down:{case}"], 1)

    assert "redis unreachable" in line


def test_traceback_flag_shows_the_traceback(
    failures: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    result = failures["traceback"]

    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.splitlines()[-1].startswith("rota: error: redis unreachable")


def test_traceback_variable_shows_the_traceback_of_bad_input(rota: Rota) -> None:
    result = rota("number", "show", ACCOUNT, NUMBER, ROTA_TRACEBACK="1")

    assert result.returncode == 2
    assert "Traceback (most recent call last):" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("rota: error: no settings")
