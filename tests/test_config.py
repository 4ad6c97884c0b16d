"""The configuration: ``rota apply FILE``, ``rota export``, and ``number set`` beside them
(one writer for both)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ON_SINGLE_AND_CLUSTER, Target
from tests.helpers import ACCOUNT, NUMBER, decide, given_presence
from tests.ops import rota
from tests.redis_server import RedisServer
from worker import admin, config_redis, keys
from worker.config import NumberConfig
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


# --- One writer: number set merges, apply replaces, both atomic, one version rule ----------


@ON_SINGLE_AND_CLUSTER
def test_concurrent_number_sets_of_different_fields_lose_none(rd: Any) -> None:
    # Given five writers, each changing its own field of one number, all at once, round after
    # round (each round gives every field a value it did not have)
    def changes(round_: int) -> list[dict[str, Any]]:
        on, user = round_ % 2 == 1, f"user{round_}"
        return [
            {"assign_unknown": on},
            {"online_only": on},
            {"admin": user},
            {"members": [user]},
            {"access": [user]},
        ]

    barrier = threading.Barrier(5)

    def write(change: dict[str, Any]) -> None:
        barrier.wait()
        admin.set_number(rd, ACCOUNT, NUMBER, **change)

    with ThreadPoolExecutor(max_workers=5) as pool:
        for round_ in range(200):
            # When they run
            list(pool.map(write, changes(round_)))
            # Then every change is there: none overwrote another's
            on, user = str(round_ % 2), f"user{round_}"
            assert rd.hgetall(keys.number(ACCOUNT, NUMBER)) == {
                "assign_unknown": on,
                "online_only": on,
                "admin": user,
            }, f"round {round_}: a change was lost"
            assert rd.lrange(keys.members(ACCOUNT, NUMBER), 0, -1) == [user]
            assert rd.smembers(keys.access(ACCOUNT, NUMBER)) == {user}


def test_version_moves_once_per_write_of_members_access_or_groups_on_every_path(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    def version() -> int:
        return int(rd.get(keys.version("acme")) or 0)

    def applied(text: str, *flags: str) -> None:
        assert cli("apply", *flags, str(write(tmp_path, text))).code == 0

    steps: list[tuple[str, Any, int]] = [
        (
            "number set of flags and admin",
            lambda: admin.set_number(rd, "acme", "15550001000", online_only=False, admin="boss"),
            0,
        ),
        (
            "number set of members and access",
            lambda: admin.set_number(rd, "acme", "15550001000", members=["A"], access=["A"]),
            1,
        ),
        ("group set", lambda: admin.set_group(rd, "acme", "old", ["B"]), 1),
        ("account set", lambda: admin.set_account(rd, "acme", "boss"), 0),
        (
            "apply of an account's admin only",
            lambda: applied('[accounts.acme]\nadmin = "boss2"\n'),
            0,
        ),
        (
            "apply of a number",
            lambda: applied('[accounts.acme.numbers.15550001000]\nmembers = ["A"]\n'),
            1,
        ),
        (
            "apply --prune removing a group",
            lambda: applied('[accounts.acme]\nadmin = "boss2"\n', "--prune"),
            1,
        ),
    ]
    for what, step, moves in steps:
        before = version()
        step()
        assert version() - before == moves, what


def test_apply_replaces_what_number_set_merges(cli: Any, rd: Any, tmp_path: Path) -> None:
    # Given a number with an admin, access and online_only off
    admin.set_number(
        rd, "acme", "15550001000", members=["A"], access=["A"], admin="boss", online_only=False
    )
    # When number set gives only members, the rest stays
    admin.set_number(rd, "acme", "15550001000", members=["B", "A"])
    assert config_redis.read_number(rd, "acme", "15550001000") == NumberConfig(
        members=["B", "A"], access=["A"], online_only=False, admin="boss"
    )
    # and when a file gives only members, the number is what the file says, defaults included
    applied = cli("apply", str(write(tmp_path, CONFIG_MEMBERS_ONLY)))
    assert applied.code == 0
    assert config_redis.read_number(rd, "acme", "15550001000") == NumberConfig(members=["C"])
    assert rd.hgetall(keys.number("acme", "15550001000")) == {
        "assign_unknown": "1",
        "online_only": "1",
    }


CONFIG_MEMBERS_ONLY = '[accounts.acme.numbers.15550001000]\nmembers = ["C"]\n'
THREE_ACCOUNTS = """\
[accounts.alpha.numbers.15550001000]
members = ["A"]

