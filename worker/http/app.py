"""The ASGI application: one per process, built from the settings; its Redis clients and the
Python API live on ``app.state`` (see ``Services``), never in module globals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from worker import connection
from worker.client import Rota
from worker.connection import AsyncClient
from worker.settings import Settings


@dataclass(frozen=True)
class Services:
    """What every route uses: the settings, a decoding Redis client, the Python API; and for
    the webhook, an asyncio client, so that a delivery is written on the event loop, not
    handed to a thread and back (the README's benchmark section has what that costs)."""

    settings: Settings
    client: Any
    rota: Rota
    deliveries: AsyncClient


class Application(FastAPI):
    """FastAPI, but for one path, whose requests go straight to its own routes, past FastAPI's
    middleware (errors, exceptions, body limit, telemetry) and the API's routing: the webhook,
    which answers every refusal itself."""

    def __init__(self, path: str, routes: ASGIApp, **options: Any) -> None:
        super().__init__(**options)
        self._direct_path, self._direct = path, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self._direct_path:
            scope["app"] = self  # what Request.app finds, as Starlette would set it
            await self._direct(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def services(request: Request) -> Services:
    """A route's services (a FastAPI dependency)."""
    found: Services = request.app.state.services
    return found


def create_app(
    settings: Settings, client: Any | None = None, deliveries: AsyncClient | None = None
) -> FastAPI:
    """The application; ``client`` (a decoding redis-py client) and ``deliveries`` (an asyncio
    one) are made from the settings when not given (tests pass their own). The services are
    set when the application starts, on the loop that serves it, and the asyncio client is
    closed when it stops."""
    from worker.http import api, console, whatsapp

    sync_client = client if client is not None else connection.connect(settings, decode=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writer = deliveries if deliveries is not None else connection.connect_async(settings)
        rota = Rota(sync_client, settings)
        app.state.services = Services(settings, sync_client, rota, writer)
        try:
            yield
        finally:
            await writer.aclose()

    app = Application(
        whatsapp.PATH,
        whatsapp.routes,
        title="Rota",
        version=_version(),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.include_router(api.router)
    app.include_router(console.router)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rota")
    except PackageNotFoundError:
        return "0"
