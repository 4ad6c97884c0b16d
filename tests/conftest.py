from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.redis_cluster import RedisClusterServers
from tests.redis_server import RedisServer
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