[accounts.beta.numbers.15550001000]
members = ["B"]

[accounts.gamma.numbers.15550001000]
members = ["C"]
"""


@ON_SINGLE_AND_CLUSTER
def test_apply_leaves_an_account_it_cannot_write_untouched_and_says_what_was_written(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    target: Target,
    rd: Any,
    tmp_path: Path,
) -> None:
    # Given a file of three accounts, and the second one's settings key holding a string
    rd.set(keys.account_settings("beta"), "not a hash")
    # When it is applied
    result = rota(monkeypatch, capsys, target.url, "apply", str(write(tmp_path, THREE_ACCOUNTS)))
    # Then the first account is written, the second is left exactly as it was, the third is
    # not tried, and one line says so
    assert result.code == 1
    assert result.out == ""
    [line] = result.err.splitlines()
    assert line.startswith("rota: error: apply stopped at account beta ("), line
    assert line.endswith("written: alpha; not written: beta, gamma"), line
    assert rd.lrange(keys.members("alpha", "15550001000"), 0, -1) == ["A"]
    assert rd.exists(keys.number("beta", "15550001000"), keys.members("beta", "15550001000")) == 0
    assert rd.get(keys.version("beta")) is None
    assert rd.get(keys.account_settings("beta")) == "not a hash"
    assert rd.exists(keys.number("gamma", "15550001000")) == 0


def test_number_set_that_cannot_bump_the_version_writes_nothing(cli: Any, rd: Any) -> None:
    # Given an account whose version counter someone overwrote with a word
    rd.set(keys.version(ACCOUNT), "seven")
    # When number set changes members (which must move the version)
    result = cli("number", "set", ACCOUNT, NUMBER, "--members", "alice", "--no-online-only")
    # Then it fails with one line naming the key, and nothing of it was written
    assert result.code == 1
    [line] = result.err.splitlines()
    assert line.startswith(f"rota: error: {keys.version(ACCOUNT)} holds 'seven'"), line
    assert rd.exists(keys.number(ACCOUNT, NUMBER), keys.members(ACCOUNT, NUMBER)) == 0


def test_reindex_finds_configuration_written_before_the_index(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    # Given the configuration of CONFIG, and nothing but it: the index of an older version absent
    cli("apply", str(write(tmp_path, CONFIG)))
    rd.delete(
        keys.accounts(),
        *(keys.indexed_numbers(a) for a in ("acme", "beta.eu")),
        *(keys.indexed_groups(a) for a in ("acme", "beta.eu")),
    )
    assert cli("export").out.strip().splitlines() == [CONFIG.splitlines()[0]]
    # When the index is rebuilt (by a user who may SCAN; group support is empty: no key)
    result = cli("reindex")
    # Then export finds all of it again
    assert (result.code, result.out) == (0, "indexed: accounts 2, numbers 3, groups 1\n")
    assert cli("export").out == CONFIG


def test_export_and_prune_skip_what_the_index_names_but_is_gone(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    # Given a number and a group deleted by hand, still in the index
    admin.set_group(rd, "acme", "old", ["x"])
    admin.set_number(rd, "acme", "15550001000", members=["A"])
    admin.set_number(rd, "acme", "15550009999", members=["Z"])
    rd.delete(keys.group("acme", "old"), keys.number("acme", "15550009999"))
    # Then export leaves them out, and prune removes them from the index
    exported = cli("export").out
    assert "15550009999" not in exported and "old" not in exported
    assert cli("apply", "--prune", str(write(tmp_path, exported))).code == 0
    assert rd.smembers(keys.indexed_numbers("acme")) == {"15550001000"}


def test_stats_of_an_account_lists_its_indexed_numbers(cli: Any, rd: Any) -> None:
    admin.set_number(rd, "acme", "15550001000", members=["A"])
    admin.set_number(rd, "acme", "15550002000", members=["B"])
    admin.set_number(rd, "other", "15550003000", members=["C"])

    shown = cli("stats", "acme")

    assert shown.code == 0
    assert sorted(json.loads(shown.out)["account"]["numbers"]) == ["15550001000", "15550002000"]


# The conversation settings: presence_ttl_s (account); capacity, owner_online_only, when_nobody,
# queue_max_wait_s and reply_timeout_s (number).

CONVERSATIONS = """\
# Rota configuration: `rota apply FILE` writes it, `rota export` prints it.

