"""Small Given/When/Then helpers shared by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker import admin, keys, partitions, scripts
from worker.log import logger
from worker.runner import Runner
from worker.settings import Settings

ACCOUNT, NUMBER = "acme", "15550001000"


def given_number(
    rd: Any,
    members: list[str],
    account: str = ACCOUNT,
    number: str = NUMBER,
    **number_settings: Any,
) -> None:
    admin.set_number(rd, account, number, members=members, **number_settings)


def given_presence(rd: Any, account: str = ACCOUNT, **statuses: str) -> None:
    for user, status in statuses.items():
        admin.set_presence(rd, account, user, status)


def send(
    rd: Any,
    settings: Settings,
    customer: str,
    account: str = ACCOUNT,
    number: str = NUMBER,
    **extra: str,
) -> str:
    fields = {"account": account, "number": number, "from": customer, **extra}
    return admin.send(rd, settings, fields)


def run_burst(rb: Any, settings: Settings, consumer: str = "test") -> int:
    """A burst worker, over every partition with ROTA_INBOUND_PARTITIONS."""
    return Runner(rb, settings, logger(settings), consumer=consumer).run(burst=True)


def events(rd: Any, settings: Settings) -> list[dict[str, str]]:
    return [fields for _, fields in rd.xrange(settings.events_stream)]


def dead(rd: Any, settings: Settings) -> list[dict[str, str]]:
    return [fields for _, fields in rd.xrange(settings.dead_stream)]


def decide(rd: Any, rb: Any, settings: Settings, *customers: str, **fields: str) -> list[str]:
    """Sends one message per customer, runs a worker until drained, returns the users."""
    start = len(events(rd, settings))
    for customer in customers:
        send(rd, settings, customer, **fields)
    assert run_burst(rb, settings) == 0
    return [e["user"] for e in events(rd, settings)[start:]]


USERS = ["A", "B", "C", "D", "E"]
DEAD_LETTER_FIELDS = {"error", "detail", "inbound_id", "deliveries"}


# --- Given ---------------------------------------------------------------------------------


def given_five_available_users(rd: Any, account: str = ACCOUNT) -> None:
    given_number(rd, USERS, account=account)
    given_presence(rd, account=account, **dict.fromkeys(USERS, "available"))


def given_new_customers(rd: Any, count: int, start: int = 0) -> list[str]:
    """``count`` first messages of distinct customers, pushed in one pipeline; their ids."""
    pipe = rd.pipeline(transaction=False)
    message_ids = []
    for i in range(start, start + count):
        message_id = f"wamid.{i:06d}"
        message_ids.append(message_id)
        fields = {"account": ACCOUNT, "number": NUMBER, "from": f"4477{i:08d}"}
        pipe.xadd("rota:inbound", {**fields, "message_id": message_id})
    pipe.execute()
    return message_ids


def fields_of(account: str = ACCOUNT, number: str = NUMBER, **extra: str) -> dict[str, str]:
    return {"account": account, "number": number, **extra}


def given_decisions_of_account_fail(monkeypatch: pytest.MonkeyPatch, account: str) -> None:
    """Every decision of ``account`` fails inside decide.lua, as a fault of the script would.
    (Hand-edited data can no longer make it fail: that is dead-lettered as invalid_data.)
    Holds for Runners built after this in the test's process and workers forked from it."""
    real = scripts.source
    guard = f"if string.find(KEYS[1], '{{{account}}}', 1, true) then error('injected fault') end\n"
    monkeypatch.setattr(
        scripts, "source", lambda name: (guard if name == "decide" else "") + real(name)
    )


# --- Processes -----------------------------------------------------------------------------


