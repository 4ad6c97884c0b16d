"""Security: the README's Redis ACL user runs everything with the default user off; rediss://
works against a TLS redis-server with a certificate made here; secrets stay out of logs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, make_settings, spawn_worker, worker_env
from tests.helpers import given_number, given_presence, run_burst, run_rota, send
from tests.ops import rota
from tests.redis_server import RedisServer, binary, free_port
from worker import admin, connection
from worker.webhook import Webhooks

PASSWORD = "pw-for-the-acl-test"


def readme_acl_line() -> list[str]:
    """The ACL rule the README documents, with a real password."""
    line = next(
        text
        for text in (ROOT / "README.md").read_text().splitlines()
        if text.startswith("user rota on ")
    )
    return [f">{PASSWORD}" if token == ">CHANGE-ME" else token for token in line.split()[1:]]


@pytest.fixture
def acl_server(server_factory: Callable[..., RedisServer]) -> Iterator[RedisServer]:
    """A server with the README's ``rota`` user, an ``owner`` to inspect it, no default user;
    its append-only file on, as production runs it (with it off, a worker would ask CONFIG GET
    for the snapshot points, which that user is refused)."""
    server = server_factory("--appendonly", "yes")
    with server.client() as owner:
        owner.execute_command("ACL", "SETUSER", *readme_acl_line())
        owner.execute_command("ACL", "SETUSER", "owner", "on", ">owner", "~*", "&*", "+@all")
        owner.execute_command("ACL", "SETUSER", "default", "off")
    yield server


@pytest.fixture
def acl_url(acl_server: RedisServer) -> str:
    return f"redis://rota:{PASSWORD}@127.0.0.1:{acl_server.port}/0"


def acl_denials(server: RedisServer) -> list[str]:
    """Commands the server refused (CLIENT SETINFO, which redis-py tries and may fail, aside)."""
    url = f"redis://owner:owner@127.0.0.1:{server.port}/0"
    with redis.Redis.from_url(url, decode_responses=True) as owner:
        entries = owner.execute_command("ACL", "LOG")
    found = [entry.get("object") if isinstance(entry, dict) else entry for entry in entries]
    return [str(name) for name in found if name != "client|setinfo"]


def send_webhooks_once(url: str, hooks: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """``rota webhooks --burst`` with one try per delivery."""
    return subprocess.run(
        [sys.executable, "-m", "worker", "webhooks", "--burst"],
        env=worker_env(url, webhook_retries="0", **hooks),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )


def test_everything_runs_as_the_documented_acl_user_with_default_off(
    acl_server: RedisServer,
    acl_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    def cli(*args: str, **env: str) -> str:
        result = rota(monkeypatch, capsys, acl_url, *args, **env)
        assert result.code == 0, (args, result.err)
        return result.out

    # Given a configuration written by the commands, as the rota user
    cli("account", "set", "acme", "--admin", "boss")
    cli("group", "set", "acme", "sales", "alice", "bob")
    cli("number", "set", "acme", "15550001000", "--members", "carol,group:sales")
    cli("presence", "set", "acme", "alice", "available")
    cli("owner", "set", "acme", "15550001000", "447700900999", "bob")
    (tmp_path / "rota.toml").write_text(cli("export"))
    cli("number", "set", "acme", "15550002000", "--members", "dave")  # the file leaves it out
    cli("apply", "--prune", str(tmp_path / "rota.toml"))
    cli("send", "--account", "acme", "15550001000", "447700900001")
    cli("send", "--account", "acme", "15550001000", "447700900999")
    cli("send", "--account", "acme", "15559999999", "447700900002")  # to be dead-lettered
    # When a worker (with webhooks queued) and the webhook sender run in burst mode
    hooks = {"webhook_url": "http://127.0.0.1:9/rota", "webhook_secret": "x"}
    worker = spawn_worker(acl_url, "--burst", **hooks)
    _, errors = worker.communicate(timeout=60)
    assert worker.returncode == 0, errors
    sender = send_webhooks_once(acl_url, hooks)
    assert sender.returncode == 0, sender.stderr
    # Then decisions, inspection and dead-letter commands all worked as that user
    assert '"eligible_now"' in cli("number", "show", "acme", "15550001000")
    assert rota(monkeypatch, capsys, acl_url, "number", "show", "acme", "15550002000").code == 2
    assert '"unknown_number": 1' in cli("stats", "acme", **hooks)
    assert "unknown_number" in cli("dead", "list")
    assert "replayed 1" in cli("dead", "replay")
    # and so do the conversation settings and show (after the worker: the counts above stand)
    cli("account", "set", "acme", "--presence-ttl", "60")
    cli("number", "set", "acme", "15550001000", "--capacity", "2", "--owner-online-only")
    assert '"at_capacity"' in cli("number", "show", "acme", "15550001000")
    assert '"user": "bob"' in cli("conversation", "show", "acme", "15550001000", "447700900999")
    assert acl_denials(acl_server) == []


def test_the_acl_user_is_refused_everything_else(acl_server: RedisServer, acl_url: str) -> None:
    with redis.Redis.from_url(acl_url) as client:
        client.set("rota:{acme}:x", 1)  # its own keys: fine
        for command in (("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "*"), ("GET", "other")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
    anonymous = acl_url.replace(f"rota:{PASSWORD}@", "")
    with redis.Redis.from_url(anonymous) as client, pytest.raises(redis.AuthenticationError):
        client.ping()
    assert len(acl_denials(acl_server)) >= 4  # and the server logged each refusal


def test_the_acl_user_cannot_list_other_key_names_or_select_another_database(
    acl_server: RedisServer,
    acl_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given another application's keys beside Rota's, in this database and in database 1
    owner_url = f"redis://owner:owner@127.0.0.1:{acl_server.port}/0"
    with redis.Redis.from_url(owner_url) as owner:
        owner.set("billing:{42}:card", "x")
        owner.execute_command("SELECT", "1")
        owner.set("rota:{other}:settings", "x")
    # Then the rota user can neither list key names nor switch databases
    with redis.Redis.from_url(acl_url) as client:
        for command in (("SCAN", "0"), ("SCAN", "0", "MATCH", "rota:*"), ("SELECT", "1")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
    # And a URL naming database 1 fails with one line saying why
    other_database = acl_url.removesuffix("/0") + "/1"
    result = rota(monkeypatch, capsys, other_database, "account", "set", "acme", "--admin", "b")
    assert result.code == 1
    assert result.err.startswith("rota: error: redis refused: NOPERM ")
    assert "'select'" in result.err


def test_worker_refused_by_acl_exits_1_with_one_line_instead_of_retrying(
    acl_server: RedisServer, acl_url: str
) -> None:
    owner_url = f"redis://owner:owner@127.0.0.1:{acl_server.port}/0"
    with redis.Redis.from_url(owner_url, decode_responses=True) as owner:
        owner.execute_command("ACL", "SETUSER", "rota", "-evalsha")  # a misconfigured ACL
        admin.set_number(owner, "acme", "15550001000", members=["alice"], online_only=False)
        message = {"account": "acme", "number": "15550001000", "from": "447700900001"}
        owner.xadd("rota:inbound", message)

    result = run_rota(acl_url, "worker", "--burst")

    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "rota: error: redis refused: NOPERM"
        " this user has no permissions to run the 'evalsha' command"
    ]


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, made with openssl."""
    files = {name: folder / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for command in (
        f"req -x509 {new_key} -days 1 -subj /CN=rota-test-ca"
        f" -keyout {files['ca.key']} -out {files['ca.crt']}",
        f"req {new_key} -subj /CN=127.0.0.1 -keyout {files['server.key']} -out {folder}/server.csr",
        f"x509 -req -in {folder}/server.csr -CA {files['ca.crt']} -CAkey {files['ca.key']}"
        f" -CAcreateserial -days 1 -extfile {folder}/san.ext -out {files['server.crt']}",
    ):
        subprocess.run(["openssl", *shlex.split(command)], check=True, capture_output=True)
    return files


@pytest.fixture
def tls_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server listening only on TLS, with a certificate made for this test. Skipped
    where no TLS-capable redis-server exists, except in CI, where it must."""
    certs = make_certificates(tmp_path)
    port = free_port()
    options = (
        f"--port 0 --tls-port {port} --bind 127.0.0.1 --tls-auth-clients no --save ''"
        f" --tls-cert-file {certs['server.crt']} --tls-key-file {certs['server.key']}"
        f" --tls-ca-cert-file {certs['ca.crt']} --dir {tmp_path}"
    )
    process = subprocess.Popen(
        [binary(), *shlex.split(options)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs['ca.crt']}"
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                output = process.communicate()[0].decode(errors="replace")
                if os.environ.get("CI") == "true":
                    pytest.fail(f"no TLS-capable redis-server in CI: {output[-300:]}")
                pytest.skip(f"this redis-server cannot serve TLS: {output[-200:]}")
            try:
                with redis.Redis.from_url(url) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "TLS redis-server did not answer"
                time.sleep(0.05)
        yield url
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=30)


def test_worker_and_commands_work_over_rediss(
    tls_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a number configured over TLS
    result = rota(
        monkeypatch, capsys, tls_url, "number", "set", "acme", "15550001000", "--members", "A,B"
    )
    assert result.code == 0, result.err
    hooks = {"webhook_url": f"http://127.0.0.1:{free_port()}/rota", "webhook_secret": "x"}
    settings = make_settings(tls_url, webhook_retries=0, **hooks)
    client = connection.connect(settings, decode=True)
    given_presence(client, A="available", B="available")
    send(client, settings, "447700900001")
    # When a worker decides over TLS, and the webhook sender tries its delivery
    assert run_burst(connection.connect(settings), settings) == 0
    sender = send_webhooks_once(tls_url, hooks)
    # Then the decision is there, rq worked over TLS, and the commands read it over TLS too
    assert sender.returncode == 0, sender.stderr
    assert Webhooks(connection.connect(settings), settings).counts()["failed"] == 1
    shown = rota(monkeypatch, capsys, tls_url, "number", "show", "acme", "15550001000")
    assert shown.code == 0, shown.err
    assert '"cursor": 1' in shown.out
    plain_url = tls_url.split("?")[0].replace("rediss://", "redis://")
    with redis.Redis.from_url(plain_url) as plain, pytest.raises(redis.ConnectionError):
        plain.ping()  # the server speaks TLS only


def test_secrets_stay_out_of_logs_and_errors(
    server_factory: Callable[..., RedisServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a Redis with a password and a webhook secret
    server = server_factory()
    with server.client() as owner:
        owner.config_set("requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    secret = "whsec-never-logged"
    with redis.Redis.from_url(url, decode_responses=True) as client:
        settings = make_settings(url)
        given_number(client, ["A"])
        given_presence(client, A="available")
        send(client, settings, "447700900001")
    # When a worker runs at debug level, and a command fails with a wrong password
    hooks = {"webhook_url": "http://127.0.0.1:9/rota", "webhook_secret": secret}
    worker = spawn_worker(url, "--burst", log_level="debug", **hooks)
    _, logged = worker.communicate(timeout=60)
    wrong = url.replace(PASSWORD, "wrong-" + PASSWORD)
    failed = rota(monkeypatch, capsys, wrong, "stats", webhook_secret=secret)
    # Then neither the password nor the secret appears anywhere
    assert worker.returncode == 0, logged
    assert b"decided" in logged and b"worker started" in logged
    assert failed.code == 1
    for text in (logged.decode(), failed.err, failed.out, repr(make_settings(url, **hooks))):
        assert PASSWORD not in text
        assert secret not in text
