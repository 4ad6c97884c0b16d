"""A Redis client from the settings: ROTA_REDIS_URL, or the embedded server when unset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from worker import embedded
from worker.settings import Settings


def url(settings: Settings) -> str:
    """The URL to connect to, password included: never log it (log.redacted_url is for that)."""
    if settings.redis_url is not None:
        return settings.redis_url.get_secret_value()
    return embedded.ensure(Path(settings.home))


def connect(settings: Settings, decode: bool = False) -> Any:
    # The socket timeout stays above the blocking read's, else the client times out mid-block.
    return redis.Redis.from_url(
        url(settings),
        decode_responses=decode,
        socket_timeout=settings.block_ms / 1000 + 5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
