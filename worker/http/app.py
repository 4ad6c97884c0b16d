"""The ASGI application: one per process, built from the settings; its Redis clients and the
Python API live on ``app.state`` (see ``Services``), never in module globals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request

from worker import connection
from worker.client import Rota
from worker.settings import Settings


@dataclass(frozen=True)
class Services:
    """What every route uses: the settings, a decoding Redis client, and the Python API."""

    settings: Settings
    client: Any
    rota: Rota


def services(request: Request) -> Services:
    """A route's services (a FastAPI dependency)."""
    found: Services = request.app.state.services
    return found


def create_app(settings: Settings, client: Any | None = None) -> FastAPI:
    """The application; ``client`` (a decoding redis-py client) is made from the settings when
    not given (tests pass their own)."""
    from worker.http import api, console, whatsapp

    client = client if client is not None else connection.connect(settings, decode=True)
    app = FastAPI(title="Rota", version=_version(), docs_url=None, redoc_url=None)
    app.state.services = Services(settings, client, Rota(client, settings))
    app.include_router(whatsapp.router)
    app.include_router(api.router)
    app.include_router(console.router)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rota")
    except PackageNotFoundError:
        return "0"
