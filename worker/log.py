"""structlog setup: JSON lines when not on a terminal, console when on one. No global config:
each process builds its logger once and passes it down.

Secrets never reach a log line: settings hold them as SecretStr, URLs are logged through
``redacted_url`` and customers through ``words.mask``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any
from urllib.parse import urlsplit

import structlog

from worker.settings import Settings


def level(settings: Settings) -> int:
    """The numeric level ROTA_LOG_LEVEL names (Settings accepts known names only)."""
    return logging.getLevelNamesMapping()[settings.log_level.upper()]


def _renderer(settings: Settings) -> Any:
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=False)
    return structlog.processors.JSONRenderer()


_SHARED = (
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
)


def logger(settings: Settings, **bound: Any) -> Any:
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[*_SHARED, _renderer(settings)],
        wrapper_class=structlog.make_filtering_bound_logger(level(settings)),
        cache_logger_on_first_use=True,
    ).bind(**bound)


def route_stdlib(name: str, settings: Settings) -> None:
    """Sends a library's stdlib logging (rq's) through the same renderer, so one process writes
    one format. rq adds its own handlers only when the logger has none."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _renderer(settings),
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_SHARED],
        )
    )
    library = logging.getLogger(name)
    library.handlers = [handler]
    library.setLevel(level(settings))
    library.propagate = False


def redacted_url(url: str) -> str:
    """``rediss://rota:secret@host:6380/0?x`` -> ``rediss://rota:***@host:6380/0``."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if parts.password is not None:
        host = f"{parts.username or ''}:***@{host}"
    elif parts.username:
        host = f"{parts.username}@{host}"
    return f"{parts.scheme}://{host}{parts.path}"
