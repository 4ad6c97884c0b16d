"""Prometheus metrics: served on ROTA_METRICS_PORT, scraped over HTTP."""

from __future__ import annotations

import signal
import time
from typing import Any

import structlog

from tests.conftest import make_settings, spawn_worker
from tests.helpers import given_a_partitioned_backlog, given_number, given_presence, send
from tests.ops import sample, scrape
from tests.redis_server import RedisServer, free_port
from worker import admin
from worker.metrics import BatchHistogram, Metrics, QueueGauges, StreamGauges
from worker.runner import Runner
from worker.settings import Settings


def wait_for(port: int, ready: Any, timeout_s: float = 15.0) -> dict[Any, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            samples = scrape(port)
            if ready(samples):
                return samples
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, "metrics never showed the expected values"
        time.sleep(0.1)


def test_worker_serves_decisions_dead_letters_latency_and_lag_over_http(
    redis_server: RedisServer, rd: Any, settings: Settings
) -> None:
    # Given two available users, an admin, and four messages: three to decide, one unknown
    given_number(rd, ["A", "B"])
    admin.set_account(rd, "acme", "boss")
    given_presence(rd, A="available", B="available")
    for customer in ("447700900001", "447700900002"):
        send(rd, settings, customer)
    send(rd, settings, "447700900003", number="15559999999")
    # When a worker runs with a metrics port and a third chat arrives once nobody is available
    port = free_port()
    worker = spawn_worker(redis_server.url, metrics_port=str(port), metrics_addr="127.0.0.1")
    try:
        wait_for(port, lambda s: sample(s, "rota_decisions_total", reason="round_robin") == 2)
        given_presence(rd, A="away", B="away")
        send(rd, settings, "447700900004")
        samples = wait_for(
            port, lambda s: sample(s, "rota_decisions_total", reason="admin_fallback") == 1
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=30)
        assert worker.returncode == 0, errors
    # Then the scrape shows each family
    assert sample(samples, "rota_dead_letters_total", code="unknown_number") == 1
    assert sample(samples, "rota_dead_letters_total", code="poison") == 0
    assert sample(samples, "rota_decision_latency_seconds_count") == 3
    assert (sample(samples, "rota_batch_size_sum") or 0) == 4
    assert sample(samples, "rota_inbound_pending") == 0
    assert sample(samples, "rota_inbound_lag") == 0
    assert sample(samples, "rota_dead_stream_length") == 1
    assert sample(samples, "rota_claimed_total") == 0


def test_entries_claimed_from_an_idle_consumer_are_counted(
    rd: Any, rb: Any, redis_server: RedisServer
) -> None:
    # Given an entry a consumer read and never acknowledged
    settings = make_settings(redis_server.url, claim_idle_ms=1)
    given_number(rd, ["A"])
    given_presence(rd, A="available")
    send(rd, settings, "447700900001")
    rd.xgroup_create(settings.inbound_stream, settings.group, id="0")
    rd.xreadgroup(settings.group, "gone", {settings.inbound_stream: ">"})
    time.sleep(0.01)
    # When a worker drains the stream
    metrics = Metrics()
    log = structlog.wrap_logger(structlog.testing.CapturingLogger())
    assert Runner(rb, settings, log, consumer="live", metrics=metrics).run(burst=True) == 0
    # Then the claim is counted and the decision too
    assert metrics.registry.get_sample_value("rota_claimed_total") == 1
    assert metrics.registry.get_sample_value("rota_decisions_total", {"reason": "round_robin"}) == 1


def test_stream_gauges_before_the_stream_exists_still_say_redis_is_up(
    rb: Any, settings: Settings
) -> None:
    metrics = Metrics()
    metrics.watch(StreamGauges(rb, settings))
    assert metrics.registry.get_sample_value("rota_redis_up") == 1
    assert metrics.registry.get_sample_value("rota_inbound_pending") is None


def test_stream_gauges_cover_every_partition_each_and_in_total(
    rd: Any, rb: Any, redis_server: RedisServer
) -> None:
    # Given 4 inbound partitions, each with new messages, one of them held by a consumer
    settings = make_settings(redis_server.url, inbound_partitions=4)
    expected = given_a_partitioned_backlog(rd, rb, settings)
    # When Prometheus scrapes
    metrics = Metrics()
    metrics.watch(StreamGauges(rb, settings))
    value = metrics.registry.get_sample_value
    # Then pending and lag are there per inbound stream and, unlabelled, in total
    shown = {
        stream: (
            value("rota_inbound_stream_pending", {"stream": stream}),
            value("rota_inbound_stream_lag", {"stream": stream}),
        )
        for stream in expected
    }
    assert shown == expected
    assert (value("rota_inbound_pending"), value("rota_inbound_lag")) == (1, 7)


def test_no_metrics_server_unless_a_port_is_set(redis_server: RedisServer) -> None:
    assert Metrics().serve(make_settings(redis_server.url)) is None
    server = Metrics().serve(
        make_settings(redis_server.url, metrics_port=0, metrics_addr="127.0.0.1")
    )
    assert server is not None
    try:
        assert sample(scrape(server.port), "rota_claimed_total") == 0
    finally:
        server.close()


def test_latency_buckets_count_values_at_or_below_each_bound() -> None:
    histogram = BatchHistogram("h", "test", [0.1, 1.0])
    histogram.observe_many([0.05, 0.1, 0.5, 2.0])
    (family,) = histogram.collect()
    counts = {s.labels.get("le"): s.value for s in family.samples if s.name == "h_bucket"}
    assert counts == {"0.1": 2, "1.0": 3, "+Inf": 4}
    assert next(s.value for s in family.samples if s.name == "h_sum") == 2.65


def test_queue_gauges_and_waits_follow_the_waiting_queue(
    rd: Any, rb: Any, settings: Settings
) -> None:
    # Given a number that queues when nobody is available, and two customers waiting
    given_number(rd, ["alice"], when_nobody="queue")
    given_presence(rd, alice="away")
    metrics = Metrics()
    metrics.watch(QueueGauges(rd))
    runner = Runner(rb, settings, structlog.get_logger(), metrics=metrics)
    for customer in ("447700900001", "447700900002"):
        send(rd, settings, customer)
    runner.run(burst=True)
    value = metrics.registry.get_sample_value
    # Then the gauges count them, and no wait was observed yet
    assert value("rota_queue_length", {"account": "acme"}) == 2
    assert value("rota_queue_oldest_wait_seconds", {"account": "acme"}) >= 0
    assert value("rota_queue_wait_seconds_count") == 0
    # When alice comes back and a sweep serves the queue
    given_presence(rd, alice="available")
    Runner(rb, settings, structlog.get_logger(), metrics=metrics).run(burst=True)
    # Then both waits are observed and nobody waits any more
    assert value("rota_queue_wait_seconds_count") == 2
    assert value("rota_decisions_total", {"reason": "round_robin"}) == 2
    assert value("rota_queue_length", {"account": "acme"}) == 0
