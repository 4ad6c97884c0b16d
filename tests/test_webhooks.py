"""Webhooks: each decision POSTed to the CRM by an rq job, signed, retried, never on the
decision path."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import ROOT, make_settings, worker_env
from tests.helpers import events, given_number, given_presence, run_burst, send
from tests.ops import rota
from tests.redis_server import RedisServer, free_port
from worker.settings import Settings
from worker.webhook import SIGNATURE_HEADER, Delivery, Webhooks

SECRET = "s3cret-for-tests"


@dataclass
class Crm:
    """A webhook receiver on loopback that answers 500 to its first ``failures`` requests."""

    failures: int
    fail_status: int = 500
    requests: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def accepted(self) -> list[bytes]:
        with self.lock:
            return [body for status, _, body in self.requests if status == 200]


@pytest.fixture
def crm_factory() -> Iterator[Any]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(failures: int, fail_status: int = 500) -> Crm:
        crm = Crm(failures, fail_status)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with crm.lock:
                    status = crm.fail_status if len(crm.requests) < crm.failures else 200
                    crm.requests.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.send_header("Location", crm.url)
                self.end_headers()

            def do_GET(self) -> None:  # what a followed redirect would turn the POST into
                with crm.lock:
                    crm.requests.append((200, dict(self.headers), b""))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        crm.url = f"http://127.0.0.1:{server.server_port}/rota"
        return crm

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def hook_settings(redis_server: RedisServer, url: str, **overrides: Any) -> Settings:
    return make_settings(redis_server.url, webhook_url=url, webhook_secret=SECRET, **overrides)


def given_three_decisions(rd: Any, rb: Any, settings: Settings) -> list[dict[str, str]]:
    given_number(rd, ["A", "B"])
    given_presence(rd, A="available", B="available")
    for i in range(3):
        send(rd, settings, f"44770090000{i}", message_id=f"wamid.{i}")
    assert run_burst(rb, settings) == 0
    return events(rd, settings)


def webhooks_process(url: str, settings: Settings, *flags: str) -> subprocess.Popen[bytes]:
    env = worker_env(
        url,
        webhook_url=settings.webhook_url or "",
        webhook_secret=SECRET,
        webhook_retries=str(settings.webhook_retries),
        webhook_backoff_s=str(settings.webhook_backoff_s),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "webhooks", *flags],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )


def test_each_decision_is_delivered_once_signed_after_two_failed_tries(
    redis_server: RedisServer, rd: Any, rb: Any, crm_factory: Any
) -> None:
    # Given a CRM that fails twice, then accepts, and three decisions queued for it
    crm = crm_factory(failures=2)
    settings = hook_settings(redis_server, crm.url, webhook_backoff_s=1, webhook_retries=3)
    decided = given_three_decisions(rd, rb, settings)
    # When `rota webhooks` runs until all three are accepted
    process = webhooks_process(redis_server.url, settings)
    try:
        deadline = time.monotonic() + 30
        while len(crm.accepted()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # time enough for a stray extra delivery to show up
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    # Then every request is signed over its body, and each decision was accepted exactly once
    assert len(crm.requests) == 5
    for _, headers, body in crm.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == expected
        assert headers["Content-Type"] == "application/json"
    delivered = sorted((json.loads(body) for body in crm.accepted()), key=lambda e: e["message_id"])
    assert [{k: str(v) for k, v in event.items()} for event in delivered] == decided
    assert Webhooks(rb, settings).counts() == {"queued": 0, "scheduled": 0, "failed": 0}


def test_delivery_failing_every_try_stays_in_the_failed_registry(
    redis_server: RedisServer, rd: Any, rb: Any, crm_factory: Any
) -> None:
    # Given a CRM that always fails and one retry allowed
    crm = crm_factory(failures=1_000)
    settings = hook_settings(redis_server, crm.url, webhook_backoff_s=0, webhook_retries=1)
    given_three_decisions(rd, rb, settings)
    # When `rota webhooks --burst` has tried everything
    process = webhooks_process(redis_server.url, settings, "--burst")
    _, errors = process.communicate(timeout=60)
    # Then each delivery was tried twice and left in rq's failed registry
    assert process.returncode == 0, errors
    assert len(crm.requests) == 6
    assert Webhooks(rb, settings).counts() == {"queued": 0, "scheduled": 0, "failed": 3}


def test_deciding_never_waits_on_http(
    redis_server: RedisServer, rd: Any, rb: Any, crm_factory: Any
) -> None:
    # Given a webhook URL where nothing listens
    settings = hook_settings(redis_server, f"http://127.0.0.1:{free_port()}/rota")
    # When the worker decides
    started = time.monotonic()
    decided = given_three_decisions(rd, rb, settings)
    # Then it is done at once, with the deliveries waiting in the queue
    assert time.monotonic() - started < 5
    assert len(decided) == 3
    assert Webhooks(rb, settings).counts()["queued"] == 3


def test_jobs_are_stored_as_json_never_pickle(
    redis_server: RedisServer, rd: Any, rb: Any, crm_factory: Any
) -> None:
    settings = hook_settings(redis_server, "http://127.0.0.1:9/rota")
    decided = given_three_decisions(rd, rb, settings)
    jobs = Webhooks(rb, settings).queue.get_jobs()
    stored = [json.loads(zlib.decompress(rb.hget(job.key, "data"))) for job in jobs]
    assert [entry[0] for entry in stored] == ["worker.webhook.deliver"] * 3
    assert sorted(entry[2][0]["message_id"] for entry in stored) == [
        e["message_id"] for e in decided
    ]
    assert not any(SECRET in json.dumps(entry) for entry in stored)  # the secret stays home


def test_webhook_url_without_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    result = rota(monkeypatch, capsys, redis_server.url, "stats", webhook_url="http://x.example/")
    assert result.code == 2
    assert "ROTA_WEBHOOK_SECRET" in result.err
    assert result.err.count("\n") == 1


def test_webhooks_command_without_url_does_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    result = rota(monkeypatch, capsys, redis_server.url, "webhooks", "--burst")
    assert result.code == 0
    assert "webhooks off" in result.err


@pytest.mark.parametrize("status", [302, 404, 500])
def test_a_redirect_or_error_answer_is_a_failed_delivery(crm_factory: Any, status: int) -> None:
    crm = crm_factory(failures=1, fail_status=status)
    delivery = Delivery(crm.url, SECRET.encode(), timeout_s=5)
    with pytest.raises(urllib.error.HTTPError):
        delivery.send({"message_id": "wamid.1"})
    assert [s for s, _, _ in crm.requests] == [status]  # and the redirect was not followed
    assert delivery.send({"message_id": "wamid.1"}) == 200
