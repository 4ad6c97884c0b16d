"""A refused login (WRONGPASS, NOAUTH) or a refused command (NOPERM) ends every ``rota`` command
and the worker with exit 1 and one line naming the server's code: retrying cannot cure either,
and "redis unreachable" would send the operator to the network instead of the ACL."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import run_rota
from tests.redis_cluster import RedisClusterServers
from tests.redis_server import RedisServer
from tests.test_security import PASSWORD, readme_acl_line

ACCOUNT, NUMBER, CUSTOMER = "acme", "15550001000", "447700900123"
HOOKS = {"ROTA_WEBHOOK_URL": "http://127.0.0.1:9/rota", "ROTA_WEBHOOK_SECRET": "x"}
CONFIG = f'[accounts.{ACCOUNT}.numbers.{NUMBER}]\nmembers = ["alice"]\n'


def commands(config: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Every command path that talks to Redis, with the settings it needs."""
    return {
        "worker": (["worker"], {}),
        "worker-burst": (["worker", "--burst"], {}),
        "worker-webhooks": (["worker", "--burst"], HOOKS),
        "worker-partitions": (["worker", "--burst"], {"ROTA_INBOUND_PARTITIONS": "3"}),
        "webhooks": (["webhooks"], HOOKS),
        "webhooks-burst": (["webhooks", "--burst"], HOOKS),
        "apply": (["apply", str(config)], {}),
        "apply-prune": (["apply", "--prune", str(config)], {}),
        "export": (["export"], {}),
        "export-account": (["export", "--account", ACCOUNT], {}),
        "reindex": (["reindex"], {}),
        "stats": (["stats"], HOOKS),
        "stats-account": (["stats", ACCOUNT], {}),
        "account-set": (["account", "set", ACCOUNT, "--admin", "boss"], {}),
        "number-set": (["number", "set", ACCOUNT, NUMBER, "--members", "alice"], {}),
        "number-show": (["number", "show", ACCOUNT, NUMBER], {}),
        "group-set": (["group", "set", ACCOUNT, "sales", "alice"], {}),
        "presence-set": (["presence", "set", ACCOUNT, "alice", "available"], {}),
        "owner-set": (["owner", "set", ACCOUNT, NUMBER, CUSTOMER, "alice"], {}),
        "send": (["send", "--account", ACCOUNT, NUMBER, CUSTOMER], {}),
        "dead-list": (["dead", "list"], {}),
        "dead-replay": (["dead", "replay"], {}),
        "demo": (["demo"], {}),
    }


# How each refusal is provoked: the user and password in the URL, and the code expected.
CAUSES = {
    "wrong-password": ("rota:wrong-password@", "WRONGPASS"),
    "no-credentials": ("", "NOAUTH"),
    "keys-not-granted": (f"stranger:{PASSWORD}@", "NOPERM"),
}
CASES = [(cause, name) for cause in CAUSES for name in commands(Path())]
# On a cluster (whose default user has no password, so any password given is wrong): a few
# commands suffice, the client and the refusal are the same for all.
ON_CLUSTER = ["worker-burst", "apply", "export", "stats-account", "send"]
CASES += [("cluster-wrong-password", name) for name in ON_CLUSTER]


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The README's ``rota`` user; ``stranger``, granted the same commands on other keys;
    no default user."""
    server = RedisServer(tmp_path_factory.mktemp("refusing")).start()
    stranger = ["stranger" if t == "rota" else t for t in readme_acl_line()]
    stranger = ["~elsewhere:*" if t == "~rota:*" else t for t in stranger]
    with server.client() as owner:
        owner.execute_command("ACL", "SETUSER", *readme_acl_line())
        owner.execute_command("ACL", "SETUSER", *stranger)
        owner.execute_command("ACL", "SETUSER", "default", "off")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def refused(
    refusing_server: RedisServer,
    redis_cluster: RedisClusterServers,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], subprocess.CompletedProcess[str]]:
    """Each command under each refusal, run once, several at a time."""
    config = tmp_path_factory.mktemp("config") / "rota.toml"
    config.write_text(CONFIG)
    runs = commands(config)

    def run(cause: str, name: str) -> subprocess.CompletedProcess[str]:
        if cause == "cluster-wrong-password":
            url = redis_cluster.url.replace("://", "://nobody:wrong-password@")
        else:
            url = f"redis://{CAUSES[cause][0]}127.0.0.1:{refusing_server.port}/0"
        args, env = runs[name]
        try:
            return run_rota(url, *args, **env)
        except subprocess.TimeoutExpired as hung:  # retrying what cannot succeed
            return subprocess.CompletedProcess(
                args, -1, "", f"still running after {hung.timeout} s"
            )

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {case: pool.submit(run, *case) for case in CASES}
        return {case: future.result() for case, future in futures.items()}


def _is_warning(line: str) -> bool:
    try:
        return bool(json.loads(line).get("level") == "warning")
    except ValueError:
        return False


@pytest.mark.parametrize(("cause", "command"), CASES)
def test_a_refusal_ends_the_command_with_exit_1_and_one_line_naming_it(
    refused: dict[tuple[str, str], subprocess.CompletedProcess[str]], cause: str, command: str
) -> None:
    result = refused[cause, command]
    code = CAUSES[cause][1] if cause in CAUSES else "WRONGPASS"

    assert result.returncode == 1, (result.returncode, result.stderr[-500:])
    assert "Traceback" not in result.stderr
    # a worker may warn first (e.g. that it could not read the snapshot settings); one error
    lines = [line for line in result.stderr.splitlines() if not _is_warning(line)]
    assert len(lines) == 1, result.stderr[-500:]
    assert lines[0].startswith("rota: error: ")
    assert f"redis refused: {code} " in lines[0]
    if command.startswith("apply") and cause in CAUSES:  # the cluster client fails before
        assert "; written: none; not written: acme" in result.stderr
    assert result.stdout == ""
