"""Logs: JSON off a terminal, console on request; decisions at debug with the customer
masked; lifecycle events at info."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import spawn_worker
from tests.helpers import given_number, given_presence, send
from tests.redis_server import RedisServer
from worker.settings import Settings


def run_worker(redis_server: RedisServer, **overrides: str) -> list[str]:
    worker = spawn_worker(redis_server.url, "--burst", **overrides)
    _, logged = worker.communicate(timeout=60)
    assert worker.returncode == 0, logged
    return logged.decode().splitlines()


def given_one_message(rd: Any, settings: Settings) -> None:
    given_number(rd, ["alice"])
    given_presence(rd, alice="available")
    send(rd, settings, "447700900123")


def test_each_decision_is_logged_at_debug_with_the_customer_masked(
    redis_server: RedisServer, rd: Any, settings: Settings
) -> None:
    given_one_message(rd, settings)
    lines = run_worker(redis_server, log_level="debug")
    records = [json.loads(line) for line in lines]  # not on a terminal: JSON lines
    (decided,) = [r for r in records if r["event"] == "decided"]
    assert decided["level"] == "debug"
    assert {k: decided[k] for k in ("account", "number", "customer", "user", "reason")} == {
        "account": "acme",
        "number": "15550001000",
        "customer": "********0123",
        "user": "alice",
        "reason": "round_robin",
    }
    assert not any("447700900123" in line for line in lines)


def test_lifecycle_is_logged_at_info_and_decisions_are_not(
    redis_server: RedisServer, rd: Any, settings: Settings
) -> None:
    given_one_message(rd, settings)
    records = [json.loads(line) for line in run_worker(redis_server, log_level="info")]
    assert [(r["event"], r["level"]) for r in records] == [
        ("worker starting", "info"),
        ("worker started", "info"),
        ("worker stopped", "info"),
    ]


def test_console_format_on_request(redis_server: RedisServer, rd: Any, settings: Settings) -> None:
    lines = run_worker(redis_server, log_level="info", log_format="console")
    assert any("worker started" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)
