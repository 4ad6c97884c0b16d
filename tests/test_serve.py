"""``rota serve`` as operators run it: real processes on a real port, sharing it, draining on
SIGTERM, refusing an oversized body before reading it, never logging a secret."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Target, worker_env
from tests.helpers import given_number, given_presence, wait_until
from tests.ops import rota
from tests.redis_server import RedisServer, free_port
from worker.http.whatsapp import SIGNATURE_HEADER, signature

SECRET, VERIFY_TOKEN = "app-secret-of-serve-tests", "verify-token-of-serve-tests"
PHONE_ID, DISPLAY, SHEENA = "106540352242922", "15550783881", "16505551234"
READY = "Application startup complete"


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Starts ``rota serve`` processes (waiting until each is up); kills what is left after."""
    started: list[Served] = []

    def start(url: str, port: int, **overrides: str) -> Served:
        log = tmp_path / f"serve{len(started)}.log"
        settings = {
            "http_port": str(port),
            "whatsapp_app_secret": SECRET,
            "whatsapp_verify_token": VERIFY_TOKEN,
            "log_level": "info",
            "log_format": "json",
            **overrides,
        }
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker", "serve"],
                env=worker_env(url, **settings),
                cwd=ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        served = Served(process, log, port)
        started.append(served)
        wait_until(lambda: READY in served.output() or process.poll() is not None, 30, "serve")
        assert process.poll() is None, served.output()
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
        served.process.wait()


def challenge(port: int, token: str) -> int:
    """The status of one verification request, on a connection of its own."""
    query = f"hub.mode=subscribe&hub.verify_token={token}&hub.challenge=42"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/whatsapp?{query}", timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def delivery(wamid: str, sender: str = SHEENA) -> bytes:
    message = {
        "from": sender,
        "id": wamid,
        "timestamp": "1",
        "type": "text",
        "text": {"body": "hi"},
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": PHONE_ID},
        "contacts": [{"profile": {"name": "Sheena"}, "wa_id": sender}],
        "messages": [message],
    }
    entry = {"id": "1", "changes": [{"value": value, "field": "messages"}]}
    return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()


def post(port: int, body: bytes, signed: str) -> int:
    """The status of one delivery with the signature header ``signed``."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/whatsapp",
        data=body,
        headers={SIGNATURE_HEADER: signed, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def head(length: int | None, body: bytes = b"", chunked: bool = False) -> bytes:
    """A POST /whatsapp request's head, signed for ``body``."""
    lines = ["POST /whatsapp HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines.append(f"{SIGNATURE_HEADER}: {signature(SECRET, body)}")
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes or 10 s pass."""
    sock.settimeout(10)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received and _complete(received):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def _complete(received: bytes) -> bool:
    headers, _, body = received.partition(b"\r\n\r\n")
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_two_processes_share_one_port_and_both_answer(
    serve: Callable[..., Served], redis_server: RedisServer
) -> None:
    # Given two rota serve processes on one port, told apart by their verify tokens
    port = free_port()
    serve(redis_server.url, port, whatsapp_verify_token="token-of-one")
    serve(redis_server.url, port, whatsapp_verify_token="token-of-two")
    # When 40 connections ask with the first one's token
    answers = [challenge(port, "token-of-one") for _ in range(40)]
    # Then the kernel gave some to each: the first answers 200, the second 403
    assert 0 < answers.count(200) < 40, answers
    assert answers.count(200) + answers.count(403) == 40


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(
    serve: Callable[..., Served], target: Target, rd: Any
) -> None:
    served = serve(target.url, free_port())
    body = delivery("wamid.in-flight")
    # Given a request whose head and half its body have arrived
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    sock.sendall(head(len(body), body) + body[: len(body) // 2])
    time.sleep(0.5)
    # When the server is told to stop
    served.process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    # Then it takes no new connection, but is still there for the request in flight
    assert served.process.poll() is None, served.output()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
    sock.sendall(body[len(body) // 2 :])
    answered = response(sock)
    sock.close()
    assert answered.startswith(b"HTTP/1.1 200"), answered
    assert served.process.wait(timeout=30) == 0, served.output()
    assert [f["message_id"] for _, f in rd.xrange("rota:inbound")] == ["wamid.in-flight"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_before_it_is_all_sent(
    serve: Callable[..., Served], redis_server: RedisServer, chunked: bool
) -> None:
    # Given a limit of 2 KiB, and a request that announces (or starts to send) far more
    served = serve(redis_server.url, free_port(), http_max_body_bytes="2048")
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    if chunked:
        sock.sendall(head(None, chunked=True) + b"1000\r\n" + b"x" * 4096 + b"\r\n")
    else:
        sock.sendall(head(100_000_000))
    # Then 413 comes back without the rest ever being sent
    answered = response(sock)
    sock.close()
    assert answered.startswith(b"HTTP/1.1 413"), answered
    assert b"ROTA_HTTP_MAX_BODY_BYTES" in answered


def test_a_delivery_to_rota_serve_is_decided_by_a_running_worker(
    serve: Callable[..., Served],
    target: Target,
    rd: Any,
    workers: Callable[..., subprocess.Popen[bytes]],
) -> None:
    given_number(rd, ["ann"], account="acme", number=DISPLAY, whatsapp_phone_number_id=PHONE_ID)
    given_presence(rd, account="acme", ann="available")
    workers(target.url)
    served = serve(target.url, free_port())
    body = delivery("wamid.end-to-end")
    assert post(served.port, body, signature(SECRET, body)) == 200
    wait_until(lambda: bool(rd.xlen("rota:assignments")), 30, "the decision")
    [(_, decision)] = rd.xrange("rota:assignments")
    assert (decision["account"], decision["user"], decision["message_id"]) == (
        "acme",
        "ann",
        "wamid.end-to-end",
    )


def test_no_secret_reaches_the_log(serve: Callable[..., Served], redis_server: RedisServer) -> None:
    served = serve(redis_server.url, free_port(), log_level="debug")
    assert challenge(served.port, VERIFY_TOKEN) == 200
    assert challenge(served.port, "a-wrong-guess") == 403
    body = delivery("wamid.logged")
    assert post(served.port, body, signature(SECRET, body)) == 200
    assert post(served.port, body, "sha256=00") == 403
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0
    logged = served.output()
    assert '"event": "serving"' in logged
    for secret in (SECRET, VERIFY_TOKEN, signature(SECRET, body)):
        assert secret not in logged


def test_bad_settings_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    for name, value in (("http_port", "70000"), ("http_max_body_bytes", "10")):
        result = rota(monkeypatch, capsys, redis_server.url, "serve", **{name: value})
        assert result.code == 2
        [said] = result.err.splitlines()
        assert said.startswith(f"rota: error: ROTA_{name.upper()}: ")


def test_a_port_another_program_holds_exits_1_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    with socket.socket() as holder:  # bound without SO_REUSEPORT: not to be shared
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = rota(monkeypatch, capsys, redis_server.url, "serve", http_port=str(port))
    assert result.code == 1
    [said] = result.err.splitlines()
    assert "Address already in use" in said


def test_a_redis_refusing_the_credentials_exits_1_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    server_factory: Callable[..., RedisServer],
) -> None:
    server = server_factory()
    with server.client() as owner:
        owner.config_set("requirepass", "the-right-one")
    url = f"redis://:a-wrong-one@127.0.0.1:{server.port}/0"
    result = rota(monkeypatch, capsys, url, "serve", http_port=str(free_port()))
    assert result.code == 1
    [said] = result.err.splitlines()
    assert said.startswith("rota: error: redis refused: WRONGPASS"), said
    assert "a-wrong-one" not in result.err
