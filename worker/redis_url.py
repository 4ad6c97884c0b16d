"""The forms of ROTA_REDIS_URL, checked when the settings are built, so a malformed URL is bad
input (exit 2) rather than a traceback, and never a silent default (redis-py reads
``redis://h:6379/x`` as database 0 and ``redis://`` as localhost).

``redis://`` and ``rediss://`` (TLS) name one server, ``unix://`` its socket, and
``redis+cluster://`` / ``rediss+cluster://`` a Redis Cluster by any one of its nodes. Problems are
described without quoting the URL: it may hold a password.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from redis.connection import parse_url

_redis_py_parse: Callable[[str], dict[str, Any]] = parse_url

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)
_DATABASE_PATH = re.compile(r"(/[0-9]*)?")


def cluster_url(url: str) -> str | None:
    """``redis+cluster://h:p`` -> ``redis://h:p`` (what RedisCluster.from_url takes); None for
    a URL that does not name a cluster."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower()) if sep else None
    return f"{plain}://{rest}" if plain else None


def _form_problem(url: str) -> str | None:
    """What is wrong with the URL's scheme, host, port or database path."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in SCHEMES:
        return "must start with " + ", ".join(f"{name}://" for name in SCHEMES)
    plain = cluster_url(url) or url
    try:
        parts = urlsplit(plain)
    except ValueError:
        return "is not a valid URL: unbalanced [ ] around the host"
    if scheme == "unix":
        return None if parts.path else "needs the socket's path: unix:///path/to/redis.sock"
    if not parts.hostname:
        return "names no host"
    try:
        valid_port = parts.port != 0  # not a number, or out of range, raises
    except ValueError:
        valid_port = False
    if not valid_port:
        # A password holding / ? # ends the host part early: what follows its : is no port.
        return "port must be a number from 1 to 65535 (percent-encode / ? # in a password)"
    if _DATABASE_PATH.fullmatch(parts.path) is None:
        return "database (the path /N) must be a whole number"
    return None


def _options_problem(url: str) -> str | None:
    """redis-py's own check of the URL's options (``?ssl_ca_certs=...&db=...``), and a Redis
    Cluster's one database."""
    plain = cluster_url(url)
    try:
        options = _redis_py_parse(plain or url)
    except ValueError as invalid:
        text = str(invalid)
        # redis-py names the option, never its value; anything else is not quoted.
        return text if text.startswith("Invalid value for '") else "is not a URL redis-py accepts"
    if plain is not None and options.get("db", 0) != 0:
        return "a Redis Cluster has database 0 only"
    return None


def problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL Rota can use, in a few words; None when it is one."""
    return _form_problem(url) or _options_problem(url)