def finish(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, str]:
    """Waits for the exit; the exit code and what the process wrote on stderr."""
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr.decode(errors="replace")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def pause_holding_decided(rd: Any, process: subprocess.Popen[bytes], consumer: str) -> int:
    """SIGSTOPs the worker at a moment it holds entries it has decided (their customers have an
    owner) but not yet published and acknowledged; returns how many. The worst moment to die."""
    for _ in range(500):
        os.kill(process.pid, signal.SIGSTOP)
        time.sleep(0.02)  # Redis finishes whatever the worker had sent
        held = rd.xpending_range("rota:inbound", "rota", "-", "+", 10_000, consumername=consumer)
        held_ids = {p["message_id"] for p in held}
        if held_ids:  # XPENDING lists them in id order
            entries = rd.xrange("rota:inbound", held[0]["message_id"], held[-1]["message_id"])
            customers = [fields["from"] for entry_id, fields in entries if entry_id in held_ids]
            decided = sum(o is not None for o in rd.hmget(keys.owners(ACCOUNT, NUMBER), customers))
            if decided:
                return decided
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"{consumer} never held a decided, unacknowledged batch")


# --- Then ----------------------------------------------------------------------------------


def decisions_by_message(rd: Any) -> dict[str, set[tuple[str, ...]]]:
    """message_id -> the distinct events published for it (a repeat must be identical)."""
    seen: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for _, event in rd.xrange("rota:assignments"):
        seen[event["message_id"]].add(tuple(sorted(event.items())))
    return seen


def the_decisions(rd: Any, message_ids: list[str]) -> dict[str, dict[str, str]]:
    """One decision per message: fails if one is missing, or decided two different ways."""
    seen = decisions_by_message(rd)
    assert set(seen) == set(message_ids), "every message, and only those, has a decision"
    differing = {m: events for m, events in seen.items() if len(events) != 1}
    assert not differing, f"messages decided more than one way: {list(differing)[:5]}"
    return {m: dict(next(iter(events))) for m, events in seen.items()}


def pending_count(rd: Any) -> int:
    return int(rd.xpending("rota:inbound", "rota")["pending"])


def cursor(rd: Any, account: str = ACCOUNT, number: str = NUMBER) -> int:
    return int(rd.get(keys.cursor(account, number)) or 0)


def consumer_names(rd: Any) -> list[str]:
    return [c["name"] for c in rd.xinfo_consumers("rota:inbound", "rota")]


def all_decided(rd: Any, count: int) -> Callable[[], bool]:
    """Cheap checks first: reading every event while workers run would slow them down."""

    def done() -> bool:
        if rd.xlen("rota:assignments") < count or pending_count(rd) > 0:
            return False
        return len(decisions_by_message(rd)) >= count

    return done


def drained(rd: Any) -> bool:
    """Every inbound entry read by the group and acknowledged: two small replies, so cheap
    enough to poll while workers run (acknowledged means published: a decision or a dead
    letter; the_decisions then checks which)."""
    groups = rd.xinfo_groups("rota:inbound")
    last = rd.xrevrange("rota:inbound", count=1)
    if not groups or not last:
        return False
    [group] = groups
    return int(group["pending"]) == 0 and group["last-delivered-id"] == last[0][0]


ROOT = Path(__file__).resolve().parent.parent


def run_rota(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``rota ARGS`` with only ROTA_REDIS_URL (and ``env``) set among the ROTA_ variables."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ROTA_")}
    environ.update({"ROTA_REDIS_URL": url, "ROTA_LOG_LEVEL": "warning", **env})
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


PARTITIONED_ACCOUNTS = [f"tenant{i:02d}" for i in range(8)]


def given_a_partitioned_backlog(rd: Any, rb: Any, settings: Settings) -> dict[str, tuple[int, int]]:
    """Accounts over every inbound partition, decided once (so each partition has its group),
    then one new message per account, of which a consumer ``busy`` read the first account's
    and holds it. Returns stream -> (pending, lag) as they must be shown."""
    for account in PARTITIONED_ACCOUNTS:
        given_number(rd, ["A"], account=account)
        given_presence(rd, account=account, A="available")
        send(rd, settings, "447700900001", account=account)
    assert run_burst(rb, settings) == 0
    expected = dict.fromkeys(partitions.inbound_streams(settings), (0, 0))
    for account in PARTITIONED_ACCOUNTS:
        stream = partitions.inbound_stream(settings, account)
        send(rd, settings, "447700900002", account=account)
        expected[stream] = (0, expected[stream][1] + 1)
    held = partitions.inbound_stream(settings, PARTITIONED_ACCOUNTS[0])
    rd.xreadgroup(settings.group, "busy", {held: ">"}, count=1)
    expected[held] = (1, expected[held][1] - 1)
    return expected
