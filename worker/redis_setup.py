"""What the Redis server does with Rota's keys: whether it may evict them (maxmemory-policy)
and whether they outlive a restart (an append-only file, or snapshots). Read when a worker
starts (it refuses an evicting Redis) and by ``rota stats``.

Any policy but ``noeviction`` may evict Rota's keys: the ``allkeys-*`` ones any key, the
``volatile-*`` ones the keys with a time to live (de-duplication records, chat counts), so
repeats would get new decisions. A ``maxmemory`` of 0 does not make a policy safe: it can be
raised at any time without a restart.

The policy and the append-only file come from INFO, which an ACL user of Rota's may run; the
snapshot points need CONFIG GET (often refused: it reads every setting, passwords included),
asked only when the append-only file is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from worker.connection import is_cluster
from worker.settings import Settings

NO_EVICTION = "noeviction"


class EvictingRedis(RedisError):
    """The worker will not run on a Redis that may evict its keys; reported like any other
    Redis failure (exit 1, one line)."""


@dataclass(frozen=True, slots=True)
class Setup:
    node: str  # HOST:PORT or the unix socket's path
    policy: str | None  # maxmemory-policy; None when INFO was refused
    aof: bool | None  # the append-only file is on
    save: str | None  # snapshot points ("" for none); None when not asked or refused
    refused: str | None = None  # what could not be read, and why

    @property
    def evicts(self) -> bool:
        return self.policy is not None and self.policy != NO_EVICTION

    @property
    def persists(self) -> bool | None:
        """Whether anything survives a restart; None when not known."""
        if self.aof:
            return True
        if self.save is None:
            return None
        return bool(self.save.strip())


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _node_name(client: Any) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _read_node(client: Any, name: str, target: dict[str, Any]) -> Setup:
    try:
        policy = _text(client.info("memory", **target)["maxmemory_policy"])
        aof = int(client.info("persistence", **target)["aof_enabled"]) == 1
    except ResponseError as error:  # NOPERM for an ACL user without INFO
        return Setup(name, None, None, None, refused=f"INFO: {error}")
    if aof:
        return Setup(name, policy, True, None)
    try:
        save = _text(next(iter(client.config_get("save", **target).values()), ""))
    except ResponseError as error:  # NOPERM, or CONFIG renamed away
        return Setup(name, policy, False, None, refused=f"CONFIG GET save: {error}")
    return Setup(name, policy, False, save)


def read(client: Any) -> list[Setup]:
    """One Setup per server: the client's, or each master of a cluster."""
    if is_cluster(client):
        return [
            _read_node(client, node.name, {"target_nodes": node}) for node in client.get_primaries()
        ]
    return [_read_node(client, _node_name(client), {})]


def check(client: Any, settings: Settings, log: Any) -> None:
    """At a worker's start: EvictingRedis unless ROTA_ALLOW_EVICTION; a warning, once per
    server, for eviction allowed, persistence off, or what it could not read."""
    for setup in read(client):
        node = setup.node
        if setup.evicts:
            if not settings.allow_eviction:
                raise EvictingRedis(
                    f"redis at {node} may evict rota's keys (maxmemory-policy {setup.policy}):"
                    " set maxmemory-policy noeviction, or ROTA_ALLOW_EVICTION=1 to run anyway"
                )
            log.warning(
                "redis may evict rota's keys: settings, owners, cursors and de-duplication"
                " can vanish (ROTA_ALLOW_EVICTION=1)",
                node=node,
                maxmemory_policy=setup.policy,
            )
        if setup.policy is None:
            log.warning(
                "could not check redis's eviction policy and persistence",
                node=node,
                error=setup.refused,
                expected="maxmemory-policy noeviction; appendonly yes",
            )
        elif setup.refused is not None:
            log.warning(
                "could not check whether redis keeps snapshots; its append-only file is off",
                node=node,
                error=setup.refused,
                expected="appendonly yes",
            )
        elif setup.persists is False:
            log.warning(
                "redis persistence is off (appendonly no, no save points): a restart of redis"
                " loses every setting, owner, cursor, decision and pending message",
                node=node,
            )


def describe(client: Any) -> list[dict[str, Any]]:
    """For ``rota stats``: each server's policy and persistence."""
    return [
        {
            "node": setup.node,
            "maxmemory_policy": setup.policy,
            "evicts": setup.evicts,
            "appendonly": setup.aof,
            "save": setup.save,
            "persists": setup.persists,
            **({"could_not_read": setup.refused} if setup.refused is not None else {}),
        }
        for setup in read(client)
    ]
