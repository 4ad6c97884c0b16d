"""Decisions delivered to the CRM: an rq job per decision, a signed JSON POST, retried.

The worker queues the jobs in the pipeline that publishes the decisions (no HTTP on the
decision path); ``rota webhooks`` runs the rq worker that sends them. Jobs use rq's JSON
serializer (never pickle) and carry only the decision: the URL and the secret belong to the
process that sends, so the secret never reaches Redis. A job that fails every try stays in rq's
failed registry.

Every POST carries ``X-Rota-Signature: sha256=HEX``, HEX being the HMAC-SHA256 of the exact
body bytes under ROTA_WEBHOOK_SECRET.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import signal
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from worker import keys
from worker.log import level, redacted_url, route_stdlib
from worker.record import Record
from worker.settings import Settings

# rq reads its key prefix from the environment once, when imported: set it first, so rq's keys
# live under rota: like every other key of Rota and one ACL key pattern covers them all.
os.environ.setdefault("RQ_KEY_PREFIX", keys.RQ_PREFIX)

import rq
import rq.defaults
from rq.serializers import JSONSerializer

if os.environ["RQ_KEY_PREFIX"] != rq.defaults.RQ_KEY_PREFIX:
    raise ImportError("rq was imported before worker.webhook, so it does not use Rota's prefix")

SIGNATURE_HEADER = "X-Rota-Signature"
JOB = "worker.webhook.deliver"

# Set by `rota webhooks` for the jobs it runs (as rq sets the current job): the job function gets
# this process's URL and secret without them travelling through Redis.
_delivery: contextvars.ContextVar[Delivery] = contextvars.ContextVar("rota_webhook_delivery")


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff(settings: Settings) -> list[int]:
    """Seconds before each retry: the first wait, doubled each time."""
    return [settings.webhook_backoff_s * 2**i for i in range(settings.webhook_retries)]


def queue(client: Any, settings: Settings) -> rq.Queue:
    """The webhook queue on a bytes client (rq needs raw replies)."""
    return rq.Queue(settings.webhook_queue, connection=client, serializer=JSONSerializer)


class Webhooks:
    """The enqueueing side, used by the worker."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.queue = queue(client, settings)
        intervals = backoff(settings)
        self._retry = rq.Retry(max=len(intervals), interval=intervals) if intervals else None
        self._timeout = int(settings.webhook_timeout_s) + 5

    def enqueue(self, pipe: Any, records: Sequence[Record]) -> None:
        """One job per decision, queued on the caller's pipeline (executed with the publish);
        its payload is the published entry's fields as a JSON object."""
        if not records:
            return
        jobs = [
            rq.Queue.prepare_data(
                JOB,
                args=[record.to_fields()],
                timeout=self._timeout,
                result_ttl=0,  # a delivered decision leaves nothing behind
                description=f"webhook {record.account} {record.message_id or record.event_id}",
                retry=self._retry,
            )
            for record in records
        ]
        self.queue.enqueue_many(jobs, pipeline=pipe)

    def counts(self) -> dict[str, int]:
        return {
            "queued": self.queue.count,
            "scheduled": self.queue.scheduled_job_registry.get_job_count(cleanup=False),
            "failed": self.queue.failed_job_registry.get_job_count(cleanup=False),
        }


class WebhookGauges(Collector):
    """Queued, scheduled (waiting to retry) and failed deliveries, at scrape time."""

    def __init__(self, webhooks: Webhooks) -> None:
        self._webhooks = webhooks

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._webhooks.counts()
        except RedisError:
            return
        gauge = GaugeMetricFamily("rota_webhooks", "webhook deliveries by state", labels=["state"])
        for state, count in counts.items():
            gauge.add_metric([state], count)
        yield gauge


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a 301/302/303 to a POST with a GET and no body, and a 200 to that
    would count as delivered: a redirect is a failed delivery instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Delivery:
    """The sending side: one signed POST per call; any answer but 2xx raises, so rq retries."""

    def __init__(self, url: str, secret: bytes, timeout_s: float) -> None:
        self._url, self._secret, self._timeout_s = url, secret, timeout_s
        self._opener = urllib.request.build_opener(_NoRedirects)

    def send(self, event: dict[str, Any]) -> int:
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "rota-webhook",
                SIGNATURE_HEADER: signature(self._secret, body),
            },
        )
        # 4xx, 5xx and (with _NoRedirects) 3xx raise HTTPError.
        with self._opener.open(request, timeout=self._timeout_s) as response:
            status: int = response.status
        if not 200 <= status < 300:
            raise RuntimeError(f"webhook answered HTTP {status}")
        return status


def deliver(event: dict[str, Any]) -> int:
    """The rq job: sends one decision with the Delivery of the ``rota webhooks`` process."""
    try:
        delivery = _delivery.get()
    except LookupError:
        raise RuntimeError("webhook jobs run under `rota webhooks`, not a bare rq worker") from None
    return delivery.send(event)


def run(client: Any, settings: Settings, log: Any, burst: bool = False) -> int:
    """``rota webhooks``: an rq worker with its scheduler (retries wait in rq's scheduled
    registry). Without ROTA_WEBHOOK_URL it idles until stopped, so a Procfile runner that stops
    everything when one process exits keeps the workers up."""
    if not settings.webhook_url or settings.webhook_secret is None:
        log.info("webhooks off: ROTA_WEBHOOK_URL is not set; idle until stopped")
        if not burst:
            _wait_for_stop()
        return 0
    secret = settings.webhook_secret.get_secret_value().encode()
    _delivery.set(Delivery(settings.webhook_url, secret, settings.webhook_timeout_s))
    route_stdlib("rq", settings)
    log.info("webhooks started", url=redacted_url(settings.webhook_url), burst=burst)
    worker = rq.SimpleWorker(
        [queue(client, settings)],
        connection=client,
        serializer=JSONSerializer,
        log_job_description=False,  # descriptions are safe, but keep rq's lines short
    )
    worker.work(
        burst=burst, with_scheduler=True, logging_level=logging.getLevelName(level(settings))
    )
    log.info("webhooks stopped")
    return 0


def _wait_for_stop() -> None:
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stopped.set())
    while not stopped.wait(1.0):
        pass
