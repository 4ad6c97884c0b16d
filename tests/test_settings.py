"""Settings that cannot work are bad input: ``rota`` exits 2 with one line naming the variable,
before it touches Redis. Every malformed URL given to ``rota`` here is refused before
connecting or, were it not, would fail to connect: none can reach a real server."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from tests.conftest import make_settings
from tests.ops import rota
from tests.redis_server import RedisServer
from worker.redis_url import problem
from worker.settings import Settings

UNREACHABLE = "redis://127.0.0.1:1/0"
PASSWORD = "s3cret-pw"
COMMAND = ("account", "set", "acme", "--admin", "boss")


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",
        "http://127.0.0.1:1/0",
        f"redis://rota:{PASSWORD}@127.0.0.1:abc/0",
        f"redis://rota:{PASSWORD}/x@127.0.0.1:1/0",  # a / in the password, not percent-encoded
        "redis://127.0.0.1:99999/0",
        f"redis://rota:{PASSWORD}@[::1:1/0",
        "redis://127.0.0.1:1/x",  # redis-py would quietly use database 0
        "redis://127.0.0.1:1/0?socket_timeout=soon",
        "redis+cluster://127.0.0.1:1/1",
        "unix://",
        "",
    ],
)
def test_malformed_redis_url_exits_2_with_one_line_naming_it_not_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    result = rota(monkeypatch, capsys, url, *COMMAND)

    assert result.code == 2, result.err
    assert result.err.startswith("rota: error: ROTA_REDIS_URL "), result.err
    assert len(result.err.splitlines()) == 1
    assert PASSWORD not in result.err


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://", "names no host"),  # redis-py: localhost
        ("redis://:6379/0", "names no host"),  # a host variable left empty
        ("redis://127.0.0.1:0/0", "port must be"),  # redis-py: 6379
        ("redis://127.0.0.1/0/1", "database"),  # redis-py: database 1
        ("redis+cluster://", "names no host"),
        ("rediss+cluster://127.0.0.1:7000?db=2", "database 0 only"),
        ("REDIS://127.0.0.1", "must start with redis://"),  # redis-py refuses it too
    ],
)
def test_urls_redis_py_would_read_as_another_server_or_database_are_refused(
    url: str, why: str
) -> None:
    found = problem(url)

    assert found is not None and why in found


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6380/0",
        "redis://rota:p%2Fw@redis.internal",
        "redis://[::1]:6379/2",
        "rediss://rota:pw@redis.internal:6380/0?ssl_ca_certs=/etc/rota/ca.pem",
        "unix:///run/redis/redis.sock?db=1",
        "redis+cluster://u:p@10.0.0.1:7000/0",
        "rediss+cluster://10.0.0.1:7000",
    ],
)
def test_the_documented_url_forms_are_accepted(url: str) -> None:
    assert problem(url) is None


def test_unknown_log_level_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = rota(monkeypatch, capsys, UNREACHABLE, *COMMAND, log_level="garbage")

    assert result.code == 2, result.err
    assert result.err.startswith("rota: error: ROTA_LOG_LEVEL: must be one of debug, info")


def test_log_level_is_read_in_any_case() -> None:
    assert make_settings(UNREACHABLE, log_level="WARNING").log_level == "warning"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"dead_stream": "rota:inbound"}, "ROTA_DEAD_STREAM"),
        ({"events_stream": "rota:inbound"}, "ROTA_EVENTS_STREAM"),
        ({"dead_stream": "rota:assignments"}, "ROTA_DEAD_STREAM"),
        ({"inbound_partitions": 4, "dead_stream": "rota:inbound:3"}, "ROTA_DEAD_STREAM"),
        ({"inbound_partitions": 4, "events_stream": "rota:inbound:0"}, "ROTA_EVENTS_STREAM"),
        ({"inbound_stream": "rota:dead"}, "ROTA_DEAD_STREAM"),
    ],
)
def test_one_stream_for_two_roles_is_refused(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        make_settings(UNREACHABLE, **overrides)

    assert f"{named} '" in str(refused.value)


def test_streams_beside_the_partitions_are_not_a_clash() -> None:
    settings = make_settings(UNREACHABLE, inbound_partitions=4, dead_stream="rota:inbound:4")

    assert settings.dead_stream == "rota:inbound:4"


def test_dead_stream_that_is_the_inbound_stream_exits_2_before_any_worker_reads(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # One bad entry dead-lettered onto the stream the workers read comes back without end.
    result = rota(
        monkeypatch, capsys, redis_server.url, "worker", "--burst", dead_stream="rota:inbound"
    )

    assert result.code == 2, result.err
    assert result.err == (
        "rota: error: ROTA_DEAD_STREAM 'rota:inbound' is also the stream of ROTA_INBOUND_STREAM\n"
    )


def test_settings_repr_masks_the_url_of_a_refused_setting() -> None:
    url = f"redis://rota:{PASSWORD}@127.0.0.1:abc/0"

    with pytest.raises(pydantic.ValidationError) as refused:
        Settings(_env_file=None, redis_url=url)  # type: ignore[call-arg]

    assert PASSWORD not in str(refused.value)  # what --traceback shows
