"""The product sheet's four Quick Reference cases, as written."""

from __future__ import annotations

from typing import Any

from tests.conftest import ON_SINGLE_AND_CLUSTER
from tests.helpers import decide, given_number, given_presence
from worker import admin
from worker.settings import Settings

pytestmark = ON_SINGLE_AND_CLUSTER


def test_case_1_all_available_rotate_in_order(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["A", "B", "C", "D"])
    given_presence(rd, A="available", B="available", C="available", D="available")
    users = decide(rd, rb, settings, *(f"44770090000{i}" for i in range(5)))
    assert users == ["A", "B", "C", "D", "A"]


def test_case_2_rotation_only_between_available(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["A", "B", "C", "D"])
    given_presence(rd, A="unavailable", B="available", C="in_break", D="available")
    users = decide(rd, rb, settings, *(f"44770090000{i}" for i in range(4)))
    assert users == ["B", "D", "B", "D"]


def test_case_3_next_chat_skips_user_gone_unavailable(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["A", "B", "C", "D"])
    given_presence(rd, A="unavailable", B="available", C="in_break", D="available")
    assert decide(rd, rb, settings, "447700900001") == ["B"]
    given_presence(rd, B="unavailable")
    assert decide(rd, rb, settings, "447700900002", "447700900003") == ["D", "D"]


def test_case_4_nobody_available_goes_to_admin(rd: Any, rb: Any, settings: Settings) -> None:
    given_number(rd, ["A", "B", "C", "D"])
    admin.set_account(rd, "acme", "boss")
    given_presence(rd, A="unavailable", B="away", C="in_break")  # D has no status
    users = decide(rd, rb, settings, "447700900001", "447700900002")
    assert users == ["boss", "boss"]
