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
    AuthenticationError,
    ClusterError,
    ConnectionError,
    NoPermissionError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from worker import embedded
from worker.redis_url import cluster_url
from worker.settings import Settings

# Refusals that retrying cannot cure: the credentials (WRONGPASS, NOAUTH) or the ACL (NOPERM).
# redis-py raises the first two as ConnectionErrors, like an unreachable server, so whoever
# retries those must ask refusal() first.
_REFUSALS = ((NoPermissionError, "NOPERM"), (AuthenticationError, "WRONGPASS"))
_REFUSAL_CODES = ("NOPERM", "NOAUTH", "WRONGPASS")


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


def refusal(error: BaseException) -> str | None:
    """The server's refusal as it sent it (``WRONGPASS invalid username-password pair ...``)
    when ``error`` is one that only the operator can cure; else None. RedisCluster wraps what
    its first connection met in a RedisClusterException: that one is looked through."""
    while isinstance(error, RedisClusterException) and error.__cause__ is not None:
        error = error.__cause__
    for kind, code in _REFUSALS:
        if isinstance(error, kind):
            return f"{getattr(error, 'status_code', None) or code} {error}"
    if isinstance(error, ResponseError) and str(error).startswith(_REFUSAL_CODES):
        return str(error)  # not parsed by redis-py (a reply inside EXEC, a raw pipeline)
    return None


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
