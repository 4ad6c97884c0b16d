"""Configuration as code: ``rota apply FILE`` and ``rota export``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import decide, given_presence
from tests.ops import rota
from tests.redis_server import RedisServer
from worker import admin, keys
from worker.settings import Settings
from worker.tomlpos import key_lines

CONFIG = """\
# Rota configuration: `rota apply FILE` writes it, `rota export` prints it.

[accounts.acme]
admin = "boss"

[accounts.acme.groups]
sales = ["alice", "bob"]
support = []

[accounts.acme.numbers.15550001000]
members = ["carol", "group:sales"]
access = ["carol", "group:sales"]
assign_unknown = true
online_only = false
admin = "night.manager@acme.example"

[accounts.acme.numbers.15550002000]
members = ["group:support"]
access = []
assign_unknown = false
online_only = true

[accounts."beta.eu"]

[accounts."beta.eu".numbers.447700900000]
members = ["x"]
access = []
assign_unknown = true
online_only = true
"""


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> Any:
    def run(*args: str) -> Any:
        return rota(monkeypatch, capsys, redis_server.url, *args)

    return run


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rota.toml"
    path.write_text(text)
    return path


def test_apply_then_export_prints_the_same_file(cli: Any, rd: Any, tmp_path: Path) -> None:
    # Given a file in the export format
    path = write(tmp_path, CONFIG)
    # When it is applied and the state exported
    applied = cli("apply", str(path))
    exported = cli("export")
    # Then the export is the file, byte for byte
    assert (applied.code, exported.code) == (0, 0)
    assert exported.out == CONFIG


def test_export_then_apply_restores_the_same_state(cli: Any, rd: Any, tmp_path: Path) -> None:
    # Given a state built with the commands, with a group named but never set
    admin.set_account(rd, "acme", "boss")
    admin.set_group(rd, "acme", "sales", ["alice", "bob"])
    admin.set_number(rd, "acme", "15550001000", members=["group:sales", "group:later", "carol"])
    admin.set_number(rd, "acme", "15550002000", access=["carol"], online_only=False, admin="x")
    before = cli("export").out
    # When it is exported, the database emptied and the export applied
    rd.flushall()
    applied = cli("apply", str(write(tmp_path, before)))
    # Then the same configuration is back
    assert applied.code == 0
    assert cli("export").out == before
    assert rd.lrange(keys.members("acme", "15550001000"), 0, -1) == [
        "group:sales",
        "group:later",
        "carol",
    ]


def test_invalid_file_names_its_line_and_writes_nothing(cli: Any, rd: Any, tmp_path: Path) -> None:
    # Given a file whose first account is fine and whose second has a bad user on line 9
    text = """\
[accounts.acme]
admin = "boss"

