"""A Redis client from the settings: ROTA_REDIS_URL, or the embedded server when unset.

``redis+cluster://[USER:PASSWORD@]HOST:PORT`` (``rediss+cluster://`` for TLS) names a Redis
Cluster by any one of its nodes: the client is then redis-py's RedisCluster, which discovers
the other nodes with CLUSTER SLOTS and follows MOVED and ASK redirections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterError,
    ConnectionError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from worker import embedded
from worker.redis_url import cluster_url
from worker.settings import Settings


def url(settings: Settings) -> str:
    """The URL to connect to, password included: never log it (log.redacted_url is for that)."""
    if settings.redis_url is not None:
        return settings.redis_url.get_secret_value()
    return embedded.ensure(Path(settings.home))


# What a cluster answers while a slot moves or a master fails over (after redis-py's own
# retries): the command was not run, and may succeed later. MOVED is an AskError, CLUSTERDOWN
# a ClusterError, "TTL exhausted" (redirections or TRYAGAIN without end) a ClusterError.
PASSING_CLUSTER_ERRORS = (
    TryAgainError,
    AskError,
    ClusterError,
    SlotNotCoveredError,
    ConnectionError,
    TimeoutError,
)


def is_passing_cluster_error(error: BaseException) -> bool:
    return isinstance(error, PASSING_CLUSTER_ERRORS)


def is_cluster(client: Any) -> bool:
    """Whether the client (or pipeline) talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def connect(settings: Settings, decode: bool = False) -> Any:
    # The socket timeout stays above the blocking read's, else the client times out mid-block.
    options: dict[str, Any] = {
        "decode_responses": decode,
        "socket_timeout": settings.block_ms / 1000 + 5,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
    }
    address = url(settings)
    seed = cluster_url(address)
    if seed is not None:
        return RedisCluster.from_url(seed, **options)
    return redis.Redis.from_url(address, **options)
