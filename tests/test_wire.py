"""The hot path's hand-packed EVALSHA is byte for byte what hiredis packs."""

from __future__ import annotations

from typing import Any

import hiredis

from tests.helpers import ACCOUNT, NUMBER
from worker.assign import Assigner
from worker.messages import Message
from worker.scripts import Scripts

NOW = 1_700_000_000_000


def test_packed_evalsha_equals_hiredis_packing_of_the_same_call(rb: Any) -> None:
    assigner = Assigner(Scripts(rb), dedup_window_s=86_400)
    for customer, message_id in (("447700900001", "wamid.1"), ("447700900002", "é|{x}\r\n")):
        message = Message("1-0", ACCOUNT, NUMBER, customer, message_id)

        packed = assigner._packed(message, NOW)

        script_keys, args = assigner.call(message, NOW)
        expected = ("EVALSHA", assigner._script.sha, len(script_keys), *script_keys, *args)
        assert packed == hiredis.pack_command(expected)


def test_packed_evalsha_follows_a_new_time_bucket(rb: Any) -> None:
    assigner = Assigner(Scripts(rb), dedup_window_s=60)
    message = Message("1-0", ACCOUNT, NUMBER, "447700900001", "wamid.1")
    first = assigner._packed(message, NOW)

    later = assigner._packed(message, NOW + 60_000)

    script_keys, args = assigner.call(message, NOW + 60_000)
    expected = ("EVALSHA", assigner._script.sha, len(script_keys), *script_keys, *args)
    assert later == hiredis.pack_command(expected) != first
