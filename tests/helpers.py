"""Small Given/When/Then helpers shared by the tests."""

from __future__ import annotations

from typing import Any

from worker import admin
from worker.log import logger
from worker.partitioned import make_runner
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
    """A burst worker: one Runner, or one lane per partition with ROTA_INBOUND_PARTITIONS."""
    return make_runner(rb, settings, logger(settings), consumer=consumer).run(burst=True)


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
