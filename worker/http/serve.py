"""``rota serve``: the application on uvicorn, on a socket several processes can share.

The socket is bound here with SO_REUSEPORT, so any number of ``rota serve`` processes (of one
user) listen on one ``ROTA_HTTP_ADDR:ROTA_HTTP_PORT`` and the kernel spreads new connections
over them: scale with the Procfile's ``web`` line, no supervisor in between. SIGTERM (or
SIGINT) stops accepting, lets the requests in flight finish (for up to
``ROTA_SHUTDOWN_BUDGET_S``), and exits 0.

uvicorn's access log stays off: a request line carries its query string, and Meta's
verification request carries ``hub.verify_token`` in it.
"""

from __future__ import annotations

import gc
import math
import signal
import socket
from types import FrameType
from typing import Any

import redis
import uvicorn

from worker import connection
from worker.http.app import create_app
from worker.log import logger, redacted_url, route_stdlib
from worker.settings import Settings


def listening_socket(addr: str, port: int) -> socket.socket:
    """A TCP socket bound to ``addr:port`` that other processes may bind too (uvicorn makes it
    listen). Port 0 picks a free one."""
    family, kind, proto, _, address = socket.getaddrinfo(
        addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def run(settings: Settings) -> int:
    log = logger(settings)
    route_stdlib("uvicorn", settings)
    sock = listening_socket(settings.http_addr, settings.http_port)  # a held port: exit 1 now
    client = connection.connect(settings, decode=True)
    try:
        _check_redis(client, log)
        _serve(settings, create_app(settings, client), sock, log)
    finally:
        sock.close()
        client.close()
    log.info("stopped")
    return 0


def _serve(settings: Settings, app: Any, sock: socket.socket, log: Any) -> None:
    host, port = sock.getsockname()[:2]
    log.info(
        "serving",
        addr=host,
        port=port,
        redis=redacted_url(connection.url(settings)),
        whatsapp=settings.whatsapp_app_secret is not None,
        api=settings.api_token is not None,
    )
    for missing, what in (
        (settings.whatsapp_app_secret is None, "ROTA_WHATSAPP_APP_SECRET: POST /whatsapp"),
        (settings.whatsapp_verify_token is None, "ROTA_WHATSAPP_VERIFY_TOKEN: GET /whatsapp"),
    ):
        if missing:
            log.warning(f"{what} refuses every request (403) until it is set")
    config = uvicorn.Config(
        app,
        log_config=None,  # uvicorn's loggers go through route_stdlib: one format per process
        access_log=False,
        lifespan="on",  # the services are set at startup: one that fails stops the server
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_budget_s),
    )
    server = uvicorn.Server(config)
    # What start-up made lives as long as the process: out of the cyclic collector's sight, so
    # its collections walk only what requests make (as the worker does).
    gc.freeze()
    # uvicorn raises the signal that stopped it again once it has drained; these handlers take
    # it, so a drained server exits 0 rather than die of it (or raise KeyboardInterrupt).
    previous = {sig: signal.signal(sig, _drained) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _drained(signum: int, _frame: FrameType | None) -> None:
    """The signal uvicorn raises again after its graceful shutdown: nothing left to do."""


def _check_redis(client: Any, log: Any) -> None:
    """A refusal (a wrong password, the ACL) ends ``rota serve`` at once, as it ends the
    worker; an unreachable Redis does not: the webhook answers 503 until it is back."""
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as failure:
        if connection.refusal(failure) is not None:
            raise
        log.warning(
            "redis unreachable at start: /whatsapp answers 503 until it is back",
            error=str(failure).splitlines()[0] if str(failure) else type(failure).__name__,
        )
