"""Rota on Redis Cluster and on a partitioned inbound stream: the client, the partition
function, accounts spread over masters, partitions read, claimed, poisoned and replayed, and a
decision whose slot is mid-migration. (The rule tests, the sheet cases, the 4-worker and the
killed-worker tests run on the cluster too: see ON_SINGLE_AND_CLUSTER.)"""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from tests.conftest import ON_SINGLE_AND_CLUSTER, Target, make_settings, spawn_worker
from tests.helpers import (
    ACCOUNT,
    NUMBER,
    dead,
    decide,
    events,
    given_decisions_of_account_fail,
    given_number,
    given_presence,
    run_burst,
    run_rota,
    send,
)
from tests.redis_cluster import RedisClusterServers, SlotMover, owner
from worker import admin, connection, keys, partitions
from worker import dead as dead_letters
from worker.assign import Assigner
from worker.messages import Message
from worker.scripts import Scripts
from worker.settings import Settings

ON_CLUSTER = pytest.mark.parametrize("backend", ["cluster"], indirect=True)  # rd, rb: cluster

USERS = ["A", "B", "C"]
ACCOUNTS = [f"tenant{i:02d}" for i in range(30)]


def given_accounts(rd: Any, accounts: list[str]) -> None:
    for account in accounts:
        given_number(rd, USERS, account=account)
        given_presence(rd, account=account, **dict.fromkeys(USERS, "available"))


