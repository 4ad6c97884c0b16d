from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.redis_cluster import RedisClusterServers
from tests.redis_server import RedisServer
from worker import cli, embedded
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Fresh servers for tests that stop, kill or restart Redis; all stopped at teardown."""
    started: list[RedisServer] = []

    def make(*config: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", *config).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(params=["system", "embedded"])
def each_build(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh server of each build: the system's redis-server (CI: Redis 7, or
    TEST_REDIS_SERVER) and the embedded default's valkey-server, for commands whose behaviour
    differs between versions."""
    server = str(embedded.server_binary()) if request.param == "embedded" else None
    started = RedisServer(tmp_path / request.param, server=server).start()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster for the session, emptied per test by ``rb``."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


class Target(Protocol):
    """What the tests need of a Redis: the URL workers get, and clients."""

    @property
    def url(self) -> str: ...

    def client(self, decode: bool = False) -> Any: ...


# Runs a test (or, as ``pytestmark``, a module) on one redis-server and on the 3-master cluster.
ON_SINGLE_AND_CLUSTER = pytest.mark.parametrize("backend", ["single", "cluster"], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``single`` unless a test is parametrized with ON_SINGLE_AND_CLUSTER."""
    value: str = getattr(request, "param", "single")
    return value


@pytest.fixture
def target(request: pytest.FixtureRequest, backend: str) -> Target:
    """The session's redis-server, or its cluster for the ``cluster`` backend."""
    server: Target = request.getfixturevalue(
        "redis_cluster" if backend == "cluster" else "redis_server"
    )
    return server


@pytest.fixture
def rb(target: Target) -> Iterator[Any]:
    """A bytes client on an empty database (the worker's view); on a cluster, every master
    is emptied."""
    client = target.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def rd(target: Target, rb: Any) -> Iterator[Any]:
    """A decoding client on the same, emptied database (the admin's view)."""
    client = target.client(decode=True)
    yield client
    client.close()


def make_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": url, "block_ms": 100, "log_level": "warning"}
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


@pytest.fixture
def settings(target: Target, rb: Any) -> Settings:
    return make_settings(target.url)


def worker_env(url: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTA_")}
    env.update({"ROTA_REDIS_URL": url, "ROTA_BLOCK_MS": "100", "ROTA_LOG_LEVEL": "warning"})
    env.update({f"ROTA_{k.upper()}": v for k, v in overrides.items()})
    return env


def spawn_worker(url: str, *flags: str, **overrides: str) -> subprocess.Popen[bytes]:
    """A ``rota worker`` process, as operators run it."""
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", *flags],
        env=worker_env(url, **overrides),
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def workers() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """spawn_worker, plus a teardown that kills and reaps whatever is still running."""
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(url: str, *flags: str, **overrides: str) -> subprocess.Popen[bytes]:
        process = spawn_worker(url, *flags, **overrides)
        spawned.append(process)
        return process

    yield spawn
    for process in spawned:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _forked_worker_main(env: dict[str, str], log: Path, flags: tuple[str, ...]) -> None:
    """The body of a forked worker: its stderr to ``log``, its environment, then ``rota worker``."""
    os.chdir(ROOT)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as we do
    os.environ.clear()
    os.environ.update(env)
    from worker.cli import main

    sys.exit(main(["worker", *flags]))


class ForkedWorkers:
    """``rota worker`` processes forked from the test's interpreter, which has imported the
    worker already: a fresh interpreter spends ~0.8 s of CPU importing it, too much to start a
    replacement every 200 ms on a small machine. Each runs ``worker.cli.main`` as the console
    script does, with its own environment and its stderr in a file of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[BaseProcess] = []
        self._context = multiprocessing.get_context("fork")

    def start(self, url: str, *flags: str, **overrides: str) -> BaseProcess:
        log = self.directory / f"worker{len(self.started)}.log"
        args = (worker_env(url, **overrides), log, flags)
        process = self._context.Process(target=_forked_worker_main, args=args)
        gc.freeze()  # else the child's first collection touches, and so copies, our whole heap
        try:
            process.start()
        finally:
            gc.unfreeze()
        self.started.append(process)
        return process

    def stderr(self) -> str:
        """Everything every worker wrote on stderr."""
        logs = sorted(self.directory.glob("worker*.log"))
        return "".join(log.read_text(errors="replace") for log in logs)

    def kill_all(self) -> None:
        for process in self.started:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGKILL)
            process.join()


@pytest.fixture
def forked_workers(tmp_path: Path) -> Iterator[ForkedWorkers]:
    workers = ForkedWorkers(tmp_path / "forked")
    workers.directory.mkdir()
    yield workers
    workers.kill_all()


Cli = Callable[..., str]


@pytest.fixture
def rota(
    target: Target, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    """``rota ARGS`` in this process, on the test's server: its stdout (exit 0, no stderr)."""
    monkeypatch.setenv("ROTA_REDIS_URL", target.url)

    def run(*args: str) -> str:
        code = cli.main(list(args))
        captured = capsys.readouterr()
        assert (code, captured.err) == (0, ""), captured.err
        return captured.out

    return run
