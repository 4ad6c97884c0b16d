"""Many commands in one write, every reply read back: the hot path's round trip.

redis-py's Pipeline spends more time packing arguments and dispatching reply callbacks than
Redis spends on a whole batch of decisions, so the worker packs with hiredis and reads raw
replies itself. Error replies are returned in place, not raised, like
``Pipeline.execute(raise_on_error=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.exceptions import ResponseError

Command = tuple[Any, ...]
Packed = bytes  # a command already in the Redis protocol (see packed_head and bulk)


def bulk(value: bytes) -> bytes:
    """One argument in the Redis protocol."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def packed_head(arguments: int, *first: str | int) -> bytes:
    """The start of a command of ``arguments`` arguments, its ``first`` ones packed: the rest
    follow as bulk() pieces. For commands sent again and again with a few arguments changed,
    packing by hand costs a fraction of hiredis.pack_command on the whole."""
    return b"*%d\r\n" % arguments + b"".join(bulk(str(part).encode()) for part in first)


class Link:
    """One connection held by a single-threaded loop: checking a connection out of redis-py's
    pool costs about 20 us, a third of a round trip on loopback."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._connection: Any = None

    def pipeline(self, **options: Any) -> Any:
        return self.client.pipeline(**options)

    def execute(self, commands: Sequence[Command | Packed]) -> list[Any]:
        if self._connection is None:
            self._connection = self.client.connection_pool.make_connection()
        return _round_trip(self._connection, commands)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()
            self._connection = None


def unwrap(target: Any) -> Any:
    """The redis-py client behind a Link, or the target itself."""
    return target.client if isinstance(target, Link) else target


def execute(target: Any, commands: Sequence[Command | Packed]) -> list[Any]:
    """On a Link, its held connection; on a Redis client, a pooled one; on anything else
    (RedisCluster), its pipeline, which routes each command to its slot's node (there, only
    Command tuples: a pipeline cannot route packed bytes)."""
    if not commands:
        return []
    if isinstance(target, Link) and isinstance(target.client, redis.Redis):
        return target.execute(commands)
    client = unwrap(target)
    if not isinstance(client, redis.Redis):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        return _round_trip(connection, commands)
    finally:
        pool.release(connection)


def script_load(target: Any, script: str | bytes | memoryview) -> str:
    """Loads a script where ``execute`` sends commands (RedisCluster: on every primary)."""
    script = bytes(script) if isinstance(script, memoryview) else script
    client = unwrap(target)
    if not isinstance(client, redis.Redis):
        return str(client.script_load(script))
    (sha,) = execute(target, [("SCRIPT", "LOAD", script)])
    if isinstance(sha, Exception):
        raise sha
    return sha.decode() if isinstance(sha, bytes) else str(sha)


def _round_trip(connection: Any, commands: Sequence[Command | Packed]) -> list[Any]:
    payload = b"".join([c if isinstance(c, bytes) else hiredis.pack_command(c) for c in commands])
    try:
        connection.send_packed_command([payload])
        return [_reply(connection) for _ in commands]
    except BaseException:
        # A half-read connection must not be used again as if it were clean; the next
        # send reconnects.
        connection.disconnect()
        raise


def _reply(connection: Any) -> Any:
    try:
        return connection.read_response()
    except ResponseError as error:
        return error
