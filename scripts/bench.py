"""Rota's benchmark: one run, on one redis-server of its own, printed as a Markdown table.

Parts (the machine is shared, so each figure is set against a baseline measured in the same run):
  0 null     the stream work alone: 2 processes XREADGROUP a batch, XADD an event per entry and
             XACK, no decision: what Rota's decisions are measured against; then the state
             floor: the same with one EVALSHA a batch of scripts/state_floor.lua, which reads
             and writes only the state the contract makes every decision keep (no rule): the
             least any decision under the contract costs
  1 ceiling  redis-benchmark calling lua/decide.lua (EVALSHA) for new customers
  2 e2e      messages already on rota:inbound, drained by 1, then 2, `rota worker --burst`
  3 latency  2 workers, a producer paced at 5,000 msg/s, XADD -> decision on rota:assignments
  4 peers    one rq job per message; client-side round robin over a list (as Chatwoot does)
  5 scale    10 vs 1,000 members; Redis memory per known customer
  6 night    the night shift: 1,000 members of whom one is available, at full load and one
             message at a time, against 8 members all available
  7 conversations  capacity and presence TTL on (never reached) against the same decision off
  8 timers   reply timers and the queue on (every decision starts a timer) against off; and
             the sweep firing reply timers that are all due, per timer
  9 webhook  signed WhatsApp deliveries of 1 message at a steady 1,000/s from a loopback client
             (64 keep-alive connections, after 1 s of warm-up) to 1, then 2 `rota serve`
             processes, 2 workers running: latency to the 200 and to the decision on
             rota:assignments

Run it as ``scripts/bench [--quick] [--only PART] [--json FILE]``: progress on stderr, the table
on stdout; exit 0 when every part ran (whatever the targets say), 1 when a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import hmac
import itertools
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from types import FrameType
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer, free_port  # noqa: E402
from worker import admin, keys  # noqa: E402
from worker.assign import Assigner, Decision  # noqa: E402
from worker.clock import local_ms as now_ms  # noqa: E402
from worker.connection import transport  # noqa: E402
from worker.messages import Message  # noqa: E402
from worker.scripts import Scripts  # noqa: E402
from worker.settings import Settings  # noqa: E402


def _default(name: str) -> Any:
    """A setting's default: the workers run with no ROTA_* but the Redis URL and log level."""
    return Settings.model_fields[name].default


INBOUND: str = _default("inbound_stream")
EVENTS: str = _default("events_stream")
DEAD: str = _default("dead_stream")
GROUP: str = _default("group")
DEDUP_WINDOW_S: int = _default("dedup_window_s")

ACCOUNT, NUMBER, ADMIN = "bench", "15550001000", "boss"
CUSTOMER_BASE = 5511900000000  # customers are CUSTOMER_BASE + i: distinct, 13 digits
RAND, RAND_RANGE = "__rand_int__", 2_000_000_000  # -r above ~2**31 silently gives zeros
CLIENTS, PIPELINE = 50, 16
WORKERS = 2
RQ_QUEUE = "rota-bench"
PEER_LIST = f"bench:chatwoot:{{{ACCOUNT}}}:round_robin:{NUMBER}"
PEER_OWNERS = f"bench:chatwoot:{{{ACCOUNT}}}:owners:{NUMBER}"

TARGET_E2E = 0.7  # 2 workers >= 0.7 x the null pipeline's msg/s
TARGET_REDIS_CPU = 2.0  # Redis CPU per message <= 2 x the null pipeline's
TARGET_NIGHT = 2.0  # 1,000 members, 1 available <= 2 x the time per message of 8 available
TARGET_CONVERSATIONS = 1.5  # capacity and presence TTL on <= 1.5 x the plain decision
TARGET_TIMERS = 1.5  # reply timers and the queue on <= 1.5 x the plain decision
TARGET_P99_MS = 5.0
TARGET_PEER = 20.0  # Rota >= 20 x the client-side peer
TARGET_SCALE = 3.0  # 1,000 members <= 3 x the time of 10
TARGET_BYTES = 100.0  # Redis per known customer
TARGET_WEBHOOK_P99_MS = 20.0  # POST /whatsapp to its 200, at WEBHOOK_RATE

PART_NAMES = {
    "0": "null", "1": "ceiling", "2": "e2e", "3": "latency", "4": "peers", "5": "scale",
    "6": "night", "7": "conversations", "8": "timers", "9": "webhook",
}  # fmt: skip
# the baselines a part's ratios are taken against
NEEDS = {"2": ("0", "1"), "4": ("0", "1", "2")}


class BenchError(Exception):
    """A check failed: the figure would not mean what it says."""


@dataclass(frozen=True)
class Sizes:
    ceiling: int  # redis-benchmark requests (part 1)
    e2e: int  # messages on the stream (part 2)
    latency_s: float  # producer duration (part 3)
    latency_rate: int  # msg/s (part 3)
    rq: int  # rq jobs (part 4a)
    peer: int  # client-side round robin messages, over both processes (part 4b)
    scale: int  # redis-benchmark requests for each of 10 and 1,000 members (part 5)
    memory: int  # new customers decided before measuring memory (part 5)
    night: int  # messages for the night shift at full load (part 6)
    single: int  # messages decided one at a time, for each case (part 6)
    webhook_s: float  # seconds of deliveries, for each count of rota serve processes (part 9)


# A forking rq job costs ~50 ms on a 2-core VM, and 1,000 members may cost ~1 ms a decision
# (they did before the rotation was compiled): those counts keep the full run within ~5 minutes.
FULL = Sizes(200_000, 200_000, 20.0, 5_000, 1_000, 20_000, 50_000, 1_000_000, 50_000, 2_000, 10.0)
QUICK = Sizes(20_000, 20_000, 3.0, 5_000, 100, 4_000, 5_000, 50_000, 5_000, 300, 3.0)


@dataclass
class Row:
    part: str
    figure: str
    value: str
    versus: str = ""
    target: str = ""
    ok: bool | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    ratios: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, part: str, figure: str, value: str, versus: str = "") -> None:
        self.rows.append(Row(part, figure, value, versus))

    def judge(self, part: str, figure: str, value: str, versus: str, target: str, ok: bool) -> None:
        self.rows.append(Row(part, figure, value, versus, target, ok))


@dataclass
class Bench:
    server: RedisServer
    work: Path
    sizes: Sizes
    rb: Any  # bytes client (the worker's view)
    rd: Any  # decoding client (the admin's view)
    report: Report
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)  # pid -> its output
    scripts: Any = None  # worker.scripts.Scripts, read once: the source may change during a run
    null: Null | None = None  # part 0
    floor: Null | None = None  # part 0: the state floor
    ceiling: float | None = None  # decisions/s, part 1
    rota2: float | None = None  # msg/s with 2 workers, part 2
    worker_rss_mib: float | None = None


_STARTED = time.monotonic()


def log(text: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {text}", file=sys.stderr, flush=True)


def check(condition: bool, failure: str) -> None:
    if not condition:
        raise BenchError(failure)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def code_digest() -> str:
    """Of the code under test: others may change it while a run goes on."""
    digest = hashlib.sha1()
    for path in sorted([*ROOT.glob("lua/*.lua"), *ROOT.glob("worker/*.py")]):
        with contextlib.suppress(OSError):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------- shared by the parts


def users(count: int) -> list[str]:
    return [f"agent{i:04d}" for i in range(count)]


def fresh(bench: Bench, members: int, available: int | None = None) -> None:
    """An empty database with one number of ``members`` users, the last ``available`` of them
    (all by default) available and the others away."""
    bench.rb.flushall()
    admin.set_account(bench.rd, ACCOUNT, ADMIN)
    admin.set_number(bench.rd, ACCOUNT, NUMBER, members=users(members))
    away = members - (members if available is None else available)
    for i, user in enumerate(users(members)):
        admin.set_presence(bench.rd, ACCOUNT, user, "away" if i < away else "available")


def inbound_fields(i: int, tag: str) -> dict[str, str]:
    customer = str(CUSTOMER_BASE + i)
    return {"account": ACCOUNT, "number": NUMBER, "from": customer, "message_id": f"{tag}.{i}"}


def push(bench: Bench, count: int, tag: str) -> None:
    pipe = bench.rb.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(INBOUND, inbound_fields(i, tag))
        if i % 2_000 == 1_999:
            pipe.execute()
    pipe.execute()


def worker_env(bench: Bench) -> dict[str, str]:
    """Rota's settings at their defaults but the URL and log level (as tests/conftest.py does)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTA_")}
    env.update({"ROTA_REDIS_URL": bench.server.url, "ROTA_LOG_LEVEL": "warning"})
    return env


def rq_env(bench: Bench) -> dict[str, str]:
    """The job's module on the path, and byte code cached in the run's temp dir as in any
    deployment, even where PYTHONDONTWRITEBYTECODE is set: the forking worker imports the job's
    modules again in every job's child. Warmed here, so that no job pays for compiling."""
    job_dir = bench.work / "rq-job"
    job_dir.mkdir(exist_ok=True)
    (job_dir / f"{RQ_MODULE}.py").write_text(RQ_JOB_SOURCE)
    env = worker_env(bench)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(bench.work / "pycache")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(job_dir)])
    argv = [sys.executable, "-c", f"import rq.cli, rq.worker, {RQ_MODULE}"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, check=False)
    check(done.returncode == 0, f"importing the rq job failed: {done.stderr.decode()[-1500:]}")
    return env


