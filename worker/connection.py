"""A Redis client from the settings: ROTA_REDIS_URL, or the embedded server when unset.

``redis+cluster://[USER:PASSWORD@]HOST:PORT`` (``rediss+cluster://`` for TLS) names a Redis
Cluster by any one of its nodes: the client is then redis-py's RedisCluster, which discovers
the other nodes with CLUSTER SLOTS and follows MOVED and ASK redirections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterError,
    ConnectionError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)
from redis.retry import Retry

from worker import embedded
from worker.redis_url import cluster_url
from worker.settings import Settings
from worker.transport import ClusterTransport, NodeTransport, RedisClient, Transport

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


# What a cluster answers while a slot moves or a master fails over (after redis-py has followed
# redirections and waited out TRYAGAIN for about half a second): the command was not run, and
# may succeed later. MOVED is an AskError, CLUSTERDOWN a ClusterError, "TTL exhausted"
# (redirections or TRYAGAIN without end) a ClusterError.
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


# Error replies about the server's state, not about the command or its keys: out of memory, a
# script running too long, loading its data, a replica, writes stopped after a failed save, too
# few replicas. The same command succeeds once Redis is well again.
SERVER_REFUSALS = frozenset(
    {"OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "MISCONF", "NOREPLICAS"}
)
# redis-py strips the code off the errors it has a class for.
_REFUSAL_CLASSES = (
    (OutOfMemoryError, "OOM"),
    (BusyLoadingError, "LOADING"),
    (ReadOnlyError, "READONLY"),
    (MasterDownError, "MASTERDOWN"),
)


def server_refusal(error: BaseException) -> str | None:
    """The code of an error about Redis rather than the command (see SERVER_REFUSALS)."""
    for kind, code in _REFUSAL_CLASSES:
        if isinstance(error, kind):
            return code
    text = str(error)
    code = text.partition(" ")[0]
    if code not in SERVER_REFUSALS:
        # Redis 6.2 wraps an error raised inside a script: "Error running script ...: -OOM ..."
        _, wrapped, inner = text.partition(": -")
        code = inner.partition(" ")[0] if wrapped else ""
    return code if code in SERVER_REFUSALS else None


def is_cluster(client: Any) -> bool:
    """Whether the client (or pipeline) talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def transport(client: RedisClient) -> Transport:
    """The hot path's transport for this client: one held connection to a single node, or
    routing by slot on a cluster."""
    if isinstance(client, RedisCluster):
        return ClusterTransport(client)
    return NodeTransport(client)


def no_retry() -> Retry:
    """redis-py retries nothing: a command fails after one try, within the timeouts, and the
    caller decides (the worker's loop backs off; a command exits 1). Its own retries (redis-py
    6 and newer retry several times by default) would multiply every wait."""
    return Retry(NoBackoff(), 0)


AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


def _options(settings: Settings, decode: bool, wait_s: float) -> dict[str, Any]:
    return {
        "decode_responses": decode,
        "socket_timeout": wait_s,
        "socket_connect_timeout": settings.socket_connect_timeout_s,
        "health_check_interval": 30,
    }


def connect(settings: Settings, decode: bool = False, blocking: bool = False) -> Any:
    """``blocking``: for the worker, whose reads wait up to ROTA_BLOCK_MS for new entries; its
    socket timeout is that much longer, else the client would time out mid-block."""
    wait_s = settings.socket_timeout_s + (settings.block_ms / 1000 if blocking else 0)
    options = {**_options(settings, decode, wait_s), "retry": no_retry()}
    address = url(settings)
    seed = cluster_url(address)
    if seed is not None:
        # Redirections (MOVED, ASK) and TRYAGAIN are still followed: they are not retries.
        return RedisCluster.from_url(seed, **options)
    return redis.Redis.from_url(address, **options)


def connect_async(settings: Settings) -> AsyncClient:
    """A decoding asyncio client, as ``connect`` makes one, for code on an event loop (``rota
    serve``'s webhook): it connects at its first command, on the loop that runs it."""
    options = {
        **_options(settings, True, settings.socket_timeout_s),
        "retry": redis.asyncio.retry.Retry(NoBackoff(), 0),
    }
    address = url(settings)
    seed = cluster_url(address)
    if seed is not None:
        return redis.asyncio.RedisCluster.from_url(seed, **options)
    return redis.asyncio.Redis.from_url(address, **options)
