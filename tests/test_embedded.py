"""The embedded Redis: a server loading its append-only file is up, and however many ``rota``
processes arrive while it loads, they wait for it; no second server ever starts on a folder
whose server lives; ``stop`` waits for the exit and trusts no stale pid file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import ROOT, wait_until
from worker import embedded
from worker.embedded import State

# Enough keys that loading them takes seconds on this machine (README: Development), long
# enough for the later commands to start while it lasts.
KEYS = 1_500_000
BATCH = 100_000
ARRIVAL_S = 1.5  # time enough for a few rota processes (0.35 s each) to ask for the server


@pytest.fixture(scope="module")
def large_aof(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ROTA_HOME whose append-only file takes seconds to load: KEYS keys written through the
    embedded server, which is then stopped."""
    home = tmp_path_factory.mktemp("large") / ".rota"
    client = redis.Redis.from_url(embedded.ensure(home))
    client.config_set("auto-aof-rewrite-percentage", 0)  # a rewrite would make it quick to load
    fill = client.register_script(
        "for i = ARGV[1], ARGV[2] do redis.call('set', 'key:' .. i, i) end"
    )
    for first in range(1, KEYS + 1, BATCH):
        fill(args=[first, min(first + BATCH - 1, KEYS)])
    client.close()
    assert embedded.stop(home)
    return home


def stopped_at_the_end(home: Path) -> Iterator[Path]:
    yield home
    for pid in servers_on(home):  # however many a failing test left
        os.kill(pid, signal.SIGTERM)


@pytest.fixture
def home(large_aof: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the large folder, its servers stopped at the end."""
    copy = tmp_path / "folder" / ".rota"
    shutil.copytree(large_aof, copy, ignore=shutil.ignore_patterns("*.sock"))
    yield from stopped_at_the_end(copy)


@pytest.fixture
def empty_home(tmp_path: Path) -> Iterator[Path]:
    """A new folder, its servers stopped at the end."""
    yield from stopped_at_the_end(tmp_path / ".rota")


def rota(home: Path, *args: str) -> subprocess.Popen[str]:
    """``rota ARGS`` on the folder's embedded Redis (ROTA_REDIS_URL unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTA_")}
    env.update({"ROTA_HOME": str(home), "ROTA_LOG_LEVEL": "warning"})
    return subprocess.Popen(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def servers_on(home: Path) -> list[int]:
    """The live processes working in ``home``: its servers (they chdir to their --dir; a
    process title replaces their command line)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "cwd").resolve(strict=True) == home.resolve():
                found.append(int(proc.name))
        except OSError:
            continue  # gone meanwhile, or a zombie
    return found


def test_a_server_loading_its_append_only_file_is_up_and_waited_for(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a folder's server loading a large append-only file, started by a rota command that
    # was then interrupted (nothing but the server itself is left to show it is there)
    sock = embedded.socket_path(home)
    assert embedded.state(sock) is State.DOWN
    first = rota(home, "embedded", "url")
    wait_until(lambda: embedded.state(sock) is not State.DOWN, 30, "the server to answer")
    # Then, answering LOADING, it is up
    assert embedded.state(sock) is State.LOADING
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=30)
    [server] = servers_on(home)
    # And one who asks for it with less patience than the load takes waits it out
    monkeypatch.setattr(embedded, "START_TIMEOUT_S", 0.5)
    assert embedded.ensure(home) == f"unix://{sock}"
    assert embedded.state(sock) is State.READY
    assert servers_on(home) == [server]
    with redis.Redis(unix_socket_path=str(sock)) as client:
        assert client.dbsize() == KEYS


def test_commands_started_while_the_server_loads_wait_for_it_and_start_no_other(
    home: Path,
) -> None:
    # Given a server loading a large append-only file, started by a rota command that is then
    # interrupted (so nothing but the server itself is left to show it is there)
    sock = embedded.socket_path(home)
    first = rota(home, "embedded", "url")
    wait_until(lambda: embedded.state(sock) is State.LOADING, 30, "the server to load")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=30)
    [server] = servers_on(home)
    # When several more commands start while it loads
    commands = [
        rota(home, "embedded", "url"),
        rota(home, "stats"),
        rota(home, "dead", "list"),
        rota(home, "embedded", "url"),
    ]
    time.sleep(ARRIVAL_S)
    loading = embedded.state(sock)
    outcomes = [(command.communicate(timeout=120)[1], command.returncode) for command in commands]
    assert loading is State.LOADING, "loading ended before the commands came: raise KEYS"
    # Then each succeeds once the server has loaded, and it stayed the folder's only server
    assert outcomes == [("", 0)] * len(commands)
    assert servers_on(home) == [server]
    assert int((home / "redis.pid").read_text()) == server
    with redis.Redis(unix_socket_path=str(sock)) as client:
        assert client.dbsize() == KEYS


def test_stop_ends_the_folders_server_and_a_stale_pid_file_is_not_trusted(
    empty_home: Path,
) -> None:
    # Given a folder's server
    home = empty_home
    embedded.ensure(home)
    assert len(servers_on(home)) == 1
    # When it is stopped
    assert embedded.stop(home)
    # Then it has exited by the time stop returns, and another stop finds nothing to stop,
    # even with the pid file naming a live process (whose pid the server's was, say)
    assert servers_on(home) == []
    with subprocess.Popen(["sleep", "60"]) as bystander:
        (home / "redis.pid").write_text(str(bystander.pid))
        assert not embedded.stop(home)
        assert bystander.poll() is None
        bystander.kill()


def test_a_live_server_that_does_not_answer_is_never_doubled(
    empty_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a folder's server whose socket was deleted (a cleaner of the temp folder, say)
    home = empty_home
    embedded.ensure(home)
    [server] = servers_on(home)
    embedded.socket_path(home).unlink()
    # When a rota process asks for the folder's server
    monkeypatch.setattr(embedded, "START_TIMEOUT_S", 0.5)
    with pytest.raises(embedded.EmbeddedError, match="does not answer on"):
        embedded.ensure(home)
    # Then it says so, and started no second server on the folder's data
    assert servers_on(home) == [server]
    assert embedded.stop(home)
