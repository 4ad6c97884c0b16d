"""A 3-master Redis Cluster owned by a test session (or the benchmark): redis-server processes
on free loopback ports, each with its own temp dir, slots assigned and nodes met from Python,
stopped by PID."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

from tests.redis_server import RedisServer

SLOTS = 16_384
ADDSLOTS_CHUNK = 1_000  # ADDSLOTS per call on Redis 6.2, which has no ADDSLOTSRANGE
READY_TIMEOUT_S = 30.0
BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000 (Redis 6.2 and 7.0)


def free_cluster_port() -> int:
    """A loopback port that is free, and whose cluster bus port is free too."""
    for _ in range(1_000):
        port = random.randrange(20_000, 65_535 - BUS_OFFSET)
        try:
            with socket.socket() as one, socket.socket() as bus:
                one.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + BUS_OFFSET))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterServers:
    """``masters`` redis-servers with --cluster-enabled, sharing the slots evenly."""

    def __init__(self, directory: Path, masters: int = 3, *config: str) -> None:
        self.nodes = [
            RedisServer(
                directory / f"node{i}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",  # relative to the node's --dir
                "--cluster-node-timeout",
                "5000",
                *config,
            )
            for i in range(masters)
        ]
        for node in self.nodes:
            node.port = free_cluster_port()

    @property
    def url(self) -> str:
        """What ROTA_REDIS_URL names: any node, the client discovers the rest."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        count = len(self.nodes)
        for i, node in enumerate(self.nodes):
            first, last = i * SLOTS // count, (i + 1) * SLOTS // count - 1
            with node.client() as client:
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                if int(client.info("server")["redis_version"].split(".")[0]) >= 7:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                else:
                    for start in range(first, last + 1, ADDSLOTS_CHUNK):
                        chunk = range(start, min(start + ADDSLOTS_CHUNK, last + 1))
                        client.execute_command("CLUSTER", "ADDSLOTS", *chunk)
        with self.nodes[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def _ready(self) -> bool:
        for node in self.nodes:
            with node.client(decode=True) as client:
                info = client.execute_command("CLUSTER", "INFO")
                state = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
                if state.get("cluster_state") != "ok":
                    return False
                if int(state.get("cluster_known_nodes", 0)) != len(self.nodes):
                    return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def client(self, decode: bool = False) -> Any:
        return RedisCluster(host="127.0.0.1", port=self.nodes[0].port, decode_responses=decode)

    def node_clients(self, decode: bool = False) -> list[redis.Redis]:
        """A plain client per master, to look at what each one holds."""
        clients: list[redis.Redis] = [node.client(decode=decode) for node in self.nodes]
        return clients


def node_id(node: RedisServer) -> str:
    with node.client(decode=True) as client:
        found: str = client.execute_command("CLUSTER", "MYID")
        return found


class SlotMover:
    """Moves one slot between masters the way ``redis-cli --cluster reshard`` does, in steps,
    so a test can act while the slot is mid-migration."""

    def __init__(self, cluster: RedisClusterServers, slot: int, source: RedisServer) -> None:
        self.cluster, self.slot, self.source = cluster, slot, source

    def begin(self, target: RedisServer) -> None:
        """IMPORTING on the target, then MIGRATING on the source."""
        with target.client() as client:
            client.execute_command(
                "CLUSTER", "SETSLOT", self.slot, "IMPORTING", node_id(self.source)
            )
        with self.source.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", node_id(target))

    def migrate(self, target: RedisServer, names: list[str] | None = None) -> None:
        """MIGRATE the given keys of the slot (default: every key left) to the target."""
        with self.source.client(decode=True) as client:
            while True:
                batch = names or client.execute_command(
                    "CLUSTER", "GETKEYSINSLOT", self.slot, 1_000
                )
                if not batch:
                    return
                client.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5_000, "KEYS", *batch
                )
                if names:
                    return

    def finish(self, target: RedisServer) -> None:
        """The slot belongs to the target: told to the target first, then to every master."""
        owner = node_id(target)
        for node in [target, *(n for n in self.cluster.nodes if n is not target)]:
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", owner)
        self.source = target

    def move(self, target: RedisServer) -> None:
        self.begin(target)
        self.migrate(target)
        self.finish(target)


def owner(cluster: RedisClusterServers, slot: int) -> RedisServer:
    """The master that serves the slot now."""
    with cluster.nodes[0].client() as client:
        for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                port = int(master[1])
                return next(n for n in cluster.nodes if n.port == port)
    raise LookupError(f"slot {slot} is not served")
