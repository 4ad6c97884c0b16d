"""Many commands in one write, every reply read back: the hot path's round trip.

redis-py's Pipeline spends more time packing arguments and dispatching reply callbacks than
Redis spends on a whole batch of decisions, so the worker packs with hiredis and reads raw
replies on a pooled connection itself. Error replies are returned in place, not raised, like
``Pipeline.execute(raise_on_error=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.exceptions import ResponseError

Command = tuple[Any, ...]


def execute(client: Any, commands: Sequence[Command]) -> list[Any]:
    if not commands:
        return []
    if not isinstance(client, redis.Redis):
        # RedisCluster and the like: their pipeline routes each command to its slot's node.
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies
    payload = b"".join([hiredis.pack_command(command) for command in commands])
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([payload])  # type: ignore[no-untyped-call]
        return [_reply(connection) for _ in commands]
    except BaseException:
        # A half-read connection must not go back to the pool as if it were clean.
        connection.disconnect()  # type: ignore[no-untyped-call]
        raise
    finally:
        pool.release(connection)


def _reply(connection: Any) -> Any:
    try:
        return connection.read_response()
    except ResponseError as error:
        return error