[accounts.acme]
admin = "boss"
presence_ttl_s = 300

[accounts.acme.numbers.15550001000]
members = ["A", "B"]
access = []
assign_unknown = true
online_only = true
capacity = 5
owner_online_only = true
when_nobody = "queue"
queue_max_wait_s = 600
reply_timeout_s = 120
"""


def test_conversation_settings_round_trip_through_apply_and_export(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    # Given a file with every conversation setting on
    applied = cli("apply", str(write(tmp_path, CONVERSATIONS)))
    # Then they are stored where the worker reads them, and export prints the file again
    assert applied.code == 0, applied.err
    assert rd.hgetall(keys.account_settings("acme")) == {"admin": "boss", "presence_ttl_s": "300"}
    assert rd.hgetall(keys.number("acme", "15550001000")) == {
        "assign_unknown": "1",
        "online_only": "1",
        "capacity": "5",
        "owner_online_only": "1",
        "when_nobody": "queue",
        "queue_max_wait_s": "600",
        "reply_timeout_s": "120",
    }
    assert cli("export").out == CONVERSATIONS


def test_conversation_settings_left_out_are_off_and_not_exported(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    # Given the settings on, then a file that leaves them out
    cli("apply", str(write(tmp_path, CONVERSATIONS)))
    without = CONVERSATIONS.replace("presence_ttl_s = 300\n", "")
    without = without.replace("capacity = 5\nowner_online_only = true\n", "")
    without = without.replace('when_nobody = "queue"\n', "")
    without = without.replace("queue_max_wait_s = 600\nreply_timeout_s = 120\n", "")
    assert "when_nobody" not in without and "_s = " not in without
    assert cli("apply", str(write(tmp_path, without))).code == 0
    # Then they are off (absent) and the export has none of them
    assert rd.hgetall(keys.account_settings("acme")) == {"admin": "boss"}
    assert config_redis.read_number(rd, "acme", "15550001000") == NumberConfig(members=["A", "B"])
    assert rd.hgetall(keys.number("acme", "15550001000")) == {
        "assign_unknown": "1",
        "online_only": "1",
    }
    assert cli("export").out == without


def test_number_and_account_set_merge_the_conversation_settings(cli: Any, rd: Any) -> None:
    admin.set_number(rd, "acme", "15550001000", members=["A"], capacity=2)
    admin.set_number(rd, "acme", "15550001000", owner_online_only=True)
    admin.set_account(rd, "acme", admin="boss")
    admin.set_account(rd, "acme", presence_ttl_s=60)

    assert config_redis.read_number(rd, "acme", "15550001000") == NumberConfig(
        members=["A"], capacity=2, owner_online_only=True
    )
    assert config_redis.read_account(rd, "acme").presence_ttl_s == 60
    assert "presence_ttl_s = 60\n" in cli("export").out
    admin.set_account(rd, "acme", presence_ttl_s=0)  # off: removed
    assert rd.hgetall(keys.account_settings("acme")) == {"admin": "boss"}


def test_number_set_merges_the_queue_and_timer_settings(cli: Any, rd: Any) -> None:
    # Given each setting written by a set of its own
    admin.set_number(rd, "acme", "15550001000", members=["A"], when_nobody="queue")
    admin.set_number(rd, "acme", "15550001000", queue_max_wait_s=300)
    admin.set_number(rd, "acme", "15550001000", reply_timeout_s=45)
    # Then the number has all three, and export prints them
    assert config_redis.read_number(rd, "acme", "15550001000") == NumberConfig(
        members=["A"], when_nobody="queue", queue_max_wait_s=300, reply_timeout_s=45
    )
    exported = cli("export").out
    assert 'when_nobody = "queue"\nqueue_max_wait_s = 300\nreply_timeout_s = 45\n' in exported
    # When they are turned off again, export leaves them out: the file is what it was before
    admin.set_number(
        rd, "acme", "15550001000", when_nobody="admin", queue_max_wait_s=0, reply_timeout_s=0
    )
    assert config_redis.read_number(rd, "acme", "15550001000") == NumberConfig(members=["A"])
    exported = cli("export").out
    assert "when_nobody" not in exported and "wait" not in exported and "timeout" not in exported


@pytest.mark.parametrize(("stored", "read"), [("queue", "queue"), ("admin", "admin"),
                                              ("Queue", "admin"), ("", "admin")])  # fmt: skip
def test_a_hand_written_when_nobody_reads_as_the_worker_reads_it(
    rd: Any, stored: str, read: str
) -> None:
    admin.set_number(rd, "acme", "15550001000", members=["A"])
    rd.hset(keys.number("acme", "15550001000"), "when_nobody", stored)

    config = config_redis.read_number(rd, "acme", "15550001000")
    assert config is not None and config.when_nobody == read


@pytest.mark.parametrize(
    ("stored", "read"), [("7", 7), ("0", 0), ("-3", 0), ("seven", 0), ("9" * 30, 0)]
)
def test_a_hand_written_capacity_that_is_no_whole_number_reads_as_off(
    rd: Any, stored: str, read: int
) -> None:
    admin.set_number(rd, "acme", "15550001000", members=["A"])
    rd.hset(keys.number("acme", "15550001000"), "capacity", stored)

    config = config_redis.read_number(rd, "acme", "15550001000")
    assert config is not None and config.capacity == read


@pytest.mark.parametrize(
    ("body", "line", "complaint"),
    [
        ("[accounts.acme]\n\npresence_ttl_s = -1\n", 3, "whole number"),
        ('[accounts.acme]\npresence_ttl_s = "60"\n', 2, "whole number"),
        ("[accounts.acme.numbers.15550001000]\ncapacity = 1.5\n", 2, "whole number"),
        ("[accounts.acme.numbers.15550001000]\ncapacity = true\n", 2, "whole number"),
        ("[accounts.acme.numbers.15550001000]\ncapacity = 4294967296\n", 2, "whole number"),
        ("[accounts.acme.numbers.15550001000]\n\n\nowner_online_only = 1\n", 4, "true or false"),
        ('[accounts.acme.numbers.15550001000]\nwhen_nobody = "nobody"\n', 2, '"admin" or "queue"'),
        ("[accounts.acme.numbers.15550001000]\n\nwhen_nobody = true\n", 3, '"admin" or "queue"'),
        ('[accounts.acme.numbers.15550001000]\nwhen_nobody = "QUEUE"\n', 2, '"admin" or "queue"'),
        ("[accounts.acme.numbers.15550001000]\nqueue_max_wait_s = -1\n", 2, "whole number"),
        ('[accounts.acme.numbers.15550001000]\nqueue_max_wait_s = "60"\n', 2, "whole number"),
        ("[accounts.acme.numbers.15550001000]\n\nreply_timeout_s = 1.5\n", 3, "whole number"),
        ("[accounts.acme.numbers.15550001000]\nreply_timeout_s = 4294967296\n", 2, "whole number"),
    ],
)
def test_conversation_settings_are_checked_at_their_line(
    cli: Any, rd: Any, tmp_path: Path, body: str, line: int, complaint: str
) -> None:
    result = cli("apply", str(write(tmp_path, body)))
    assert result.code == 2
    [said] = result.err.splitlines()
    assert f"rota.toml:{line}:" in said
    assert complaint in said
    assert rd.keys("*") == []


# --- whatsapp_phone_number_id: the number's id at Meta, listed in rota:whatsapp ---------------

PHONE_ID, OTHER_ID = "106540352242922", "106540352249999"
WHATSAPP = f"""\
# Rota configuration: `rota apply FILE` writes it, `rota export` prints it.

