"""A worker over every inbound partition (``ROTA_INBOUND_PARTITIONS`` > 1).

Each partition is its own stream with its own consumer group, pending list and claimer, so
the partition is handled by a Runner of its own ("lane") whose settings name that stream: its
reads, claims, poison, dead letters and acknowledgements stay on that partition. Partitions
may live on different Cluster masters, and one XREADGROUP may not span slots, so lanes are
read in turn without blocking; only when every lane came back empty does the worker block, at
most ROTA_PARTITION_BLOCK_MS, on one lane (a different one each time), which bounds the extra
latency an idle worker adds. With one partition the plain Runner runs, unchanged.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from worker import partitions
from worker.clock import Clock, ServerClock
from worker.metrics import Metrics
from worker.runner import Runner
from worker.settings import Settings


class PartitionedRunner:
    def __init__(
        self,
        client: Any,
        settings: Settings,
        log: Any,
        consumer: str | None = None,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ):
        self.settings = settings
        metrics = metrics or Metrics()  # one set of series for every lane
        clock = clock or ServerClock(client)  # one TIME per sync for every lane
        self.lanes = [
            Runner(
                client,
                settings.model_copy(update={"inbound_stream": name}),
                log,
                consumer,
                metrics=metrics,
                clock=clock,
            )
            for name in partitions.inbound_streams(settings)
        ]
        self.webhooks = self.lanes[0].webhooks
        self.consumer = self.lanes[0].consumer
        self.log = self.lanes[0].log
        self._turn = 0

    @property
    def stop_requested_at(self) -> float | None:
        return self.lanes[0].stop_requested_at

    def request_stop(self) -> None:
        now = time.monotonic()
        for lane in self.lanes:
            if lane.stop_requested_at is None:
                lane.stop_requested_at = now

    def run(self, burst: bool = False) -> int:
        """0 after a clean stop (or a drained burst); 1 when the shutdown budget ran out."""
        names = [lane.settings.inbound_stream for lane in self.lanes]
        self.log.info("worker started", burst=burst, streams=names)
        for lane in self.lanes:
            lane._burst = burst
        first = self.lanes[0]  # every lane talks to the same Redis: checked once
        if first._with_retry(first._check_server) is None:
            return 1
        for lane in self.lanes:
            lane._with_retry(lane._prepare)
        block = min(self.settings.partition_block_ms, self.settings.block_ms)
        while self.stop_requested_at is None:
            drained = self._sweep(burst)
            if drained is None:
                return 1
            if drained and burst:
                break
            if drained and self.stop_requested_at is None:
                lane = self.lanes[self._turn % len(self.lanes)]
                self._turn += 1
                if lane._with_retry(partial(lane._step, False, block)) is None:
                    return 1
        for lane in self.lanes:
            lane._with_retry(lane._leave)
        self.log.info("worker stopped")
        return 0

    def _sweep(self, burst: bool) -> bool | None:
        """One non-blocking batch per lane; True when every lane had nothing left, None when
        a stop's budget ran out while Redis was unreachable."""
        drained = True
        for lane in self.lanes:
            if self.stop_requested_at is not None:
                return False
            result = lane._with_retry(partial(lane._step, burst, None))
            if result is None:
                return None
            drained = drained and result
        return drained


def make_runner(
    client: Any,
    settings: Settings,
    log: Any,
    consumer: str | None = None,
    metrics: Metrics | None = None,
    clock: Clock | None = None,
) -> Runner | PartitionedRunner:
    """The worker for these settings: one Runner, or one lane per inbound partition."""
    if settings.inbound_partitions == 1:
        return Runner(client, settings, log, consumer, metrics=metrics, clock=clock)
    return PartitionedRunner(client, settings, log, consumer, metrics=metrics, clock=clock)