[accounts.beta.numbers.15550001000]
members = [
    "alice",
    "bob",
    "carol",
    "not a user",
]
"""
    # When it is applied
    result = cli("apply", str(write(tmp_path, text)))
    # Then the command fails with one line naming the file's line, and nothing is written
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert f"{tmp_path / 'rota.toml'}:9:" in result.err
    assert "not a user" in result.err
    assert rd.keys("*") == []


def test_toml_syntax_error_names_its_line(cli: Any, rd: Any, tmp_path: Path) -> None:
    result = cli("apply", str(write(tmp_path, '[accounts.acme]\nadmin = "boss"\nadmin2 = \n')))
    assert result.code == 2
    assert f"{tmp_path / 'rota.toml'}:3:" in result.err
    assert result.err.count("\n") == 1


@pytest.mark.parametrize(
    ("body", "line", "complaint"),
    [
        ('[accounts.acme.numbers.15550001000]\nmembers = ["group:nope"]\n', 2, "not defined"),
        ("[accounts.acme.numbers.15550001000]\n\nonline_only = 1\n", 3, "true or false"),
        ('[accounts.acme]\nadmins = "x"\n', 2, "unknown key"),
        ("[accounts.acme.numbers.12]\n", 1, "6-15 digits"),
        (
            '[accounts.acme.numbers."+1 555 000 1000"]\n[accounts.acme.numbers.15550001000]\n',
            2,
            "listed twice",
        ),
    ],
)
def test_each_rule_of_the_file_is_checked_at_its_line(
    cli: Any, rd: Any, tmp_path: Path, body: str, line: int, complaint: str
) -> None:
    result = cli("apply", str(write(tmp_path, body)))
    assert result.code == 2
    assert f"rota.toml:{line}:" in result.err
    assert complaint in result.err


def test_missing_file_is_bad_input(cli: Any, tmp_path: Path) -> None:
    result = cli("apply", str(tmp_path / "absent.toml"))
    assert result.code == 2
    assert "absent.toml" in result.err


def test_check_validates_without_writing(cli: Any, rd: Any, tmp_path: Path) -> None:
    result = cli("apply", "--check", str(write(tmp_path, CONFIG)))
    assert result.code == 0
    assert "valid" in result.out
    assert rd.keys("*") == []


def test_applied_members_take_effect_on_the_next_decision(
    cli: Any, rd: Any, rb: Any, settings: Settings, tmp_path: Path
) -> None:
    # Given a number whose rotation a worker has already compiled
    path = write(tmp_path, '[accounts.acme.numbers.15550001000]\nmembers = ["A", "B"]\n')
    cli("apply", str(path))
    given_presence(rd, A="available", B="available", C="available")
    assert decide(rd, rb, settings, "447700900001") == ["A"]
    # When a file replaces its members
    path.write_text('[accounts.acme.numbers.15550001000]\nmembers = ["C"]\n')
    cli("apply", str(path))
    # Then the next decision uses the new rotation
    assert decide(rd, rb, settings, "447700900002") == ["C"]


def test_apply_keeps_state_and_what_the_file_leaves_out(cli: Any, rd: Any, tmp_path: Path) -> None:
    # Given a number with a cursor and an owner, and another number the file will not name
    admin.set_number(rd, "acme", "15550001000", members=["A"])
    admin.set_number(rd, "acme", "15550009999", members=["Z"])
    admin.set_owner(rd, "acme", "15550001000", "447700900001", "A")
    rd.set(keys.cursor("acme", "15550001000"), 7)
    # When a file about the first number only is applied
    cli("apply", str(write(tmp_path, '[accounts.acme.numbers.15550001000]\nmembers = ["B"]\n')))
    # Then cursor, owners and the other number are untouched
    assert rd.get(keys.cursor("acme", "15550001000")) == "7"
    assert rd.hget(keys.owners("acme", "15550001000"), "447700900001") == "A"
    assert rd.lrange(keys.members("acme", "15550009999"), 0, -1) == ["Z"]


def test_prune_removes_the_groups_and_numbers_the_file_leaves_out(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    admin.set_group(rd, "acme", "old", ["x"])
    admin.set_number(rd, "acme", "15550009999", members=["Z"])
    admin.set_number(rd, "other", "15550009999", members=["Z"])
    path = write(tmp_path, '[accounts.acme.numbers.15550001000]\nmembers = ["B"]\n')
    assert cli("apply", "--prune", str(path)).code == 0
    assert not rd.exists(keys.group("acme", "old"), keys.number("acme", "15550009999"))
    assert rd.exists(keys.number("other", "15550009999"))  # another account is not pruned


def test_warns_about_members_outside_access(cli: Any, rd: Any, tmp_path: Path) -> None:
    text = '[accounts.acme.numbers.15550001000]\nmembers = ["A", "B"]\naccess = ["A"]\n'
    result = cli("apply", str(write(tmp_path, text)))
    assert result.code == 0
    assert "member B has no access" in result.err


def test_key_lines_name_each_element_of_a_multiline_array() -> None:
    text = '[a."b.c"]\nlist = [\n  "x", # one\n  \'y\',\n]\nflag = true\n'
    lines = key_lines(text)
    assert lines[("a", "b.c", "list", 0)] == 3
    assert lines[("a", "b.c", "list", 1)] == 4
    assert lines[("a", "b.c", "flag")] == 6