Proc = subprocess.Popen[bytes]


def spawn(bench: Bench, argv: Sequence[str], name: str, env: dict[str, str]) -> Proc:
    path = bench.work / f"{name}.log"
    with path.open("wb") as output:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    bench.children.append(proc)
    bench.logs[proc.pid] = path
    return proc


def spawn_workers(bench: Bench, count: int, burst: bool, tag: str) -> list[Proc]:
    argv = [sys.executable, "-m", "worker", "worker", *(["--burst"] if burst else [])]
    return [spawn(bench, argv, f"{tag}-{i}", worker_env(bench)) for i in range(count)]


def described(bench: Bench, proc: Proc) -> str:
    path = bench.logs.get(proc.pid)
    name = f"{path.stem} (pid {proc.pid})" if path else f"pid {proc.pid}"
    if path is None or not path.exists():
        return name
    return f"{name}; its output ends:\n{path.read_text(errors='replace')[-1500:]}"


def wait_all(bench: Bench, procs: Sequence[Proc], timeout_s: float) -> None:
    """Waits for every process; each must exit 0."""
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            code = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            failure = f"still running after {timeout_s:.0f}s: {described(bench, proc)}"
            raise BenchError(failure) from None
        check(code == 0, f"exit {code}: {described(bench, proc)}")


def stop_children(bench: Bench) -> None:
    for proc in bench.children:
        if proc.poll() is None:
            proc.terminate()
    for proc in bench.children:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    bench.children.clear()


def proc_sample(pid: int) -> tuple[int, float] | None:
    """(VmRSS in KiB, user+system CPU seconds) of a running process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rss = next((int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmRSS:"), 0)
    ticks = stat.rsplit(")", 1)[1].split()  # fields from 3 on; utime, stime are 14 and 15
    return rss, (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")


class ProcSampler(threading.Thread):
    """Peak VmRSS and CPU time of some processes, sampled every 20 ms while they run."""

    def __init__(self, pids: Sequence[int]) -> None:
        super().__init__(daemon=True)
        self.peak_kib = 0
        self.cpu_s = dict.fromkeys(pids, 0.0)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            for pid in self.cpu_s:
                sample = proc_sample(pid)
                if sample is not None:
                    self.peak_kib = max(self.peak_kib, sample[0])
                    self.cpu_s[pid] = sample[1]

    def __enter__(self) -> ProcSampler:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self.join()


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(client: Any) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


@dataclass(frozen=True)
class Spread:
    low: int
    high: int
    stdev: float

    def text(self) -> str:
        return f"min {self.low:,} / max {self.high:,} / stddev {self.stdev:,.1f}"


def spread(client: Any, owners_key: str, members: int) -> Spread:
    counts = Counter(client.hvals(owners_key))
    per_user = [counts.get(user.encode(), 0) for user in users(members)]
    return Spread(min(per_user), max(per_user), statistics.pstdev(per_user))


# ---------------------------------------------------------------- 0: the null pipeline

BATCH: int = _default("batch_size")


@dataclass(frozen=True)
class Null:
    per_s: float  # messages / wall time from spawn until the last process exits
    redis_cpu_us: float  # Redis CPU (INFO cpu) per message


STATE_FLOOR = ROOT / "scripts" / "state_floor.lua"


def floor_keys(bucket: int) -> list[str]:
    """KEYS of scripts/state_floor.lua for the bench's number, in de-duplication ``bucket``."""
    return [
        keys.dedup(ACCOUNT, bucket),
        keys.dedup(ACCOUNT, bucket - 1),
        keys.owners(ACCOUNT, NUMBER),
        keys.open_conversations(ACCOUNT, NUMBER),
        keys.open_counts(ACCOUNT, NUMBER),
        keys.cursor(ACCOUNT, NUMBER),
        keys.rotation(ACCOUNT, NUMBER),
    ]


def stream_consumer(url: str, name: str, floor: bool) -> None:
    """The worker's stream work without the decision: read a batch, publish an event of the
    decision's size per entry, acknowledge; redis-py pipelines, as a plain client would. With
    ``floor``, each batch's users come from one call of scripts/state_floor.lua."""
    client: Any = redis.Redis.from_url(url)
    sha = client.script_load(STATE_FLOOR.read_text()) if floor else ""
    number = NUMBER.encode()
    while True:
        reply = client.xreadgroup(GROUP, name, {INBOUND: ">"}, count=BATCH)
        if not reply or not reply[0][1]:
            return
        entries = reply[0][1]
        now = now_ms()
        at = str(now).encode()
        chosen = [b"agent0001"] * len(entries)
        if floor:
            pairs = [
                part for _, f in entries for part in (f[b"from"], number + b":" + f[b"message_id"])
            ]
            bucket = now // (DEDUP_WINDOW_S * 1000)  # and its expiry, as the worker's
            expire_at = (bucket + 2) * DEDUP_WINDOW_S * 1000
            chosen = client.evalsha(sha, 7, *floor_keys(bucket), now, expire_at, *pairs)
        pipe = client.pipeline(transaction=False)
        for (entry_id, fields), user in zip(entries, chosen, strict=True):
            event = {**fields, b"user": user, b"reason": b"round_robin"}
            pipe.xadd(EVENTS, {**event, b"at": at, b"inbound_id": entry_id})
        pipe.xack(INBOUND, GROUP, *(entry_id for entry_id, _ in entries))
        pipe.execute()


