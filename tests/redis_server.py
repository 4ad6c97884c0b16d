"""A redis-server owned by a test: its own free port and temp dir, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from worker import embedded


def binary() -> str:
    """TEST_REDIS_SERVER (e.g. another build to run the suite on), else the system's
    redis-server when on PATH, else the embedded default's valkey-server."""
    chosen = os.environ.get("TEST_REDIS_SERVER")
    if chosen:
        return chosen
    return shutil.which("redis-server") or str(embedded.server_binary())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, directory: Path, *config: str, server: str | None = None) -> None:
        self.directory = directory
        self.server = server or binary()  # another build: e.g. the embedded default's
        self.port = free_port()
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.server,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            # Persistence on, as a worker expects (it warns when off), at little cost: at most
            # one snapshot an hour, and one at SIGTERM. A test's own ``--save ""`` turns it
            # off. Two arguments: Redis 6.2 reads "3600 1" as one, and as no save point.
            "--save",
            "3600",
            "1",
            "--logfile",
            str(self.directory / "redis.log"),
            *self.config,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start: {command}") from None
                time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, sig)
        self.process.wait(timeout=30)

    def client(self, decode: bool = False) -> Any:
        return redis.Redis.from_url(self.url, decode_responses=decode)
