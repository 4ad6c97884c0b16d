"""The consumer group's backlog on every inbound stream (each partition, or ``rota:inbound``):
length, pending and lag, read in one round trip for ``rota stats`` and the scrape-time gauges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from worker import partitions
from worker.settings import Settings

NO_SUCH_KEY = "no such key"  # XINFO GROUPS on a stream that does not exist (yet)


@dataclass(frozen=True, slots=True)
class Backlog:
    """One inbound stream. Without the group (no worker started on it yet) pending is 0 and
    nothing of it was delivered, so its lag is its length."""

    stream: str
    length: int
    grouped: bool  # whether the consumer group exists on this stream
    pending: int  # delivered to a consumer, not yet acknowledged
    lag: int | None  # not yet delivered; None: Redis 6.2, which does not report it
    last_delivered: str  # the group's last-delivered-id ("" without the group)


def read(client: Any, settings: Settings) -> list[Backlog]:
    """Every inbound stream of these settings, in partition order."""
    names = partitions.inbound_streams(settings)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xlen(name)
        pipe.xinfo_groups(name)
    replies = pipe.execute(raise_on_error=False)
    return [
        _backlog(name, length, groups, settings.group)
        for name, length, groups in zip(names, replies[::2], replies[1::2], strict=True)
    ]


def _backlog(name: str, length: Any, groups: Any, group: str) -> Backlog:
    if isinstance(length, Exception):
        raise length
    if isinstance(groups, ResponseError) and NO_SUCH_KEY in str(groups):
        groups = []
    if isinstance(groups, Exception):
        raise groups
    found = [g for g in groups if text(g["name"]) == group]
    if not found:
        return Backlog(name, int(length), False, 0, int(length), "")
    info = found[0]
    lag = info.get("lag")
    return Backlog(
        stream=name,
        length=int(length),
        grouped=True,
        pending=int(info["pending"]),
        lag=None if lag is None else int(lag),
        last_delivered=text(info["last-delivered-id"]),
    )


def total_pending(backlogs: Sequence[Backlog]) -> int:
    return sum(b.pending for b in backlogs)


def total_lag(backlogs: Sequence[Backlog]) -> int | None:
    """The sum of every stream's lag; None when any is unknown."""
    lags = [b.lag for b in backlogs]
    return None if None in lags else sum(lag for lag in lags if lag is not None)


def text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