def stream_work(bench: Bench, floor: bool) -> Null:
    """The e2e load drained by WORKERS stream_consumer processes (spawn to exit)."""
    count = bench.sizes.e2e
    fresh(bench, 8)
    if floor:
        bench.rb.rpush(keys.rotation(ACCOUNT, NUMBER), *users(8))  # as decide.lua compiles it
    push(bench, count, f"wamid.{'floor' if floor else 'null'}")
    bench.rb.xgroup_create(INBOUND, GROUP, id="0")
    ctx = mp.get_context("spawn")  # a fresh interpreter, as a worker process starts
    redis_before, start = redis_cpu_s(bench.rb), time.perf_counter()
    procs = [
        ctx.Process(target=stream_consumer, args=(bench.server.url, f"c-{i}", floor), daemon=True)
        for i in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
    wall = time.perf_counter() - start
    check(all(p.exitcode == 0 for p in procs), "a stream work process failed")
    verify_drained(bench, count)
    if floor:  # every customer owned, in turn, as Rota's round robin would give them
        given = spread(bench.rb, keys.owners(ACCOUNT, NUMBER), 8)
        even = given.low * 8 == count and given.high == given.low
        check(even, f"the state floor gave {count:,} customers as {given.text()}")
    return Null(count / wall, (redis_cpu_s(bench.rb) - redis_before) * 1e6 / count)


def part_null(bench: Bench) -> None:
    count = bench.sizes.e2e
    log(f"0 null: {count:,} messages, {WORKERS} processes: XREADGROUP {BATCH}, XADD, XACK")
    result = bench.null = stream_work(bench, floor=False)
    figure = f"null pipeline, {WORKERS} processes (spawn to exit), {count:,} msgs"
    bench.report.add("0 null", figure, f"{result.per_s:,.0f} msg/s", "baseline")
    cpu = f"{result.redis_cpu_us:.1f} µs"
    bench.report.add("0 null", "  Redis CPU per message (INFO cpu)", cpu, "baseline")
    bench.report.figures["null"] = asdict(result)
    log("0 null: the same with scripts/state_floor.lua deciding each batch")
    floor = bench.floor = stream_work(bench, floor=True)
    figure = "state floor: the same, plus the contract's reads and writes, no rule (one EVALSHA)"
    versus = f"{floor.per_s / result.per_s:.2f}x null"
    bench.report.add("0 null", figure, f"{floor.per_s:,.0f} msg/s", versus)
    cpu, versus = (
        f"{floor.redis_cpu_us:.1f} µs",
        f"{floor.redis_cpu_us / result.redis_cpu_us:.2f}x null",
    )
    bench.report.add("0 null", "  Redis CPU per message (INFO cpu)", cpu, versus)
    bench.report.figures["state_floor"] = asdict(floor)


# ---------------------------------------------------------------- 1 and 5: decide.lua alone


@dataclass(frozen=True)
class Ceiling:
    per_s: float  # decisions/s as redis-benchmark counts them
    server_us: float  # EVALSHA's usec_per_call as Redis counts it
    calls: int  # EVALSHA calls Redis counted
    cursor_moved: int  # one per new customer decided


def assign_command(bench: Bench) -> list[str]:
    """EVALSHA with the KEYS and ARGV the worker would send; customer and message id random."""
    bench.rb.script_load(bench.scripts.decide.script)
    message = Message("0-0", ACCOUNT, NUMBER, customer=RAND, message_id=RAND)
    assigner = Assigner(bench.scripts, DEDUP_WINDOW_S)
    [call] = assigner.calls([message], now_ms())
    return [str(part) for part in assigner.command(call)]


def redis_benchmark(bench: Bench, requests: int, command: Sequence[str]) -> float:
    """Requests per second of one redis-benchmark run (50 clients, pipelines of 16)."""
    binary = shutil.which("redis-benchmark")
    check(binary is not None, "redis-benchmark is not on PATH")
    argv = [str(binary), "-h", "127.0.0.1", "-p", str(bench.server.port)]
    argv += ["-c", str(CLIENTS), "-P", str(PIPELINE), "-n", str(requests)]
    argv += ["-r", str(RAND_RANGE), "--csv", *command]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
    output = done.stdout + done.stderr
    check(done.returncode == 0 and "Error" not in output, f"redis-benchmark failed: {output}")
    rows = [row for row in csv.reader(done.stdout.splitlines()) if row and row[0] != "test"]
    check(bool(rows), f"redis-benchmark printed no result: {output}")
    return float(rows[-1][1])


def decisions(bench: Bench, members: int, requests: int) -> Ceiling:
    """redis-benchmark on decide.lua; checks that the calls decided new customers."""
    fresh(bench, members)
    command = assign_command(bench)
    bench.rb.config_resetstat()
    per_s = redis_benchmark(bench, requests, command)
    stats = bench.rb.info("commandstats").get("cmdstat_evalsha", {})
    calls, failed = int(stats.get("calls", 0)), int(stats.get("failed_calls", 0))
    moved = int(bench.rb.get(keys.cursor(ACCOUNT, NUMBER)) or 0)
    check(calls >= requests and failed == 0, f"EVALSHA: {calls} calls, {failed} failed")
    # Random customers and message ids repeat about requests**2 / 4e9 times (no cursor move).
    check(abs(moved - calls) <= 10 + calls // 1000, f"cursor moved {moved} for {calls} calls")
    return Ceiling(per_s, float(stats["usec_per_call"]), calls, moved)


def part_ceiling(bench: Bench) -> None:
    count = bench.sizes.ceiling
    log(f"1 ceiling: redis-benchmark, decide.lua, 8 members, {count:,} new customers")
    result = decisions(bench, 8, count)
    bench.ceiling = result.per_s
    figure = f"decide.lua by redis-benchmark, 8 members, -c {CLIENTS} -P {PIPELINE}, {count:,} req"
    bench.report.add("1 ceiling", figure, f"{result.per_s:,.0f} decisions/s", "baseline")
    server = f"{result.server_us:.1f} µs"
    bench.report.add("1 ceiling", "  Redis time per EVALSHA (commandstats)", server)
    moved = f"{result.cursor_moved:,} / {result.calls:,}, none failed"
    bench.report.add("1 ceiling", "  check: cursor moves / EVALSHA calls", moved)
    bench.report.figures["ceiling"] = asdict(result)


# ---------------------------------------------------------------- 2: end to end


@dataclass(frozen=True)
class Drain:
    workers: int
    messages: int
    per_s: float  # messages / wall time from spawn until the last process exits
    wall_s: float
    busy_per_s: float  # messages / time from the first to the last decision (no start-up)
    rss_peak_mib: float
    worker_cpu_s: float  # all workers together
    redis_cpu_s: float
    machine_cpu_s: float  # every process on the machine, ours or not


def entry_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


def decision_span_s(client: Any) -> float:
    first = client.xrange(EVENTS, count=1)[0][0]
    last = client.xrevrange(EVENTS, count=1)[0][0]
    return max(entry_ms(last) - entry_ms(first), 1) / 1000


def verify_drained(bench: Bench, count: int) -> None:
    events, dead = bench.rb.xlen(EVENTS), bench.rb.xlen(DEAD)
    pending = bench.rb.xpending(INBOUND, GROUP)["pending"]
    check(events == count, f"{events:,} decisions for {count:,} messages")
    check(pending == 0 and dead == 0, f"{pending} pending, {dead} dead letters")


def drain(
    bench: Bench,
    workers: int,
    members: int = 8,
    available: int | None = None,
    count: int = 0,
    conversations: bool = False,
    timers: bool = False,
) -> Drain:
    """``count`` (default: the e2e size) messages on the stream, drained by burst workers;
    ``conversations``: with a capacity and a presence TTL on, neither ever reached, so every
    decision pays for their checks and changes nothing; ``timers``: with a reply timeout that
    does not fire during the run and the queue, so every decision starts a timer."""
    count = count or bench.sizes.e2e
    fresh(bench, members, available)
    if conversations:
        bench.rd.hset(keys.number(ACCOUNT, NUMBER), "capacity", count + 1)
        bench.rd.hset(keys.account_settings(ACCOUNT), "presence_ttl_s", CONVERSATION_TTL_S)
    if timers:
        settings = {"when_nobody": "queue", "reply_timeout_s": TIMERS_OFF_S}
        bench.rd.hset(keys.number(ACCOUNT, NUMBER), mapping=settings)
    push(bench, count, f"wamid.e2e{workers}")
    log(f"e2e: {count:,} messages on {INBOUND}, {members:,} members, {workers} x rota worker")
    redis_before, machine_before = redis_cpu_s(bench.rb), machine_busy_s()
    start = time.perf_counter()
    procs = spawn_workers(bench, workers, burst=True, tag=f"e2e{workers}")
    with ProcSampler([p.pid for p in procs]) as sampled:
        wait_all(bench, procs, timeout_s=600)
    wall = time.perf_counter() - start
    machine = machine_busy_s() - machine_before
    verify_drained(bench, count)
    busy = count / decision_span_s(bench.rb)
    redis = redis_cpu_s(bench.rb) - redis_before
    worker_cpu, rss_mib = sum(sampled.cpu_s.values()), sampled.peak_kib / 1024
    return Drain(workers, count, count / wall, wall, busy, rss_mib, worker_cpu, redis, machine)


def add_drain(bench: Bench, result: Drain, judged: bool) -> None:
    null = bench.null.per_s if bench.null else None
    ratio = result.per_s / null if null else None
    of_ceiling = f", {result.per_s / bench.ceiling:.2f}x ceiling" if bench.ceiling else ""
    of_floor = f", {result.per_s / bench.floor.per_s:.2f}x floor" if bench.floor else ""
    versus = (f"{ratio:.2f}x null" if ratio is not None else "n/a") + of_floor + of_ceiling
    plural = "s" if result.workers > 1 else ""
    figure = f"{result.workers} rota worker{plural} --burst, {result.messages:,} msgs"
    value = f"{result.per_s:,.0f} msg/s"
    if judged:
        ok = ratio is not None and ratio >= TARGET_E2E
        bench.report.judge("2 end to end", figure, value, versus, f"≥ {TARGET_E2E}x null", ok)
    else:
        bench.report.add("2 end to end", figure, value, versus)
    cpu = f"{result.wall_s:.1f} s; workers {result.worker_cpu_s:.1f} s, "
    cpu += f"Redis {result.redis_cpu_s:.1f} s, machine {result.machine_cpu_s:.1f} s"
    cpu += f" of {result.wall_s * (os.cpu_count() or 1):.0f}"
    bench.report.add("2 end to end", "  wall time (spawn to exit); CPU used in it", cpu)
    busy = f"{result.busy_per_s:,.0f} msg/s"
    bench.report.add("2 end to end", "  first to last decision (no start-up)", busy)
    add_redis_cpu(bench, result, judged)
    if ratio is not None:
        bench.report.ratios.append(f"Rota {result.workers} worker{plural} / null: {ratio:.2f}x")
    bench.report.figures[f"e2e_{result.workers}"] = asdict(result)


def add_redis_cpu(bench: Bench, result: Drain, judged: bool) -> None:
    per_message = result.redis_cpu_s * 1e6 / result.messages
    value, figure = f"{per_message:.1f} µs", "  Redis CPU per message (INFO cpu)"
    if bench.null is None:
        bench.report.add("2 end to end", figure, value)
        return
    ratio = per_message / bench.null.redis_cpu_us
    versus, target = f"{ratio:.2f}x null", f"≤ {TARGET_REDIS_CPU:g}x null"
    if bench.floor:
        versus += f", {per_message / bench.floor.redis_cpu_us:.2f}x floor"
    if judged:
        ok = ratio <= TARGET_REDIS_CPU
        bench.report.judge("2 end to end", figure, value, versus, target, ok)
        bench.report.ratios.append(f"Redis CPU per message, Rota / null: {ratio:.2f}x")
    else:
        bench.report.add("2 end to end", figure, value, versus)


def part_e2e(bench: Bench) -> None:
    one = drain(bench, 1)
    add_drain(bench, one, judged=False)
    two = drain(bench, WORKERS)
    rota_spread = spread(bench.rb, keys.owners(ACCOUNT, NUMBER), 8)
    add_drain(bench, two, judged=True)
    bench.rota2 = two.per_s
    bench.worker_rss_mib = max(one.rss_peak_mib, two.rss_peak_mib)
    rss = f"{bench.worker_rss_mib:.1f} MiB"
    bench.report.add("2 end to end", "worker RSS, peak (VmRSS)", rss)
    bench.report.add("2 end to end", "chats per user, 8 users (2 workers)", rota_spread.text())
    bench.report.figures["rota_spread"] = asdict(rota_spread)


# ---------------------------------------------------------------- 3: latency


@dataclass(frozen=True)
class Pacing:
    sent: int
    achieved_per_s: float
    largest_batch: int  # > 1 when the producer fell behind and caught up in one pipeline


def read_events(
    url: str, ready: MpEvent, stop: MpEvent, out: Connection, key: bytes = b"inbound_id"
) -> None:
    """Reader process: each new decision's ``key`` field -> monotonic ns when it was read
    (decisions from the newest entry on: earlier parts' are not this part's)."""
    client: Any = redis.Redis.from_url(url)
    seen: dict[bytes, int] = {}
    newest = client.xrevrange(EVENTS, count=1)
    last: bytes | str = newest[0][0] if newest else "0-0"
    ready.set()
    while True:
        reply = client.xread({EVENTS: last}, count=1000, block=50)
        now = time.monotonic_ns()
        if not reply:
            if stop.is_set():
                break
            continue
        for entry_id, fields in reply[0][1]:
            seen.setdefault(fields[key], now)
            last = entry_id
    out.send(seen)


def send_due(conn: Any, first: int, end: int, sent_at: dict[bytes, int]) -> None:
    """XADDs on a bare connection (redis-py's client layers would cost the producer more CPU
    than the workers under test spend), pipelined when the producer has fallen behind."""
    commands = []
    for i in range(first, end):
        args = [x for pair in inbound_fields(i, "wamid.lat").items() for x in pair]
        commands.append(("XADD", INBOUND, "*", *args))
    packed = conn.pack_commands(commands)
    started = time.monotonic_ns()
    conn.send_packed_command(packed)
    for _ in commands:
        sent_at[conn.read_response()] = started


def produce(conn: Any, per_s: int, seconds: float) -> tuple[dict[bytes, int], Pacing]:
    """XADDs at a steady pace; inbound id -> monotonic ns just before its XADD was sent."""
    total, interval_ns = int(per_s * seconds), 1e9 / per_s
    sent_at: dict[bytes, int] = {}
    largest, sent, start = 1, 0, time.monotonic_ns()
    while sent < total:
        now = time.monotonic_ns()
        due = min(total, int((now - start) / interval_ns) + 1)
        if due <= sent:
            time.sleep((start + sent * interval_ns - now) / 1e9)
            continue
        largest = max(largest, due - sent)
        send_due(conn, sent, due, sent_at)
        sent = due
    elapsed = (time.monotonic_ns() - start) / 1e9
    return sent_at, Pacing(total, total / elapsed, largest)


def wait_for(condition: Callable[[], bool], timeout_s: float, failure: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        check(time.monotonic() < deadline, failure)
        time.sleep(0.05)


def workers_reading(bench: Bench, procs: Sequence[Proc]) -> bool:
    for proc in procs:
        check(proc.poll() is None, f"exit {proc.returncode}: {described(bench, proc)}")
    # Redis 7.0 creates a consumer only when a read returns entries: look for blocked reads.
    readers = [c for c in bench.rb.client_list() if c.get("cmd") == "xreadgroup"]
    return len(readers) >= len(procs)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank."""
    return ordered[min(len(ordered) - 1, max(math.ceil(q * len(ordered)) - 1, 0))]


def bare_connection(bench: Bench) -> Any:
    factory: Any = redis.Connection
    conn = factory(host="127.0.0.1", port=bench.server.port)
    conn.connect()
    return conn


def measure_latency(bench: Bench) -> tuple[list[float], Pacing]:
    """Latencies in ms, in the order the messages were sent."""
    sizes = bench.sizes
    ctx = mp.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    results, sender = ctx.Pipe(duplex=False)
    reader = ctx.Process(target=read_events, args=(bench.server.url, ready, stop, sender))
    reader.daemon = True
    reader.start()
    try:
        check(ready.wait(10), "event reader did not start")
        sent_at, pacing = produce(bare_connection(bench), sizes.latency_rate, sizes.latency_s)
        wait_for(lambda: bench.rb.xlen(EVENTS) >= pacing.sent, 120, "decisions missing")
        stop.set()
        check(results.poll(30), "event reader sent nothing")
        seen: dict[bytes, int] = results.recv()
    finally:
        reader.join(5)
        if reader.is_alive():
            reader.kill()
    missing = [i for i in sent_at if i not in seen]
    check(not missing, f"{len(missing)} decisions never read, e.g. {missing[:3]}")
    return [(seen[i] - sent) / 1e6 for i, sent in sent_at.items()], pacing


def part_latency(bench: Bench) -> None:
    sizes = bench.sizes
    fresh(bench, 8)
    bench.rb.xgroup_create(INBOUND, GROUP, id="0", mkstream=True)
    procs = spawn_workers(bench, WORKERS, burst=False, tag="latency")
    wait_for(lambda: workers_reading(bench, procs), 30, "workers did not start reading")
    log(f"3 latency: {WORKERS} workers, {sizes.latency_rate:,} msg/s for {sizes.latency_s:g}s")
    redis_before, machine_before, started = redis_cpu_s(bench.rb), machine_busy_s(), time.time()
    with ProcSampler([p.pid for p in procs]) as sampled:
        latencies, pacing = measure_latency(bench)
    redis_used, machine = redis_cpu_s(bench.rb) - redis_before, machine_busy_s() - machine_before
    seconds = time.time() - started
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    wait_all(bench, procs, timeout_s=60)
    check(bench.rb.xpending(INBOUND, GROUP)["pending"] == 0, "entries left pending")
    add_latency(bench, latencies, pacing)
    cpu = f"workers {sum(sampled.cpu_s.values()):.1f} s, Redis {redis_used:.1f} s, "
    cpu += f"machine {machine:.1f} s of {seconds * (os.cpu_count() or 1):.0f}"
    bench.report.add("3 latency", f"  CPU used in those {seconds:.1f} s", cpu)


def add_latency(bench: Bench, in_order: Sequence[float], pacing: Pacing) -> None:
    ordered = sorted(in_order)
    p50, p99, p999 = (percentile(ordered, q) for q in (0.5, 0.99, 0.999))
    figure = f"XADD to decision read, {WORKERS} workers, {pacing.achieved_per_s:,.0f} msg/s"
    figure += f" for {bench.sizes.latency_s:g}s ({pacing.sent:,} msgs)"
    value = f"p50 {p50:.2f} / p99 {p99:.2f} / p99.9 {p999:.2f} ms"
    ok = p99 <= TARGET_P99_MS
    bench.report.judge("3 latency", figure, value, "", f"p99 ≤ {TARGET_P99_MS:g} ms", ok)
    tenth = max(len(in_order) // 10, 1)
    first, last = statistics.median(in_order[:tenth]), statistics.median(in_order[-tenth:])
    trend = f"{first:.2f} → {last:.2f} ms"
    if last > 2 * first + 1:
        trend += " (growing: the workers fall behind)"
    bench.report.add("3 latency", "  p50 of the first vs the last tenth sent", trend)
    worst = f"{ordered[-1]:.1f} ms / {pacing.largest_batch}"
    bench.report.add("3 latency", "  max / producer's largest catch-up batch", worst)
    bench.report.figures["latency_ms"] = {
        "p50": p50, "p99": p99, "p99_9": p999, "max": ordered[-1],
        "p50_first_tenth": first, "p50_last_tenth": last, **asdict(pacing),
    }  # fmt: skip


# ---------------------------------------------------------------- 4a: one rq job per message

# The job as an app would write it, in a small module of its own (written to the run's temp dir
# and put on the rq workers' path): the forking worker imports it anew in every job's child, so
# it must not drag this harness along.
RQ_MODULE = "rota_bench_job"
RQ_JOB_SOURCE = '''"""One rq job per inbound message: decided by decide.lua (through Assigner)."""

import time

from rq import get_current_job

from worker.assign import Assigner, Decision
from worker.connection import transport
from worker.scripts import Scripts
from worker.messages import Message
from worker.record import Record


def decide(account, number, customer, message_id, window_s, events_stream):
    job = get_current_job()
    client = job.connection
    message = Message(job.id, account, number, customer, message_id)
    now = time.time_ns() // 1_000_000
    outcome = Assigner(Scripts(client), window_s).decide(transport(client), [message], now)[0]
    if not isinstance(outcome, Decision):
        raise RuntimeError(f"not decided: {outcome!r}")
    client.xadd(events_stream, Record.of(message, outcome).to_fields())
    return outcome.user
'''


def enqueue_jobs(bench: Bench, count: int) -> Any:
    from rq import Queue

    queue = Queue(RQ_QUEUE, connection=bench.rb)
    for first in range(0, count, 1_000):
        batch = []
        for i in range(first, min(first + 1_000, count)):
            fields = inbound_fields(i, "wamid.rq")
            args = (ACCOUNT, NUMBER, fields["from"], fields["message_id"], DEDUP_WINDOW_S, EVENTS)
            batch.append(Queue.prepare_data(f"{RQ_MODULE}.decide", args=args))
        queue.enqueue_many(batch)
    return queue


def rq_peer(bench: Bench) -> float:
    count = bench.sizes.rq
    fresh(bench, 8)
    queue = enqueue_jobs(bench, count)
    log(f"4a peer: {count:,} rq jobs, {WORKERS} x rq worker --burst (forking)")
    argv = [str(Path(sys.executable).with_name("rq")), "worker", "--burst"]
    argv += ["--url", bench.server.url, RQ_QUEUE]
    env = rq_env(bench)
    start = time.perf_counter()
    procs = [spawn(bench, argv, f"rq-{i}", env) for i in range(WORKERS)]
    wait_all(bench, procs, timeout_s=900)
    wall = time.perf_counter() - start
    failed = queue.failed_job_registry.count
    check(failed == 0 and queue.count == 0, f"rq: {failed} failed, {queue.count} left")
    check(bench.rb.xlen(EVENTS) == count, f"rq: {bench.rb.xlen(EVENTS)} decisions for {count}")
    return count / wall


# ---------------------------------------------------------------- 4b: client-side round robin


def chatwoot_assign(client: Any, customer: str) -> None:
    """What Chatwoot's round robin does per conversation: read the number's list, ask who is
    online, take the first, move them to the back, record the owner. Not atomic."""
    queue = client.lrange(PEER_LIST, 0, -1)
    statuses = client.hmget(keys.presence(ACCOUNT), queue)
    user = next((u for u, s in zip(queue, statuses, strict=True) if s == b"available"), None)
    if user is None:
        return
    pipe = client.pipeline(transaction=False)
    pipe.lrem(PEER_LIST, 0, user)
    pipe.rpush(PEER_LIST, user)
    pipe.execute()
    client.hset(PEER_OWNERS, customer, user)


def peer_process(url: str, customers: range, barrier: Barrier) -> None:
    client: Any = redis.Redis.from_url(url)
    client.ping()
    barrier.wait()
    for customer in customers:
        chatwoot_assign(client, str(customer))


def chatwoot_peer(bench: Bench) -> tuple[float, Spread]:
    count = bench.sizes.peer
    fresh(bench, 8)
    bench.rb.rpush(PEER_LIST, *users(8))
    log(f"4b peer: client-side round robin, {WORKERS} processes, {count:,} messages")
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(WORKERS + 1)
    bounds = [CUSTOMER_BASE + count * k // WORKERS for k in range(WORKERS + 1)]
    procs = [
        ctx.Process(target=peer_process, args=(bench.server.url, range(a, b), barrier), daemon=True)
        for a, b in itertools.pairwise(bounds)
    ]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=30)
    start = time.perf_counter()
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - start
    check(all(p.exitcode == 0 for p in procs), "a client-side round robin process failed")
    check(bench.rb.hlen(PEER_OWNERS) == count, "client-side round robin missed customers")
    return count / wall, spread(bench.rb, PEER_OWNERS, 8)


def versus_rota(bench: Bench, peer_per_s: float, name: str) -> tuple[str, float | None]:
    if bench.rota2 is None:
        return "n/a", None
    ratio = bench.rota2 / peer_per_s
    bench.report.ratios.append(f"Rota {WORKERS} workers / {name}: {ratio:,.1f}x")
    floor = f", state floor {bench.floor.per_s / peer_per_s:,.1f}x" if bench.floor else ""
    return f"Rota {ratio:,.1f}x{floor}", ratio


def part_peers(bench: Bench) -> None:
    report = bench.report
    rq_per_s = rq_peer(bench)
    versus, _ = versus_rota(bench, rq_per_s, "one rq job per message")
    figure = f"(a) one rq job per message, {WORKERS} x rq worker --burst, {bench.sizes.rq:,} jobs"
    report.add("4 peers", figure, f"{rq_per_s:,.1f} msg/s", versus)
    cw_per_s, cw_spread = chatwoot_peer(bench)
    versus, ratio = versus_rota(bench, cw_per_s, "client-side round robin")
    figure = f"(b) client-side round robin, {WORKERS} processes, {bench.sizes.peer:,} msgs"
    ok = ratio is not None and ratio >= TARGET_PEER
    value, target = f"{cw_per_s:,.0f} msg/s", f"Rota ≥ {TARGET_PEER:g}x"
    report.judge("4 peers", figure, value, versus, target, ok)
    report.add("4 peers", "  (b) chats per user, 8 users (Rota's: part 2)", cw_spread.text())
    report.figures["peers"] = {
        "rq_per_s": rq_per_s, "client_rr_per_s": cw_per_s, "client_rr_spread": asdict(cw_spread),
    }  # fmt: skip


# ---------------------------------------------------------------- 5: scale


@dataclass(frozen=True)
class Memory:
    customers: int
    bytes_per_customer: float  # everything the decisions added
    dedup_bytes_per_customer: float  # the rota:{A}:dedup:* hashes, which expire
    open_bytes_per_customer: float  # the open conversations, until the CRM closes them
    owner_bytes_per_customer: float  # what stays


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def memory(bench: Bench) -> Memory:
    count = bench.sizes.memory
    fresh(bench, 8)
    command = assign_command(bench)
    log(f"5 scale: Redis memory after {count:,} new customers")
    before = used_memory(bench.rb)
    redis_benchmark(bench, count, command)
    after = used_memory(bench.rb)
    customers = int(bench.rb.hlen(keys.owners(ACCOUNT, NUMBER)))
    check(customers >= count * 0.999, f"{customers:,} owners after {count:,} new customers")
    dedup = list(bench.rb.scan_iter(match=f"{keys.account_prefix(ACCOUNT)}:dedup:*"))
    check(bool(dedup), "no de-duplication keys found")
    bench.rb.delete(*dedup)
    without = used_memory(bench.rb)
    bench.rb.delete(keys.open_conversations(ACCOUNT, NUMBER), keys.open_counts(ACCOUNT, NUMBER))
    closed = used_memory(bench.rb)
    added, dedup_part, open_part = after - before, after - without, without - closed
    parts = (dedup_part / customers, open_part / customers, (closed - before) / customers)
    return Memory(customers, added / customers, *parts)


def part_scale(bench: Bench) -> None:
    count, report = bench.sizes.scale, bench.report
    log(f"5 scale: redis-benchmark, 10 then 1,000 members, {count:,} new customers each")
    few, many = decisions(bench, 10, count), decisions(bench, 1_000, count)
    us_few, us_many = 1e6 / few.per_s, 1e6 / many.per_s
    ratio = us_many / us_few
    figure = f"decision, 10 members (redis-benchmark as in 1, {count:,} req)"
    report.add("5 scale", figure, f"{us_few:.1f} µs ({few.server_us:.1f} in Redis)", "baseline")
    value = f"{us_many:.1f} µs ({many.server_us:.1f} in Redis)"
    ok = ratio <= TARGET_SCALE
    goal = f"≤ {TARGET_SCALE:g}x"
    report.judge("5 scale", "decision, 1,000 members", value, f"{ratio:.2f}x", goal, ok)
    report.ratios.append(f"1,000 members / 10 members, time per decision: {ratio:.2f}x")
    report.figures["scale"] = {"members_10": asdict(few), "members_1000": asdict(many)}
    add_memory(bench, memory(bench))


def add_memory(bench: Bench, mem: Memory) -> None:
    report, goal = bench.report, f"≤ {TARGET_BYTES:g} B"
    figure = f"Redis per known customer, {mem.customers:,} decided (used_memory)"
    total, ok = f"{mem.bytes_per_customer:.0f} B", mem.bytes_per_customer <= TARGET_BYTES
    report.judge("5 scale", figure, total, "", goal, ok)
    dedup = f"{mem.dedup_bytes_per_customer:.0f} B"
    report.add("5 scale", "  of which de-duplication records (expire after the window)", dedup)
    opened = f"{mem.open_bytes_per_customer:.0f} B"
    report.add("5 scale", "  of which open conversations (until the CRM closes them)", opened)
    owners, ok = (
        f"{mem.owner_bytes_per_customer:.0f} B",
        mem.owner_bytes_per_customer <= TARGET_BYTES,
    )
    target = f"{goal} once expired and closed"
    report.judge("5 scale", "  of which owners (stay)", owners, "", target, ok)
    rss = f"{bench.worker_rss_mib:.1f} MiB" if bench.worker_rss_mib is not None else "n/a"
    report.add("5 scale", "worker RSS, peak (part 2)", rss)
    report.figures["memory"] = asdict(mem)


# ---------------------------------------------------------------- 6: the night shift

NIGHT_MEMBERS = 1_000


@dataclass(frozen=True)
class Single:
    wall_us: float  # one message decided alone: the worker's call, round trip included
    redis_us: float  # Redis time per message (commandstats: the decision script's calls)


def one_at_a_time(bench: Bench, members: int, available: int | None) -> Single:
    """Messages decided one per call, as an idle worker decides them."""
    fresh(bench, members, available)
    assigner, count = Assigner(bench.scripts, DEDUP_WINDOW_S), bench.sizes.single
    messages = [
        Message(f"0-{i}", ACCOUNT, NUMBER, str(CUSTOMER_BASE + i), f"wamid.one.{i}")
        for i in range(count + 1)
    ]
    link = transport(bench.rb)
    assigner.decide(link, messages[:1], now_ms())  # compiles the rotation
    bench.rb.config_resetstat()
    start = time.perf_counter()
    for message in messages[1:]:
        [outcome] = assigner.decide(link, [message], now_ms())
        check(isinstance(outcome, Decision), f"not decided: {outcome!r}")
    wall = time.perf_counter() - start
    # A script's time includes the commands it calls (counted under their own names too).
    stats = bench.rb.info("commandstats").get("cmdstat_evalsha", {})
    return Single(wall * 1e6 / count, int(stats.get("usec", 0)) / count)


def part_night(bench: Bench) -> None:
    count, report = bench.sizes.night, bench.report
    log(f"6 night: {NIGHT_MEMBERS:,} members, 1 available, vs 8 available, {count:,} msgs")
    day = drain(bench, WORKERS, 8, None, count)
    night = drain(bench, WORKERS, NIGHT_MEMBERS, 1, count)
    owners = set(bench.rb.hvals(keys.owners(ACCOUNT, NUMBER)))
    check(owners == {users(NIGHT_MEMBERS)[-1].encode()}, f"night shift owners: {owners}")
    day_us, night_us = 1e6 / day.busy_per_s, 1e6 / night.busy_per_s
    ratio = night_us / day_us
    figure = f"time per message, 8 members all available, {WORKERS} workers, {count:,} msgs"
    report.add("6 night", figure, f"{day_us:.1f} µs", "baseline")
    figure = f"time per message, {NIGHT_MEMBERS:,} members, 1 available"
    goal = f"≤ {TARGET_NIGHT:g}x"
    report.judge(
        "6 night", figure, f"{night_us:.1f} µs", f"{ratio:.2f}x", goal, ratio <= TARGET_NIGHT
    )
    report.ratios.append(f"night shift / day, time per message at full load: {ratio:.2f}x")
    add_redis_cpu_pair(bench, day, night)
    alone_day, alone_night = one_at_a_time(bench, 8, None), one_at_a_time(bench, NIGHT_MEMBERS, 1)
    for name, alone in (
        ("8 available", alone_day),
        (f"{NIGHT_MEMBERS:,}, 1 available", alone_night),
    ):
        value = f"{alone.wall_us:.0f} µs ({alone.redis_us:.1f} in Redis)"
        report.add("6 night", f"  one message at a time (batch of 1), {name}", value)
    report.figures["night"] = {
        "day": asdict(day), "night": asdict(night),
        "alone_day": asdict(alone_day), "alone_night": asdict(alone_night),
    }  # fmt: skip


def add_redis_cpu_pair(bench: Bench, day: Drain, night: Drain) -> None:
    day_us, night_us = (d.redis_cpu_s * 1e6 / d.messages for d in (day, night))
    value = f"{day_us:.1f} → {night_us:.1f} µs"
    ratio = f"{night_us / day_us:.2f}x"
    bench.report.add("6 night", "  Redis CPU per message, day → night", value, ratio)


# ---------------------------------------------------------------- 7: conversations

CONVERSATION_TTL_S = 3_600  # every member was heard as the run set presence: all stay heard


def part_conversations(bench: Bench) -> None:
    count, report = bench.sizes.night, bench.report
    log(f"7 conversations: capacity and presence TTL on vs off, {count:,} msgs")
    plain = drain(bench, WORKERS, 8, None, count)
    checked = drain(bench, WORKERS, 8, None, count, conversations=True)
    opened = bench.rd.hlen(keys.open_conversations(ACCOUNT, NUMBER))
    check(opened == count, f"{opened:,} conversations open after {count:,} new customers")
    on = "capacity and presence_ttl_s on (never reached)"
    judge_settings(report, "7 conversations", plain, checked, on, TARGET_CONVERSATIONS)
    report.ratios[-1] = f"capacity and TTL on / off, time per message: {report.ratios[-1]}"
    report.figures["conversations"] = {"plain": asdict(plain), "checked": asdict(checked)}


def judge_settings(
    report: Report, part: str, plain: Drain, on: Drain, what: str, target: float
) -> float:
    """The time per message with settings on against off, judged; the off one, in µs."""
    plain_us, on_us = 1e6 / plain.busy_per_s, 1e6 / on.busy_per_s
    ratio = on_us / plain_us
    figure = (
        f"time per message, 8 members, {WORKERS} workers, {plain.messages:,} msgs, settings off"
    )
    report.add(part, figure, f"{plain_us:.1f} µs", "baseline")
    goal, ok = f"≤ {target:g}x", ratio <= target
    report.judge(part, f"  {what}", f"{on_us:.1f} µs", f"{ratio:.2f}x", goal, ok)
    report.ratios.append(f"{ratio:.2f}x")
    return plain_us


# ---------------------------------------------------------------- 8: timers

FIRED_TIMEOUT_S = 600  # the timers the sweep fires start new ones, which must not fire
TIMERS_OFF_S = 3_600  # a reply timeout far past the run: the timers are written, none fires


@dataclass(frozen=True)
class Sweep:
    timers: int
    wall_s: float  # spawn to exit
    busy_s: float  # first to last move published
    redis_cpu_s: float


def fire_due_timers(bench: Bench, count: int) -> Sweep:
    """``count`` open conversations whose reply timers are all due, fired by one burst worker
    (which sweeps until nothing due is left): each moves to the next user, with a new timer."""
    drain(bench, WORKERS, 8, None, count)
    bench.rd.hset(keys.number(ACCOUNT, NUMBER), "reply_timeout_s", FIRED_TIMEOUT_S)
    now = now_ms()
    pipe = bench.rb.pipeline(transaction=False)
    for i in range(count):
        pipe.zadd(keys.timers(ACCOUNT), {keys.timer(NUMBER, str(CUSTOMER_BASE + i)): now - 1})
    pipe.sadd(keys.swept_accounts(), ACCOUNT)
    pipe.execute()
    last_decision = bench.rb.xrevrange(EVENTS, count=1)[0][0]
    redis_before, start = redis_cpu_s(bench.rb), time.perf_counter()
    wait_all(bench, spawn_workers(bench, 1, burst=True, tag="sweep"), timeout_s=600)
    wall, redis = time.perf_counter() - start, redis_cpu_s(bench.rb) - redis_before
    moves = bench.rb.xrange(EVENTS, min=b"(" + last_decision)
    timeouts = sum(1 for _, fields in moves if fields[b"reason"] == b"reply_timeout")
    check(timeouts == count, f"{timeouts:,} reply timeouts published for {count:,} due timers")
    busy = max(entry_ms(moves[-1][0]) - entry_ms(moves[0][0]), 1) / 1000
    return Sweep(count, wall, busy, redis)


def part_timers(bench: Bench) -> None:
    count, report = bench.sizes.night, bench.report
    log(f"8 timers: reply timers and the queue on vs off, {count:,} msgs")
    plain = drain(bench, WORKERS, 8, None, count)
    timed = drain(bench, WORKERS, 8, None, count, timers=True)
    started = bench.rd.zcard(keys.timers(ACCOUNT))
    check(started == count, f"{started:,} timers after {count:,} new conversations")
    on = "reply_timeout_s and when_nobody = queue on (a timer per decision)"
    plain_us = judge_settings(report, "8 timers", plain, timed, on, TARGET_TIMERS)
    report.ratios[-1] = f"reply timers and queue on / off, time per message: {report.ratios[-1]}"
    fired = fire_due_timers(bench, count)
    busy_us, redis_us = fired.busy_s * 1e6 / count, fired.redis_cpu_s * 1e6 / count
    figure = f"sweep: {count:,} due reply timers fired by 1 worker, first to last move"
    report.add("8 timers", figure, f"{busy_us:.1f} µs per timer", f"{busy_us / plain_us:.2f}x")
    wall = f"{fired.wall_s:.1f} s"
    report.add("8 timers", "  spawn to exit of that burst worker", wall)
    figure = "  Redis CPU per fired timer (vs per plain decision)"
    per_message = plain.redis_cpu_s * 1e6 / count
    report.add("8 timers", figure, f"{redis_us:.1f} µs", f"{redis_us / per_message:.2f}x")
    report.figures["timers"] = {
        "plain": asdict(plain),
        "timed": asdict(timed),
        "fired": asdict(fired),
    }


# ---------------------------------------------------------------- 9: webhook

WEBHOOK_RATE = 1_000  # deliveries/s
WEBHOOK_SECRET = "bench-app-secret"
PHONE_NUMBER_ID = "106540352242922"
WEBHOOK_CONNECTIONS = 64  # the client's pool: Meta too keeps several connections open
WEBHOOK_WARMUP_S = 1.0  # sent at the same pace first, not measured: connections, first calls
SERVE_READY = "Application startup complete"


def webhook_body(i: int, tag: str) -> bytes:
    """A delivery of one text message, as Meta sends it, from a new customer."""
    customer = str(CUSTOMER_BASE + i)
    message = {
        "from": customer,
        "id": f"{tag}.{i}",
        "timestamp": "1749416383",
        "type": "text",
        "text": {"body": "Does it come in another color?"},
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": NUMBER, "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": customer}],
        "messages": [message],
    }
    entry = {"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}
    return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()


@dataclass(frozen=True)
class Sent:
    wamid: str
    due_ns: int  # monotonic: when the steady pace has it go
    sent_ns: int  # when the client began to send it (later than due when the client lagged)
    answered_ns: int
    status: int


def webhook_client(
    port: int, bodies: list[tuple[str, bytes, str]], warmup: int, out: Connection
) -> None:
    """The loopback client's process: WEBHOOK_CONNECTIONS threads, each with one keep-alive
    connection (http.client), sending each body at its due time on a steady pace, as Meta
    keeps several connections open; the first ``warmup`` bodies are not measured. (httpx's
    AsyncClient spent more CPU per request than the server did, and so fell behind the pace on
    2 cores.)"""
    import http.client

    done: list[Sent] = []
    lock, start = threading.Lock(), time.monotonic_ns() + 200_000_000
    queue = iter(enumerate(bodies))
    interval_ns = 1e9 / WEBHOOK_RATE

    def send_due() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i, (wamid, body, signed) = next(queue, (-1, ("", b"", "")))
            if i < 0:
                connection.close()
                return
            due = start + int(i * interval_ns)
            wait_s = (due - time.monotonic_ns()) / 1e9
            if wait_s > 0:
                time.sleep(wait_s)
            sent = time.monotonic_ns()
            headers = {"X-Hub-Signature-256": signed, "Content-Type": "application/json"}
            try:
                connection.request("POST", "/whatsapp", body=body, headers=headers)
                answer = connection.getresponse()
                answer.read()
                status = answer.status
            except OSError:
                connection.close()
                status = 0
            answered = time.monotonic_ns()
            if i >= warmup:
                with lock:
                    done.append(Sent(wamid, due, sent, answered, status))

    threads = [threading.Thread(target=send_due) for _ in range(WEBHOOK_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.send(sorted(done, key=lambda s: s.due_ns))


def spawn_serve(bench: Bench, count: int, port: int) -> list[Proc]:
    env = worker_env(bench)
    env.update(
        ROTA_HTTP_PORT=str(port),
        ROTA_WHATSAPP_APP_SECRET=WEBHOOK_SECRET,
        ROTA_LOG_LEVEL="info",  # for the line that says it is up; nothing per request
        ROTA_LOG_FORMAT="json",
    )
    argv = [sys.executable, "-m", "worker", "serve"]
    procs = [spawn(bench, argv, f"serve{count}-{i}", env) for i in range(count)]

    def up() -> bool:
        for proc in procs:
            check(proc.poll() is None, f"exit {proc.returncode}: {described(bench, proc)}")
        return all(SERVE_READY in bench.logs[p.pid].read_text(errors="replace") for p in procs)

    wait_for(up, 60, "rota serve did not start")
    return procs


@dataclass(frozen=True)
class Webhook:
    serve: int
    sent: int
    achieved_per_s: float
    to_200_ms: list[float]  # in the order sent
    to_decision_ms: list[float]
    lag_ms: list[float]  # the client's, due to sent, sorted
    cpu: str


def signed_bodies(customers: range, tag: str) -> list[tuple[str, bytes, str]]:
    """(wamid, body, X-Hub-Signature-256) of each delivery, made before the clock starts."""
    made = []
    for i in customers:
        body = webhook_body(i, tag)
        digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        made.append((f"{tag}.{i}", body, f"sha256={digest}"))
    return made


def cpu_now(pids: Sequence[int]) -> dict[int, float]:
    return {pid: sample[1] for pid in pids if (sample := proc_sample(pid)) is not None}


def measure_webhook(bench: Bench, serve_count: int, offset: int, workers: list[Proc]) -> Webhook:
    count = int(WEBHOOK_RATE * bench.sizes.webhook_s)
    warmup = int(WEBHOOK_RATE * WEBHOOK_WARMUP_S)
    bodies = signed_bodies(range(offset, offset + warmup + count), f"wamid.web{serve_count}")
    port = free_port()
    serving = spawn_serve(bench, serve_count, port)
    log(f"9 webhook: {serve_count} x rota serve, {WEBHOOK_RATE:,}/s for {bench.sizes.webhook_s:g}s")
    ctx = mp.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    decisions_in, decisions_out = ctx.Pipe(duplex=False)
    sent_in, sent_out = ctx.Pipe(duplex=False)
    reader_args = (bench.server.url, ready, stop, decisions_out, b"message_id")
    reader = ctx.Process(target=read_events, args=reader_args)
    client = ctx.Process(target=webhook_client, args=(port, bodies, warmup, sent_out))
    before = bench.rb.xlen(EVENTS)
    reader.start()
    try:
        check(ready.wait(10), "decision reader did not start")
        redis_before, machine_before, started = redis_cpu_s(bench.rb), machine_busy_s(), time.time()
        serve_pids, worker_pids = [p.pid for p in serving], [p.pid for p in workers]
        cpu_before = cpu_now([*serve_pids, *worker_pids])
        with ProcSampler([*serve_pids, *worker_pids]) as sampled:
            client.start()
            check(sent_in.poll(bench.sizes.webhook_s * 10 + 60), "the webhook client hung")
            sent: list[Sent] = sent_in.recv()
            client.join(10)
        seconds = time.time() - started
        redis_used = redis_cpu_s(bench.rb) - redis_before
        machine = machine_busy_s() - machine_before
        wanted = before + warmup + count
        wait_for(lambda: bench.rb.xlen(EVENTS) >= wanted, 120, "decisions missing")
        stop.set()
        check(decisions_in.poll(30), "decision reader sent nothing")
        seen: dict[bytes, int] = decisions_in.recv()
    finally:
        for helper in (reader, client):
            helper.join(5)
            if helper.is_alive():
                helper.kill()
    refused = Counter(s.status for s in sent if s.status != 200)
    check(not refused, f"deliveries not answered 200: {dict(refused)}")
    missing = [s.wamid for s in sent if s.wamid.encode() not in seen]
    check(not missing, f"{len(missing)} decisions never read, e.g. {missing[:3]}")
    for proc in serving:
        proc.send_signal(signal.SIGTERM)
    wait_all(bench, serving, timeout_s=60)  # drained, exit 0
    span_s = (sent[-1].sent_ns - sent[0].sent_ns) / 1e9
    used = {pid: sampled.cpu_s[pid] - cpu_before.get(pid, 0.0) for pid in sampled.cpu_s}
    cpu = f"serve {sum(used[p] for p in serve_pids):.1f} s, "
    cpu += f"workers {sum(used[p] for p in worker_pids):.1f} s, Redis {redis_used:.1f} s, "
    cpu += f"machine {machine:.1f} s of {seconds * (os.cpu_count() or 1):.0f}"
    return Webhook(
        serve_count,
        len(sent),
        (len(sent) - 1) / span_s if span_s else 0.0,
        [(s.answered_ns - s.sent_ns) / 1e6 for s in sent],
        [(seen[s.wamid.encode()] - s.sent_ns) / 1e6 for s in sent],
        sorted((s.sent_ns - s.due_ns) / 1e6 for s in sent),
        cpu,
    )


def add_webhook(bench: Bench, result: Webhook) -> None:
    report, part = bench.report, "9 webhook"
    to_200, to_decision = sorted(result.to_200_ms), sorted(result.to_decision_ms)
    p50, p99, p999 = (percentile(to_200, q) for q in (0.5, 0.99, 0.999))
    processes = "1 rota serve" if result.serve == 1 else f"{result.serve} rota serve processes"
    figure = f"POST /whatsapp to its 200, {processes}, {WORKERS} workers, "
    figure += f"{result.achieved_per_s:,.0f} deliveries/s ({result.sent:,})"
    value = f"p50 {p50:.2f} / p99 {p99:.2f} / p99.9 {p999:.2f} ms"
    goal, ok = f"p99 ≤ {TARGET_WEBHOOK_P99_MS:g} ms", p99 <= TARGET_WEBHOOK_P99_MS
    report.judge(part, figure, value, "", goal, ok)
    d50, d99 = (percentile(to_decision, q) for q in (0.5, 0.99))
    report.add(
        part, "  POST to its decision read on rota:assignments", f"p50 {d50:.2f} / p99 {d99:.2f} ms"
    )
    lag = f"p99 {percentile(result.lag_ms, 0.99):.2f} / worst {result.lag_ms[-1]:.1f} ms"
    report.add(part, "  the client's lag behind the steady pace", lag)
    report.add(part, f"  CPU used (worst 200: {to_200[-1]:.1f} ms)", result.cpu)


def part_webhook(bench: Bench) -> None:
    fresh(bench, 8)
    admin.set_number(bench.rd, ACCOUNT, NUMBER, whatsapp_phone_number_id=PHONE_NUMBER_ID)
    bench.rb.xgroup_create(INBOUND, GROUP, id="0", mkstream=True)
    workers = spawn_workers(bench, WORKERS, burst=False, tag="webhook")
    wait_for(lambda: workers_reading(bench, workers), 30, "workers did not start reading")
    results = {}
    for serve_count in (1, 2):
        offset = (serve_count - 1) * int(WEBHOOK_RATE * (bench.sizes.webhook_s + WEBHOOK_WARMUP_S))
        result = measure_webhook(bench, serve_count, offset, workers)
        add_webhook(bench, result)
        results[serve_count] = result
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    wait_all(bench, workers, timeout_s=60)
    check(bench.rb.xpending(INBOUND, GROUP)["pending"] == 0, "entries left pending")
    owners = bench.rd.hget(keys.owners(ACCOUNT, NUMBER), str(CUSTOMER_BASE))
    check(owners is not None, "the first customer has no owner")
    bench.report.figures["webhook"] = {
        n: {
            "sent": r.sent,
            "per_s": round(r.achieved_per_s),
            "to_200_ms": {q: percentile(sorted(r.to_200_ms), q) for q in (0.5, 0.99, 0.999)},
            "to_decision_ms": {q: percentile(sorted(r.to_decision_ms), q) for q in (0.5, 0.99)},
        }
        for n, r in results.items()
    }


# ---------------------------------------------------------------- running and printing

PARTS: dict[str, Callable[[Bench], None]] = {
    "0": part_null, "1": part_ceiling, "2": part_e2e, "3": part_latency, "4": part_peers,
    "5": part_scale, "6": part_night, "7": part_conversations, "8": part_timers,
    "9": part_webhook,
}  # fmt: skip


def selected(only: str | None) -> list[str]:
    if only is None:
        return list(PARTS)
    key = next(k for k, name in PART_NAMES.items() if only in (k, name))
    needed = NEEDS.get(key, ())
    if needed:
        log(f"part {key} is measured against part(s) {', '.join(needed)}: running those too")
    return [*needed, key]


def start(server: RedisServer) -> None:
    try:
        server.start()
    except RuntimeError as error:
        raise BenchError(str(error)) from error


@contextlib.contextmanager
def session(sizes: Sizes, report: Report) -> Iterator[Bench]:
    """A redis-server of our own, stopped (with every child) however the run ends."""
    with tempfile.TemporaryDirectory(prefix="rota-bench-") as work:
        server = RedisServer(Path(work) / "redis", "--appendonly", "no", "--save", "")
        check(server.port != 6379, "refusing port 6379")
        bench = Bench(server, Path(work), sizes, server.client(), server.client(True), report)
        try:
            start(server)
            version = bench.rb.info("server")["redis_version"]
            log(f"redis-server {version} on port {server.port}; load average {load()}")
            report.figures["redis_version"] = version
            bench.scripts = Scripts(bench.rb)
            yield bench
        finally:
            stop_children(bench)
            server.stop()
            log("redis-server stopped")


def run(parts: Sequence[str], sizes: Sizes, report: Report) -> None:
    seconds = report.figures.setdefault("part_seconds", {})
    with session(sizes, report) as bench:
        for key in parts:
            started = time.monotonic()
            PARTS[key](bench)
            seconds[PART_NAMES[key]] = round(time.monotonic() - started, 1)


def render(report: Report, title: str, footer: str) -> str:
    lines = [f"## {title}", "", "| part | figure | value | vs baseline | target | result |"]
    lines.append("|---|---|--:|--:|---|---|")
    for row in report.rows:
        result = "" if row.ok is None else ("**PASS**" if row.ok else "**MISS**")
        cells = (row.part, row.figure, row.value, row.versus, row.target, result)
        lines.append("| " + " | ".join(cells) + " |")
    if report.ratios:
        lines += ["", "Ratios (each against a baseline measured in this run):"]
        lines += [f"- {ratio}" for ratio in report.ratios]
    return "\n".join([*lines, "", footer])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    names = [*PART_NAMES, *PART_NAMES.values()]
    parser.add_argument("--only", metavar="PART", choices=names, help=f"one of {', '.join(names)}")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures here")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also: end-to-end throughput on a 3-master Redis Cluster next to one server",
    )
    return parser.parse_args(argv)


def cluster_table(quick: bool, report: Report) -> str:
    """tests/cluster_bench: one backlog on one server (one stream, then partitions) and on a
    3-master cluster, each drained by 2 burst workers."""
    from tests import cluster_bench

    log("cluster: single server vs 3-master cluster, 2 workers each")
    results = cluster_bench.compare(messages=5_000 if quick else 50_000, workers=2)
    report.figures["cluster"] = [
        {"topology": r.topology, "partitions": r.partitions, "msg_per_s": round(r.per_s)}
        for r in results
    ]
    rows = "\n".join(result.row() for result in results)
    return f"## Redis Cluster\n\n{cluster_bench.HEADER}\n{rows}\n"


def on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parts, sizes, report = selected(args.only), QUICK if args.quick else FULL, Report()
    signal.signal(signal.SIGTERM, on_sigterm)
    load_before, digest, code = load(), code_digest(), 0
    try:
        run(parts, sizes, report)
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    except BenchError as error:
        log(f"check failed: {error}")
        code = 1
    runtime = time.monotonic() - _STARTED
    kind = "quick" if args.quick else "full"
    title = f"Rota benchmark: {kind} run, {os.cpu_count()} cores, {runtime:.0f} s"
    footer = f"Load average before / after: {load_before} / {load()} (the cores are shared)."
    if code_digest() != digest:
        footer += "\n**lua/ or worker/ changed during the run: the figures mix two versions.**"
        log("lua/ or worker/ changed during the run: the figures mix two versions")
    report.figures["code_digest"] = digest
    report.figures.update(runtime_s=round(runtime, 1), quick=args.quick, parts=parts, exit=code)
    report.figures["sizes"] = asdict(sizes)
    report.figures["targets"] = [asdict(row) for row in report.rows if row.ok is not None]
    print(render(report, title, footer))
    if args.cluster and code == 0:
        print("\n" + cluster_table(args.quick, report))
    if args.json:
        args.json.write_text(json.dumps(report.figures, indent=2) + "\n")
    log(f"done in {runtime:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
