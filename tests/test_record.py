"""The published decision's one definition: what the worker writes is what readers parse."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import events, given_number, run_burst, send
from worker.record import FIELDS, InvalidRecord, Record
from worker.settings import Settings

RECORD = Record(
    "acme", "15550001000", "447700900001", "wamid.1", "1-0", "ali|ce", "round_robin", 17
)


def test_a_record_reads_back_from_the_stream_as_written(rd: Any, rb: Any) -> None:
    rb.xadd("rota:assignments", RECORD.to_fields())

    [(_, raw)] = rb.xrange("rota:assignments")
    [(_, text)] = rd.xrange("rota:assignments")

    assert Record.from_fields(raw) == Record.from_fields(text) == RECORD
    assert Record.from_fields({**RECORD.to_fields(), "other": "x"}) == RECORD


def test_an_event_reads_back_with_previous_and_event_id() -> None:
    event = Record(
        "acme", "15550001000", "447700900001", "", "", "bob", "reply_timeout", 17, "ann", "acme:7"
    )

    assert Record.from_fields(event.to_fields()) == event


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({k: v for k, v in RECORD.to_fields().items() if k != "user"}, "user missing"),
        ({**RECORD.to_fields(), "at": "soon"}, "at must be unix milliseconds"),
        ({**RECORD.to_fields(), "at": "\u0661\u0667"}, "at must be unix"),  # Arabic digits
    ],
)
def test_fields_that_are_no_decision_are_refused_with_what_is_wrong(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidRecord, match=problem):
        Record.from_fields(fields)


def test_the_worker_publishes_exactly_the_contract_fields(
    rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice"], online_only=False)
    inbound_id = send(rd, settings, "447700900001", message_id="wamid.1")
    assert run_burst(rb, settings) == 0

    [published] = events(rd, settings)

    assert tuple(published) == FIELDS
    record = Record.from_fields(published)
    assert (record.inbound_id, record.user, record.reason) == (inbound_id, "alice", "round_robin")