def pending(rd: Any, stream: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = rd.xpending_range(stream, "rota", "-", "+", 100)
    return found


# --- The client and the partition function -------------------------------------------------


def test_cluster_url_gives_redis_cluster_client_and_plain_url_a_redis_client(
    redis_cluster: RedisClusterServers, redis_server: Any
) -> None:
    assert connection.cluster_url("redis+cluster://u:p@h:7000/0") == "redis://u:p@h:7000/0"
    assert connection.cluster_url("rediss+cluster://h:7000") == "rediss://h:7000"
    assert connection.cluster_url("redis://h:6380/0") is None

    cluster = connection.connect(make_settings(redis_cluster.url))
    single = connection.connect(make_settings(redis_server.url))

    assert isinstance(cluster, RedisCluster) and connection.is_cluster(cluster)
    assert len(cluster.get_primaries()) == 3
    assert not connection.is_cluster(single)
    cluster.close()
    single.close()


def test_partition_is_crc32_of_the_account_mod_partitions_as_documented() -> None:
    eight = make_settings("redis://unused", inbound_partitions=8)
    one = make_settings("redis://unused")

    assert partitions.partition("acme", 8) == 96778814 % 8 == 6  # the README's example
    assert partitions.partition(b"acme", 8) == 6
    assert partitions.inbound_stream(eight, "acme") == "rota:inbound:6"
    assert partitions.inbound_stream(eight, None) == partitions.inbound_stream(eight, "default")
    assert partitions.inbound_stream(one, "acme") == "rota:inbound"
    assert partitions.inbound_streams(one) == ["rota:inbound"]
    assert partitions.inbound_streams(eight)[-1] == "rota:inbound:7"


def test_rota_partition_prints_the_accounts_stream_and_send_uses_it(
    rd: Any, settings: Settings
) -> None:
    url = connection.url(settings)
    assert run_rota(url, "partition", "acme").stdout == "rota:inbound\n"
    shown = run_rota(url, "partition", "acme", ROTA_INBOUND_PARTITIONS="8")
    assert (shown.returncode, shown.stdout, shown.stderr) == (0, "rota:inbound:6\n", "")

    sent = run_rota(
        url, "send", "--account", "acme", NUMBER, "447700900001", ROTA_INBOUND_PARTITIONS="8"
    )

    assert sent.returncode == 0, sent.stderr
    assert rd.xrange("rota:inbound:6")[0][0] == sent.stdout.strip()
    assert not rd.exists("rota:inbound")


def test_every_key_of_a_decision_is_in_its_accounts_slot() -> None:
    assigner = Assigner(Scripts(redis.Redis()), dedup_window_s=86_400)
    assigner._groups[ACCOUNT] = ("sales", "night")  # as after a "!groups" reply
    message = Message("1-0", ACCOUNT, NUMBER, "447700900001", "wamid.1")

    [call] = assigner.calls([message], 1_700_000_000_000)

    assert len(call.keys) == 9 + 14 + 2  # the account's, the number's, two groups
    assert {key_slot(key.encode()) for key in call.keys} == {key_slot(b"{acme}")}


# --- Accounts over masters -----------------------------------------------------------------


@ON_CLUSTER
def test_accounts_spread_over_all_three_masters_and_each_keeps_its_keys_on_one(
    rd: Any, rb: Any, redis_cluster: RedisClusterServers
) -> None:
    # Given 30 accounts, each with a number of 3 available users, and 4 inbound partitions
    settings = make_settings(redis_cluster.url, inbound_partitions=4)
    given_accounts(rd, ACCOUNTS)
    for account in ACCOUNTS:
        for i in range(4):
            send(rd, settings, f"44770090{i:04d}", account=account, message_id=f"{account}.{i}")

    # When one burst worker drains every partition
    assert run_burst(rb, settings) == 0

    # Then each account rotated A, B, C, A on its own
    by_account: dict[str, list[str]] = {}
    for event in events(rd, settings):
        by_account.setdefault(event["account"], []).append(event["user"])
    assert by_account == {account: ["A", "B", "C", "A"] for account in ACCOUNTS}
    # and every master holds some accounts, each account's keys all on one master,
    held: dict[int, set[str]] = {}
    for node, client in zip(redis_cluster.nodes, redis_cluster.node_clients(True), strict=True):
        names = [k for k in client.scan_iter("rota:{*", count=1_000)]
        held[node.port] = {name.split("{", 1)[1].split("}", 1)[0] for name in names}
        client.close()
    assert all(held.values()), f"a master holds no account: {held}"
    assert sum(len(accounts) for accounts in held.values()) == len(ACCOUNTS)
    # and the inbound partitions are spread over the masters too
    masters = {
        owner(redis_cluster, rd.keyslot(s)).port for s in partitions.inbound_streams(settings)
    }
    assert len(masters) == 3


# --- Partitions: read, claimed, poisoned, replayed -----------------------------------------


@ON_SINGLE_AND_CLUSTER
def test_worker_reads_every_partition_and_burst_ends_when_all_are_drained(
    rd: Any, rb: Any, target: Target
) -> None:
    # Given 6 accounts' messages spread over 4 partitions
    settings = make_settings(target.url, inbound_partitions=4)
    accounts = ACCOUNTS[:6]
    given_accounts(rd, accounts)
    for account in accounts:
        for i in range(3):
            send(rd, settings, f"44770090{i:04d}", account=account, message_id=f"{account}.{i}")
    used = {partitions.inbound_stream(settings, account) for account in accounts}
    assert len(used) > 1

    # When a burst worker runs
    assert run_burst(rb, settings) == 0

    # Then every message is decided, and nothing is pending on any partition
    decided = Counter((e["account"], e["user"]) for e in events(rd, settings))
    assert decided == {(account, user): 1 for account in accounts for user in USERS}
    assert all(pending(rd, stream) == [] for stream in partitions.inbound_streams(settings))


@ON_SINGLE_AND_CLUSTER
def test_idle_entries_of_every_partition_are_claimed_by_another_worker(
    rd: Any, rb: Any, target: Target
) -> None:
    # Given a consumer that read one message from each of 4 partitions and died
    settings = make_settings(target.url, inbound_partitions=4, claim_idle_ms=100)
    accounts = ["tenant00", "tenant01", "tenant02", "tenant03", "tenant05"]
    given_accounts(rd, accounts)
    streams = partitions.inbound_streams(settings)
    for account in accounts:
        send(rd, settings, "447700900001", account=account, message_id=f"{account}.1")
    for stream in streams:
        rd.xgroup_create(stream, "rota", id="0", mkstream=True)
        rd.xreadgroup("rota", "dead-worker", {stream: ">"})
    assert sum(len(pending(rd, stream)) for stream in streams) == len(accounts)

    # When another worker runs once they have been idle long enough
    time.sleep(0.2)
    assert run_burst(rb, settings, consumer="survivor") == 0

    # Then it decided them all, on every partition
    assert sorted(e["account"] for e in events(rd, settings)) == accounts
    assert all(pending(rd, stream) == [] for stream in streams)


@ON_SINGLE_AND_CLUSTER
def test_poison_on_a_partition_is_dead_lettered_and_replayed_onto_its_partition(
    rd: Any, rb: Any, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an account whose decisions fail inside the script, on 4 partitions
    settings = make_settings(target.url, inbound_partitions=4, claim_idle_ms=100, max_deliveries=2)
    given_number(rd, ["A"], account="broken")
    given_decisions_of_account_fail(monkeypatch, "broken")
    home = partitions.inbound_stream(settings, "broken")
    sent = send(rd, settings, "447700900001", account="broken", message_id="p.1")

    # When bursts run until it is poison
    for _ in range(20):
        assert run_burst(rb, settings) == 0
        if dead(rd, settings):
            break
        time.sleep(0.15)

    # Then it is on rota:dead, acknowledged on its partition
    [letter] = dead(rd, settings)
    assert (letter["error"], letter["inbound_id"], letter["deliveries"]) == ("poison", sent, "2")
    assert pending(rd, home) == []

    # When the fault is gone and the dead letter replayed
    monkeypatch.undo()
    given_presence(rd, account="broken", A="available")
    [(_, new_id)] = dead_letters.replay(rb, settings, count=10)

    # Then it is back on the account's partition, and decided there
    assert [entry_id for entry_id, _ in rd.xrange(home)][-1] == new_id
    assert run_burst(rb, settings) == 0
    assert [(e["message_id"], e["user"]) for e in events(rd, settings)] == [("p.1", "A")]
    assert dead(rd, settings) == []


# --- The CLI and the demo on a cluster ---------------------------------------------------


@ON_CLUSTER
def test_cli_commands_work_on_a_cluster(rd: Any, redis_cluster: RedisClusterServers) -> None:
    url = redis_cluster.url
    for args in [
        ("account", "set", ACCOUNT, "--admin", "boss"),
        ("group", "set", ACCOUNT, "sales", "alice", "bob"),
        ("number", "set", ACCOUNT, NUMBER, "--members", "carol,group:sales"),
        ("presence", "set", ACCOUNT, "bob", "Available"),
        ("owner", "set", ACCOUNT, NUMBER, "447700900009", "carol"),
    ]:
        result = run_rota(url, *args)
        assert (result.returncode, result.stderr) == (0, ""), args

    sent = run_rota(url, "send", "--account", ACCOUNT, NUMBER, "447700900001", "--message-id", "m1")
    burst = run_rota(url, "worker", "--burst")
    shown = run_rota(url, "number", "show", ACCOUNT, NUMBER)

    assert (sent.returncode, burst.returncode, shown.returncode) == (0, 0, 0), burst.stderr
    assert [(e["user"], e["reason"]) for e in events(rd, make_settings(url))] == [
        ("bob", "round_robin")
    ]
    assert '"cursor": 3' in shown.stdout and '"known_customers": 2' in shown.stdout

    # A message for a number without settings is dead-lettered, listed, replayed
    assert (
        run_rota(url, "send", "--account", ACCOUNT, "15559999999", "447700900002").returncode == 0
    )
    assert run_rota(url, "worker", "--burst").returncode == 0
    listed = run_rota(url, "dead", "list")
    replayed = run_rota(url, "dead", "replay")

    assert '"error": "unknown_number"' in listed.stdout, listed.stderr
    assert replayed.stdout == "replayed 1 dead letters onto rota:inbound\n", replayed.stderr
    assert rd.xlen("rota:dead") == 0


def accounts_on_masters(cluster: RedisClusterServers, masters: int) -> list[str]:
    """One account name per master (of the first ``masters``), each in a slot of its own."""
    found: dict[int, str] = {}
    for i in range(1_000):
        name = f"org{i}"
        found.setdefault(owner(cluster, key_slot(f"{{{name}}}".encode())).port, name)
        if len(found) == masters:
            return list(found.values())
    raise LookupError("no accounts found on every master")


def accounts_file(accounts: list[str]) -> str:
    return "".join(
        f'[accounts.{a}]\nadmin = "boss"\n\n[accounts.{a}.groups]\nsales = ["{a}.1", "{a}.2"]\n\n'
        f'[accounts.{a}.numbers.{NUMBER}]\nmembers = ["group:sales"]\naccess = []\n'
        "assign_unknown = true\nonline_only = true\n\n"
        for a in sorted(accounts)
    )


@ON_CLUSTER
def test_apply_writes_accounts_on_every_master_each_in_one_transaction(
    rd: Any, redis_cluster: RedisClusterServers, tmp_path: Any
) -> None:
    # Given accounts on all three masters, one with a group the file leaves out
    accounts = accounts_on_masters(redis_cluster, 3)
    admin.set_group(rd, accounts[0], "stale", ["x"])
    path = tmp_path / "rota.toml"
    path.write_text(accounts_file(accounts))
    # When the file is applied, pruning
    applied = run_rota(redis_cluster.url, "apply", "--prune", str(path))
    # Then each account is written, its version moved once per transaction, and the export
    # prints the file back
    assert (applied.returncode, applied.stderr) == (0, ""), applied.stderr
    assert not rd.exists(keys.group(accounts[0], "stale"))
    assert [rd.get(keys.version(a)) for a in accounts] == ["2", "1", "1"]
    exported = run_rota(redis_cluster.url, "export")
    assert exported.stdout.split("\n", 2)[2] == accounts_file(accounts)[:-1], exported.stderr


@ON_CLUSTER
def test_apply_refused_by_one_master_midway_says_which_accounts_were_written(
    rd: Any, redis_cluster: RedisClusterServers, tmp_path: Any
) -> None:
    # Given three accounts on three masters, the second's master out of memory (it refuses
    # every write it is sent, inside MULTI too, so its EXEC aborts)
    first, second, third = accounts_on_masters(redis_cluster, 3)
    path = tmp_path / "rota.toml"
    path.write_text(
        "".join(
            f'[accounts.{a}.numbers.{NUMBER}]\nmembers = ["A"]\n' for a in [first, second, third]
        )
    )
    full = owner(redis_cluster, key_slot(f"{{{second}}}".encode()))
    with full.client() as client:
        client.config_set("maxmemory", 1)
        try:
            # When the file is applied
            result = run_rota(redis_cluster.url, "apply", str(path))
        finally:
            client.config_set("maxmemory", 0)
    # Then the first account is written and the others not, and one line says so
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"rota: error: apply stopped at account {second} ("), line
    assert line.endswith(f"written: {first}; not written: {second}, {third}"), line
    assert "maxmemory" in line
    assert rd.lrange(keys.members(first, NUMBER), 0, -1) == ["A"]
    assert [rd.exists(keys.number(a, NUMBER)) for a in [second, third]] == [0, 0]


@ON_CLUSTER
def test_export_stats_and_reindex_find_the_configuration_on_a_cluster(
    rd: Any, redis_cluster: RedisClusterServers
) -> None:
    # Given numbers of two accounts in different slots, one of them written by hand, unindexed
    url = redis_cluster.url
    for account in ("acme", "tenant07"):
        assert run_rota(url, "number", "set", account, NUMBER, "--members", "A").returncode == 0
    rd.hset(keys.number("tenant07", "15550002000"), mapping={"assign_unknown": 1})
    # When the configuration is exported, before and after the index is rebuilt from a SCAN
    before = run_rota(url, "export").stdout
    reindexed = run_rota(url, "reindex")
    after = run_rota(url, "export").stdout
    stats = run_rota(url, "stats", "tenant07")
    # Then the index finds every account's numbers, and SCAN (of every master) the unindexed
    assert "[accounts.acme.numbers.15550001000]" in before
    assert "[accounts.tenant07.numbers.15550001000]" in before
    assert "15550002000" not in before
    assert reindexed.stdout == "indexed: accounts 2, numbers 3, groups 0\n", reindexed.stderr
    assert "[accounts.tenant07.numbers.15550002000]" in after
    assert '"15550002000"' in stats.stdout, stats.stderr


@ON_CLUSTER
def test_demo_runs_end_to_end_on_a_cluster(rd: Any, redis_cluster: RedisClusterServers) -> None:
    rd.set("rota:{demo}:leftover", "from an earlier run")  # reset scans every master

    result = run_rota(redis_cluster.url, "demo")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "EXPECTED" not in result.stdout
    assert not rd.exists("rota:{demo}:leftover")


@ON_CLUSTER
def test_script_flushed_on_every_master_is_loaded_again_on_each(
    rd: Any, rb: Any, redis_cluster: RedisClusterServers
) -> None:
    settings = make_settings(redis_cluster.url)
    given_accounts(rd, ACCOUNTS[:9])
    for account in ACCOUNTS[:9]:
        send(rd, settings, "447700900001", account=account)
    rb.script_flush()  # every master

    assert run_burst(rb, settings) == 0

    assert len(events(rd, settings)) == 9
    assert dead(rd, settings) == []


# --- A slot migration ----------------------------------------------------------------------


@ON_CLUSTER
def test_decision_while_its_slot_migrates_is_not_applied_stays_pending_never_poison(
    rd: Any, rb: Any, redis_cluster: RedisClusterServers
) -> None:
    # Given an account with one decision made, and its slot half moved to another master
    settings = make_settings(redis_cluster.url, claim_idle_ms=150, max_deliveries=2)
    given_number(rd, USERS)
    given_presence(rd, **dict.fromkeys(USERS, "available"))
    assert decide(rd, rb, settings, "447700900001") == ["A"]
    slot = rd.keyslot(keys.cursor(ACCOUNT, NUMBER))
    source = owner(redis_cluster, slot)
    target = next(node for node in redis_cluster.nodes if node is not source)
    mover = SlotMover(redis_cluster, slot, source)
    mover.begin(target)
    try:
        mover.migrate(target, [keys.cursor(ACCOUNT, NUMBER)])
        inbound_id = send(rd, settings, "447700900002")

        # When workers try it, and claim it again, more often than max_deliveries
        for _ in range(3):
            assert run_burst(rb, settings) == 0
            time.sleep(0.2)

        # Then nothing was applied or published, and it is pending, not poison
        assert len(events(rd, settings)) == 1
        assert dead(rd, settings) == []
        [entry] = pending(rd, "rota:inbound")
        assert (entry["message_id"], entry["times_delivered"]) == (inbound_id, 0)

        # When the migration completes
        mover.migrate(target)
        mover.finish(target)
        time.sleep(0.2)
        assert run_burst(rb, settings) == 0

        # Then the next worker decides it where the rotation left off, once
        assert [(e["user"], e["reason"]) for e in events(rd, settings)] == [
            ("A", "round_robin"),
            ("B", "round_robin"),
        ]
        assert rd.get(keys.cursor(ACCOUNT, NUMBER)) == "2"
        assert owner(redis_cluster, slot) is target
        assert pending(rd, "rota:inbound") == []
    finally:
        if owner(redis_cluster, slot) is not source:
            SlotMover(redis_cluster, slot, target).move(source)
        else:
            SlotMover(redis_cluster, slot, source).finish(source)


@ON_CLUSTER
@pytest.mark.parametrize("partitions_", [1, 4])
def test_burst_on_empty_partitions_exits_at_once(
    rd: Any, rb: Any, redis_cluster: RedisClusterServers, partitions_: int
) -> None:
    settings = make_settings(redis_cluster.url, inbound_partitions=partitions_)
    started = time.monotonic()

    assert run_burst(rb, settings) == 0

    assert time.monotonic() - started < 2
    assert all(rd.exists(stream) for stream in partitions.inbound_streams(settings))


@ON_SINGLE_AND_CLUSTER
def test_partitioned_worker_decides_soon_and_leaves_every_partition_on_sigterm(
    rd: Any, target: Target
) -> None:
    # Given a running worker over 4 partitions
    settings = make_settings(target.url, inbound_partitions=4)
    accounts = ACCOUNTS[:4]
    given_accounts(rd, accounts)
    worker = spawn_worker(target.url, inbound_partitions="4")
    try:
        streams = partitions.inbound_streams(settings)
        wait = time.monotonic() + 30
        while not all(_consumers(rd, stream) for stream in streams):
            assert time.monotonic() < wait, "the worker never joined every partition"
            time.sleep(0.05)

        # When messages arrive for accounts on different partitions, one at a time
        latencies = []
        for account in accounts:
            sent = time.monotonic()
            send(rd, settings, "447700900001", account=account)
            while len(events(rd, settings)) < len(latencies) + 1:
                assert time.monotonic() - sent < 5, f"no decision for {account}"
                time.sleep(0.005)
            latencies.append(time.monotonic() - sent)

        # Then each is decided within a few blocking periods of one partition
        assert max(latencies) < 1.0, latencies
        # and on SIGTERM the worker exits 0, gone from every partition's group
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
        assert (worker.returncode, stderr) == (0, b"")
        assert all(_consumers(rd, stream) == [] for stream in streams)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def _consumers(rd: Any, stream: str) -> list[str]:
    try:
        return [c["name"] for c in rd.xinfo_consumers(stream, "rota")]
    except ResponseError:  # the stream or group does not exist yet
        return []
