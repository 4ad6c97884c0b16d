"""The hot path's way to Redis: many commands in one round trip, every reply back in order,
error replies in place (not raised, like ``Pipeline.execute(raise_on_error=False)``).

Chosen once, by ``connection.transport``: on a single node, one connection held for the loop
that owns it; on a Redis Cluster, redis-py's cluster pipeline with each command sent to the
node of its key's slot. Everything else (XCLAIM, XPENDING, the command line) uses ``client``, the
redis-py client itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Protocol

import hiredis
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import AbstractConnection
from redis.exceptions import ResponseError

Argument = str | bytes | int | float
Command = tuple[Argument, ...]
RedisClient = redis.Redis | RedisCluster


class Transport(Protocol):
    @property
    def client(self) -> RedisClient: ...

    def execute(self, commands: Sequence[Command]) -> list[object]:
        """Sends every command in one write and reads every reply (an error as its
        ResponseError); a lost connection raises."""
        ...

    def script_load(self, script: str) -> str:
        """Loads a script where ``execute`` sends commands; its sha."""
        ...

    def close(self) -> None: ...


class NodeTransport:
    """One connection, taken from the client's pool once and held: checking one out per round
    trip costs about a third of a loopback round trip. Packed by hiredis, replies read raw,
    without redis-py's per-command pipeline objects and callbacks."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._connection: AbstractConnection | None = None

    @property
    def client(self) -> redis.Redis:
        return self._client

    def execute(self, commands: Sequence[Command]) -> list[object]:
        if not commands:
            return []
        connection = self._connection
        if connection is None:
            connection = self._connection = self._held()
        # hiredis's stub types the argument as a tuple of one element.
        payload = b"".join([hiredis.pack_command(c) for c in commands])  # type: ignore[arg-type]
        try:
            connection.send_packed_command([payload])  # type: ignore[no-untyped-call]
            return [_reply(connection) for _ in commands]
        except BaseException:
            # A half-read connection must not be used again as if it were clean; the next
            # round trip reconnects.
            connection.disconnect()  # type: ignore[no-untyped-call]
            raise

    def _held(self) -> AbstractConnection:
        """A connection of the client's kind and settings, outside its pool's count: the
        transport owns it (closed by close(), or when the transport is collected)."""
        pool = self._client.connection_pool
        made = pool.connection_class(**pool.connection_kwargs)
        assert isinstance(made, AbstractConnection)  # what a Redis client's pool makes
        return made

    def script_load(self, script: str) -> str:
        (sha,) = self.execute([("SCRIPT", "LOAD", script)])
        if isinstance(sha, Exception):
            raise sha
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()  # type: ignore[no-untyped-call]
            self._connection = None

    def __del__(self) -> None:
        # The connection is the transport's own, outside any pool that would close it.
        with contextlib.suppress(Exception):
            self.close()


class ClusterTransport:
    """Each command goes to the master of its key's slot, found from the key this module knows
    the place of (see key_of): redis-py would otherwise ask a node with COMMAND GETKEYS for
    commands whose keys move, XREADGROUP among them. MOVED and ASK are still followed."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client

    @property
    def client(self) -> RedisCluster:
        return self._client

    def execute(self, commands: Sequence[Command]) -> list[object]:
        if not commands:
            return []
        pipe = self._client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for command in commands:
            node: ClusterNode = self._client.get_node_from_key(  # type: ignore[no-untyped-call]
                key_of(command)
            )
            pipe.execute_command(*command, target_nodes=node)
        replies: list[object] = pipe.execute(raise_on_error=False)
        return replies

    def script_load(self, script: str) -> str:
        return str(self._client.script_load(script))  # on every master

    def close(self) -> None:
        """The cluster client's pools belong to the client."""


def key_of(command: Command) -> Argument:
    """The key that routes a hot-path command: EVALSHA's first key, XREADGROUP's stream, else
    the first argument."""
    name = str(command[0]).upper()
    if name in ("EVALSHA", "EVAL"):
        return command[3]
    if name == "XREADGROUP":
        return command[[str(part).upper() for part in command].index("STREAMS") + 1]
    return command[1]


def _reply(connection: AbstractConnection) -> object:
    try:
        reply: object = connection.read_response()
    except ResponseError as error:
        return error
    return reply