[accounts.acme]

[accounts.acme.numbers.15550001000]
members = ["A"]
access = []
assign_unknown = true
online_only = true
whatsapp_phone_number_id = "{PHONE_ID}"

[accounts.acme.numbers.15550002000]
members = ["B"]
access = []
assign_unknown = true
online_only = true
"""


def listed(rd: Any) -> dict[str, str]:
    return dict(rd.hgetall(keys.whatsapp_numbers()))


def test_number_set_lists_changes_and_removes_the_whatsapp_phone_number_id(
    cli: Any, rd: Any
) -> None:
    # When the id is set, it is a setting of the number and listed for the webhook
    number = ("number", "set", "acme", "+1 555 000 1000")
    assert cli(*number, "--members", "A", "--whatsapp-phone-number-id", PHONE_ID).code == 0
    shown = json.loads(cli("number", "show", "acme", "15550001000").out)
    assert shown["settings"]["whatsapp_phone_number_id"] == PHONE_ID
    assert listed(rd) == {PHONE_ID: "acme 15550001000"}
    # When it changes, the old id is no longer listed; other settings stay
    assert cli(*number, "--whatsapp-phone-number-id", OTHER_ID).code == 0
    assert listed(rd) == {OTHER_ID: "acme 15550001000"}
    assert rd.lrange(keys.members("acme", "15550001000"), 0, -1) == ["A"]
    # When it is removed ("" ), the number has none and nothing is listed
    assert cli(*number, "--whatsapp-phone-number-id", "").code == 0
    assert "whatsapp_phone_number_id" not in rd.hgetall(keys.number("acme", "15550001000"))
    assert listed(rd) == {}
    shown = json.loads(cli("number", "show", "acme", "15550001000").out)
    assert shown["settings"]["whatsapp_phone_number_id"] is None


def test_an_id_another_number_has_is_refused_and_nothing_is_written(cli: Any, rd: Any) -> None:
    admin.set_number(rd, "acme", "15550001000", members=["A"], whatsapp_phone_number_id=PHONE_ID)
    before = rd.hgetall(keys.number("beta", "15550001000"))
    result = cli("number", "set", "beta", "15550001000", "--members", "B",
                 "--whatsapp-phone-number-id", PHONE_ID)  # fmt: skip
    assert result.code == 2
    [said] = result.err.splitlines()
    assert said == (
        f"rota: error: whatsapp_phone_number_id {PHONE_ID} is already account acme number "
        "15550001000's; remove it there first"
    )
    assert rd.hgetall(keys.number("beta", "15550001000")) == before == {}
    assert listed(rd) == {PHONE_ID: "acme 15550001000"}


def test_an_id_listed_for_a_number_that_lost_it_may_be_set_elsewhere(rd: Any) -> None:
    # Given an id still listed for a number that no longer has it (a crash between the two
    # writes, or a hand edit)
    admin.set_number(rd, "acme", "15550001000", members=["A"], whatsapp_phone_number_id=PHONE_ID)
    rd.hdel(keys.number("acme", "15550001000"), "whatsapp_phone_number_id")
    # Then another number may take it
    admin.set_number(rd, "beta", "15550001000", members=["B"], whatsapp_phone_number_id=PHONE_ID)
    assert listed(rd) == {PHONE_ID: "beta 15550001000"}


@pytest.mark.parametrize("given", ["abc", "+106540352242922", "1" * 65, " "])
def test_an_id_that_is_not_digits_is_bad_input(cli: Any, rd: Any, given: str) -> None:
    result = cli("number", "set", "acme", "15550001000", "--whatsapp-phone-number-id", given)
    assert result.code == 2
    assert "must be 1-64 digits" in result.err
    assert rd.keys("*") == []


def test_the_id_round_trips_through_apply_and_export(cli: Any, rd: Any, tmp_path: Path) -> None:
    assert cli("apply", str(write(tmp_path, WHATSAPP))).code == 0
    assert listed(rd) == {PHONE_ID: "acme 15550001000"}
    assert cli("export").out == WHATSAPP
    # A file that moves it to the other number lists it there, in either order of the numbers
    moved = WHATSAPP.replace(f'whatsapp_phone_number_id = "{PHONE_ID}"\n', "")
    moved += f'whatsapp_phone_number_id = "{PHONE_ID}"\n'
    assert cli("apply", str(write(tmp_path, moved))).code == 0
    assert listed(rd) == {PHONE_ID: "acme 15550002000"}
    assert cli("export").out == moved
    assert cli("apply", str(write(tmp_path, WHATSAPP))).code == 0
    assert listed(rd) == {PHONE_ID: "acme 15550001000"}


def test_apply_moves_an_id_between_accounts_in_either_order(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    admin.set_number(rd, "acme", "15550001000", members=["A"], whatsapp_phone_number_id=PHONE_ID)
    beta_first = f"""\
