"""End-to-end throughput on a 3-master Redis Cluster next to one redis-server, for
``scripts/bench --cluster``: a backlog of first messages spread over many accounts (and inbound
partitions) is drained by N ``rota worker --burst`` processes; messages per second from their
start to their exit, and from the first decision to the last.

    from tests.cluster_bench import compare, measure
    for result in compare(messages=20_000, workers=2):
        print(result.row())

or ``python -m tests.cluster_bench [MESSAGES] [WORKERS]``, which prints a Markdown table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.redis_cluster import RedisClusterServers
from tests.redis_server import RedisServer
from worker import admin, partitions
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
USERS = ["A", "B", "C", "D", "E"]
PUSH_BATCH = 1_000

Topology = Literal["single", "cluster"]


@dataclass(frozen=True)
class Throughput:
    topology: Topology
    masters: int
    partitions: int
    accounts: int
    workers: int
    messages: int
    wall_s: float  # workers' start to their exit
    busy_s: float  # first decision to last

    @property
    def per_s(self) -> float:
        return self.messages / self.wall_s

    @property
    def busy_per_s(self) -> float:
        return self.messages / self.busy_s

    def row(self) -> str:
        where = f"{self.topology} ({self.masters} master{'s' if self.masters > 1 else ''})"
        return (
            f"| {where} | {self.partitions} | {self.accounts} | {self.workers} | "
            f"{self.messages:,} | {self.per_s:,.0f} | {self.busy_per_s:,.0f} |"
        )


HEADER = (
    "| Redis | inbound partitions | accounts | rota worker --burst | messages | msg/s "
    "(start to exit) | msg/s (first to last decision) |\n|---|---|---|---|---|---|---|"
)


def _settings(url: str, partitions_: int) -> Settings:
    values: dict[str, Any] = {"redis_url": url, "inbound_partitions": partitions_}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def _backlog(client: Any, settings: Settings, messages: int, accounts: list[str]) -> None:
    for account in accounts:
        admin.set_number(client, account, "15550001000", members=USERS)
        for user in USERS:
            admin.set_presence(client, account, user, "available")
    pipe = client.pipeline(transaction=False)
    for i in range(messages):
        account = accounts[i % len(accounts)]
        fields = {"account": account, "number": "15550001000", "from": f"4477{i:08d}"}
        pipe.xadd(partitions.inbound_stream(settings, account), {**fields, "message_id": f"b{i}"})
        if (i + 1) % PUSH_BATCH == 0:
            pipe.execute()
    pipe.execute()


def _drain(url: str, partitions_: int, workers: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTA_")}
    env.update(
        ROTA_REDIS_URL=url, ROTA_INBOUND_PARTITIONS=str(partitions_), ROTA_LOG_LEVEL="warning"
    )
    command = [sys.executable, "-m", "worker", "worker", "--burst"]
    started = time.perf_counter()
    procs = [subprocess.Popen(command, cwd=ROOT, env=env) for _ in range(workers)]
    codes = [proc.wait(timeout=900) for proc in procs]
    if any(codes):
        raise RuntimeError(f"a burst worker failed: exit codes {codes}")
    return time.perf_counter() - started


def _decision_span_s(client: Any, events_stream: str) -> float:
    first, last = client.xrange(events_stream, count=1), client.xrevrange(events_stream, count=1)
    ms = [int(entries[0][0].split("-")[0]) for entries in (first, last)]
    return max(ms[1] - ms[0], 1) / 1000


def measure(
    topology: Topology = "cluster",
    messages: int = 20_000,
    workers: int = 2,
    accounts: int = 30,
    partitions_: int = 4,
    directory: Path | None = None,
) -> Throughput:
    """Builds the Redis (a 3-master cluster, or one redis-server) in ``directory`` (default:
    a temp dir), pushes ``messages`` first messages round-robin over ``accounts`` accounts
    (5 available users each) onto ``partitions_`` inbound partitions, drains them with
    ``workers`` burst workers, checks every message was decided, stops the servers."""
    with tempfile.TemporaryDirectory(prefix="rota-bench-") as temp:
        where = directory or Path(temp)
        servers: RedisClusterServers | RedisServer
        if topology == "cluster":
            servers = RedisClusterServers(where / "cluster").start()
            masters = len(servers.nodes)
        else:
            servers = RedisServer(where / "single").start()
            masters = 1
        try:
            settings = _settings(servers.url, partitions_)
            client = servers.client(decode=True)
            names = [f"bench{i:03d}" for i in range(accounts)]
            _backlog(client, settings, messages, names)
            wall = _drain(servers.url, partitions_, workers)
            decided = client.xlen(settings.events_stream)
            if decided != messages or client.xlen(settings.dead_stream):
                raise RuntimeError(f"{decided:,} decisions for {messages:,} messages")
            busy = _decision_span_s(client, settings.events_stream)
            client.close()
        finally:
            servers.stop()
    return Throughput(topology, masters, partitions_, accounts, workers, messages, wall, busy)


def compare(
    messages: int = 20_000, workers: int = 2, accounts: int = 30, partitions_: int = 4
) -> list[Throughput]:
    """The same backlog on one redis-server with one inbound stream (the default), on one
    redis-server with ``partitions_`` partitions, then on a 3-master cluster with as many."""
    return [
        measure("single", messages, workers, accounts, 1),
        measure("single", messages, workers, accounts, partitions_),
        measure("cluster", messages, workers, accounts, partitions_),
    ]


def main(argv: list[str]) -> int:
    messages = int(argv[0]) if argv else 20_000
    workers = int(argv[1]) if len(argv) > 1 else 2
    print(HEADER)
    for result in compare(messages, workers):
        print(result.row(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
