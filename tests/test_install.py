"""Rota as a user installs it: the wheel built from this checkout, pip-installed (not editable)
into a fresh venv outside the checkout, and every ``rota`` command run from an empty folder on
the embedded server, with the checkout nowhere on sys.path."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.redis_server import free_port
from worker import embedded
from worker.cli import build_parser

# What a build leaves in a checkout, and what a wheel must not be built from (a stale build/
# would ship modules since removed).
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".rota")
NUMBER, CUSTOMER, UNKNOWN_NUMBER = "15550001000", "447700900123", "15550009999"


@dataclass
class Installed:
    wheel: Path
    venv: Path
    folder: Path  # empty but for the embedded server's .rota/
    ran: set[tuple[str, ...]] = field(default_factory=set)

    def env(self, **extra: str) -> dict[str, str]:
        """The user's environment: none of ours (ROTA_*, PYTHONPATH, the checkout's venv)."""
        drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTA_") and k not in drop}
        return {**env, "ROTA_LOG_LEVEL": "warning", **extra}

    def rota(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """``rota ARGS`` in the folder; it must exit 0."""
        self.ran.add(command_of(args))
        done = subprocess.run(
            [str(self.venv / "bin" / "rota"), *args],
            cwd=self.folder,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"rota {' '.join(args)}: {done.stderr}"
        return done


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every command of the parser, as the words naming it (``("dead", "list")``)."""
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= commands(sub, (*prefix, name)) or {(*prefix, name)}
    return found


ALL_COMMANDS = commands(build_parser())


def command_of(args: tuple[str, ...]) -> tuple[str, ...]:
    words = tuple(word for word in args if not word.startswith("-"))
    return next(words[:n] for n in (2, 1) if words[:n] in ALL_COMMANDS)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Built and installed once for the module (about 15 s here); the embedded server it
    started is stopped at the end."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    pip = ("-m", "pip", "--disable-pip-version-check", "-q")
    subprocess.run(
        [sys.executable, *pip, "wheel", "--no-deps", "-w", str(root / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    [wheel] = (root / "dist").glob("rota-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), *pip, "install", str(wheel)], check=True, capture_output=True
    )
    folder = root / "empty"
    folder.mkdir()
    yield Installed(wheel, venv, folder)
    embedded.stop(folder / ".rota")  # if a test failed before rota embedded stop


def test_the_wheel_ships_every_lua_script_and_no_module_in_their_way(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    scripts = {f"worker/lua/{path.name}" for path in (ROOT / "lua").glob("*.lua")}
    assert scripts and scripts <= names
    assert "worker/lua.py" not in names


def test_rota_runs_from_the_venv_not_the_checkout(installed: Installed) -> None:
    where = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import sys, worker; print(worker.__file__)",
        ],
        cwd=installed.folder,
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.venv), where
    assert not Path(where).is_relative_to(ROOT)


def test_demo_shows_the_sheets_four_cases(installed: Installed) -> None:
    out = installed.rota("demo").stdout
    for case in ("Case 1:", "Case 2:", "Case 3a:", "Case 3b:", "Case 4:"):
        assert f"\n{case}" in out, out
    assert out.count(": as the sheet says") == 5, out
    assert "workers stopped with exit codes [0, 0]" in out, out


def serve_answers_from_the_wheel(installed: Installed) -> None:
    """``rota serve`` of the installed wheel: Meta's challenge, the console's page and assets
    (package data), the API; SIGTERM ends it with 0."""
    installed.ran.add(("serve",))
    port = free_port()
    env = installed.env(
        ROTA_HTTP_PORT=str(port), ROTA_API_TOKEN="t", ROTA_WHATSAPP_VERIFY_TOKEN="v"
    )
    serve = subprocess.Popen(
        [str(installed.venv / "bin" / "rota"), "serve"], cwd=installed.folder, env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        challenge = "/whatsapp?hub.mode=subscribe&hub.verify_token=v&hub.challenge=42"
        assert wait_for_http(base + challenge) == (200, b"42")
        assert wait_for_http(base + "/console/static/console.css")[0] == 200
        assert b"<form" in wait_for_http(base + "/console/signin")[1]
        show = f"/api/v1/accounts/acme/numbers/{NUMBER}"
        assert wait_for_http(base + show, {"Authorization": "Bearer t"})[0] == 200
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0


def wait_for_http(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of a GET, once the server listens (a 4xx is an answer too)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as answered:
            return answered.code, answered.read()
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens for {url}"
            time.sleep(0.1)


def test_every_command_runs_on_the_embedded_server(installed: Installed) -> None:
    rota = installed.rota
    assert rota("embedded", "url").stdout.startswith("unix://")
    rota("account", "set", "acme", "--admin", "boss")
    rota("group", "set", "acme", "sales", "alice", "bob")
    rota("number", "set", "acme", NUMBER, "--members", "carol,group:sales", "--access", "carol")
    rota("presence", "set", "acme", "alice", "Available")
    rota("owner", "set", "acme", NUMBER, "447700900999", "bob")
    rota("send", "--account", "acme", NUMBER, CUSTOMER, "--message-id", "wamid.install")
    rota("send", "--account", "acme", UNKNOWN_NUMBER, CUSTOMER)
    rota("presence", "heartbeat", "acme", "bob")
    rota("conversation", "replied", "acme", NUMBER, "447700900999", "bob")
    rota("conversation", "transfer", "acme", NUMBER, "447700900999", "alice")
    rota("conversation", "close", "acme", NUMBER, "447700900999")
    rota("worker", "--burst")
    conversation = json.loads(rota("conversation", "show", "acme", NUMBER, "447700900999").stdout)
    assert conversation["state"] == "closed" and conversation["user"] == "alice", conversation
    shown = json.loads(rota("number", "show", "acme", NUMBER).stdout)
    assert shown["number"] == NUMBER, shown
    [letter] = [json.loads(line) for line in rota("dead", "list").stdout.splitlines()]
    assert letter["error"] == "unknown_number", letter
    assert rota("dead", "replay").stdout.startswith("replayed 1 dead letters"), "dead replay"
    assert "rota:inbound" in rota("stats").stdout
    assert json.loads(rota("stats", "acme").stdout)["account"], "stats ACCOUNT"
    config = installed.folder / "rota.toml"
    config.write_text(rota("export").stdout)
    rota("apply", "--check", str(config))
    rota("apply", str(config))
    assert rota("reindex").stdout.startswith("indexed: accounts "), "reindex"
    assert rota("partition", "acme").stdout.strip() == "rota:inbound"
    hook = {"ROTA_WEBHOOK_URL": "http://127.0.0.1:9/hook", "ROTA_WEBHOOK_SECRET": "s"}
    rota("webhooks", "--burst", **hook)  # nothing queued: rq's worker starts and exits
    serve_answers_from_the_wheel(installed)
    assert rota("embedded", "stop").stdout == "stopped\n"
    # Every command of the parser ran (demo and serve-like commands in their own tests)
    assert ALL_COMMANDS - installed.ran - {("demo",)} == set()