[accounts.beta.numbers.15550009000]
members = ["Z"]
whatsapp_phone_number_id = "{PHONE_ID}"

[accounts.acme.numbers.15550001000]
members = ["A"]
"""
    assert cli("apply", str(write(tmp_path, beta_first))).code == 0
    assert listed(rd) == {PHONE_ID: "beta 15550009000"}
    config = config_redis.read_number(rd, "acme", "15550001000")
    assert config is not None and config.whatsapp_phone_number_id is None


def test_apply_refuses_an_id_a_number_outside_the_file_has_writing_nothing(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    admin.set_number(rd, "beta", "15550009000", members=["Z"], whatsapp_phone_number_id=PHONE_ID)
    result = cli("apply", str(write(tmp_path, WHATSAPP)))
    assert result.code == 2
    assert f"{PHONE_ID} is already account beta number 15550009000's" in result.err
    assert rd.exists(keys.number("acme", "15550001000")) == 0
    assert listed(rd) == {PHONE_ID: "beta 15550009000"}


def test_apply_with_prune_unlists_the_id_of_a_pruned_number(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    assert cli("apply", str(write(tmp_path, WHATSAPP))).code == 0
    only_second = WHATSAPP[: WHATSAPP.index("[accounts.acme.numbers.15550001000]")]
    only_second += WHATSAPP[WHATSAPP.index("[accounts.acme.numbers.15550002000]") :]
    assert cli("apply", "--prune", str(write(tmp_path, only_second))).code == 0
    assert listed(rd) == {}


def test_a_file_that_gives_one_id_to_two_numbers_names_the_second(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    twice = WHATSAPP + f'whatsapp_phone_number_id = "{PHONE_ID}"\n'
    result = cli("apply", str(write(tmp_path, twice)))
    assert result.code == 2
    [said] = result.err.splitlines()
    assert f"rota.toml:{twice.count(chr(10))}:" in said
    assert "is already the id of account acme 15550001000" in said
    assert rd.keys("*") == []


def test_a_file_whose_id_is_not_a_digit_string_names_its_line(
    cli: Any, rd: Any, tmp_path: Path
) -> None:
    for value in ("106540352242922", '"ab12"'):
        body = f"[accounts.acme.numbers.15550001000]\n\nwhatsapp_phone_number_id = {value}\n"
        result = cli("apply", str(write(tmp_path, body)))
        assert result.code == 2
        assert "rota.toml:3:" in result.err
    assert rd.keys("*") == []


def test_reindex_lists_ids_written_by_hand_and_unlists_stale_ones(cli: Any, rd: Any) -> None:
    admin.set_number(rd, "acme", "15550001000", members=["A"], whatsapp_phone_number_id=PHONE_ID)
    admin.set_number(rd, "acme", "15550002000", members=["B"])
    # Given the id taken off by hand, and another written by hand
    rd.hdel(keys.number("acme", "15550001000"), "whatsapp_phone_number_id")
    rd.hset(keys.number("acme", "15550002000"), "whatsapp_phone_number_id", OTHER_ID)
    result = cli("reindex")
    assert (result.code, result.out) == (
        0,
        "indexed: accounts 1, numbers 2, groups 0, whatsapp ids 1\n",
    )
    assert listed(rd) == {OTHER_ID: "acme 15550002000"}
