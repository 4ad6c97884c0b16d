"""Prometheus metrics of one worker process, served over HTTP only when ROTA_METRICS_PORT is set.

The loop reports once per batch (one increment per reason, one histogram update for the whole
batch), so the hot path pays microseconds per batch, not per decision. Stream lag, pending and
dead-letter counts are read from Redis when Prometheus scrapes, never in the loop.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from worker import backlog, keys, stats
from worker.record import REASONS, Record
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.assign import Move

CODES = (
    "missing_field",
    "invalid_field",
    "unknown_number",
    "invalid_data",
    "too_large",
    "poison",
    "vanished",
)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WAIT_BUCKETS = (0.25, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class BatchHistogram(Collector):
    """A histogram fed a whole batch at a time: one lock per batch instead of one per value
    (prometheus_client's observe costs about 2 us, a batch of 200 would pay 0.5 ms)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = tuple(float(bound) for bound in buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Sequence[float]) -> None:
        bounds, counts = self._bounds, self._counts
        with self._lock:
            for value in values:
                counts[bisect_left(bounds, value)] += 1  # le: value <= bound
            self._sum += sum(values)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=cumulative, sum_value=total
        )


class StreamGauges(Collector):
    """The consumer group's pending and lag on every inbound stream (each partition, and in
    total) and the dead stream's length, asked of Redis at scrape time in one round trip.
    ``lag`` needs Redis 7; on 6.2 it is left out."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self._client, self._settings = client, settings

    def collect(self) -> Iterator[Metric]:
        up = "rota_redis_up", "1 when the last scrape reached Redis"
        try:
            streams = backlog.read(self._client, self._settings)
            dead = self._client.xlen(self._settings.dead_stream)
        except RedisError:
            yield GaugeMetricFamily(*up, 0)
            return
        yield GaugeMetricFamily(*up, 1)
        yield from _backlog_gauges(streams)
        yield GaugeMetricFamily("rota_dead_stream_length", "entries on the dead stream", dead)


class QueueGauges(Collector):
    """Per account with timers (``rota:swept``), the customers waiting and how long the oldest
    has, asked of Redis at scrape time (worker.stats.queues: a few round trips in all)."""

    def __init__(self, client: Any) -> None:
        self._client = client  # a decoding one

    def collect(self) -> Iterator[Metric]:
        try:
            accounts = sorted(self._client.smembers(keys.swept_accounts()))
            shown = stats.queues(self._client, accounts)
        except RedisError:
            return  # rota_redis_up says so
        length = GaugeMetricFamily(
            "rota_queue_length", "conversations waiting for a user", labels=["account"]
        )
        oldest = GaugeMetricFamily(
            "rota_queue_oldest_wait_seconds",
            "how long the conversation queued first has waited (0: nobody waits)",
            labels=["account"],
        )
        for account, queue in shown.items():
            length.add_metric([account], queue["queue"])
            oldest.add_metric([account], (queue["oldest_wait_ms"] or 0) / 1000)
        yield length
        yield oldest


def _backlog_gauges(streams: Sequence[backlog.Backlog]) -> Iterator[Metric]:
    """Totals unlabelled (what to alert on), each stream under ``stream``; none before any
    worker created the group."""
    if not any(stream.grouped for stream in streams):
        return
    pending = "inbound entries delivered to a worker and not yet acknowledged"
    lag = "inbound entries not yet delivered to any worker"
    yield GaugeMetricFamily("rota_inbound_pending", pending, backlog.total_pending(streams))
    total_lag = backlog.total_lag(streams)
    if total_lag is not None:
        yield GaugeMetricFamily("rota_inbound_lag", lag, total_lag)
    each_pending = GaugeMetricFamily(
        "rota_inbound_stream_pending", f"{pending}, per inbound stream", labels=["stream"]
    )
    each_lag = GaugeMetricFamily(
        "rota_inbound_stream_lag", f"{lag}, per inbound stream", labels=["stream"]
    )
    for stream in streams:
        each_pending.add_metric([stream.stream], stream.pending)
        if stream.lag is not None:
            each_lag.add_metric([stream.stream], stream.lag)
    yield each_pending
    yield each_lag


class Metrics:
    """Everything one worker process reports, on a registry of its own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.decisions = Counter(
            "rota_decisions", "decisions published, by reason", ["reason"], registry=registry
        )
        self.dead_letters = Counter(
            "rota_dead_letters", "entries dead-lettered, by error code", ["code"], registry=registry
        )
        self.claimed = Counter(
            "rota_claimed", "entries claimed from consumers idle too long", registry=registry
        )
        self.webhooks = Counter(
            "rota_webhooks_enqueued", "webhook deliveries queued", registry=registry
        )
        self.batch_size = Histogram(
            "rota_batch_size", "entries handled per batch", buckets=BATCH_BUCKETS, registry=registry
        )
        self.latency = BatchHistogram(
            "rota_decision_latency_seconds",
            "from the inbound entry's XADD to its decision being published",
            LATENCY_BUCKETS,
        )
        registry.register(self.latency)
        self.queue_waits = BatchHistogram(
            "rota_queue_wait_seconds",
            "how long a conversation waited in the queue before it got a user",
            WAIT_BUCKETS,
        )
        registry.register(self.queue_waits)
        for reason in REASONS:  # present at 0 from the start, so rates work from the first scrape
            self.decisions.labels(reason)
        for code in CODES:
            self.dead_letters.labels(code)

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)

    def batch(
        self,
        entries: int,
        records: Sequence[Record],
        dead: Sequence[dict[Any, Any]],
        now_ms: int,
    ) -> None:
        """One batch published: its size, decisions by reason, dead letters by code, latency."""
        self.batch_size.observe(entries)
        for reason, count in Tally(record.reason for record in records).items():
            self.decisions.labels(reason).inc(count)
        for code, count in Tally(_text(letter[b"error"]) for letter in dead).items():
            self.dead_letters.labels(code).inc(count)
        # A move has no inbound entry: its latency is the sweep's, not a message's.
        sent = [_entry_ms(record.inbound_id) for record in records if record.inbound_id]
        if sent:
            self.latency.observe_many([max(now_ms - at, 0) / 1000 for at in sent])

    def moved(self, moves: Sequence[Move]) -> None:
        """How long the conversations given from the queue had waited."""
        waits = [move.waited_ms / 1000 for move in moves if move.waited_ms is not None]
        if waits:
            self.queue_waits.observe_many(waits)

    def serve(self, settings: Settings) -> Server | None:
        """The HTTP exposition server, started only when ROTA_METRICS_PORT is set."""
        if settings.metrics_port is None:
            return None
        httpd, _thread = start_http_server(
            settings.metrics_port, settings.metrics_addr, registry=self.registry
        )
        return Server(httpd)


class Server:
    def __init__(self, httpd: Any) -> None:
        self._httpd = httpd
        self.port: int = httpd.server_port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
