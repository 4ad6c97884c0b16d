"""Which inbound stream a message goes to: the partition function, no Redis.

With ``ROTA_INBOUND_PARTITIONS`` = P > 1 the inbound stream is split into P streams
``rota:inbound:0`` .. ``rota:inbound:P-1`` (``ROTA_INBOUND_STREAM`` + ``:`` + index), so that
on a Redis Cluster the inbound load spreads over the masters. A message of account A goes to
partition ``crc32(A as UTF-8) mod P`` (CRC-32 as in zlib, gzip, PNG and Java's
java.util.zip.CRC32, unsigned), so all messages of one account keep their order on one
stream. With P = 1 (the default) the stream is ``rota:inbound`` itself.

Example: crc32("acme") = 96778814, and 96778814 mod 8 = 6: with 8 partitions acme's
messages go to ``rota:inbound:6``.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from worker.words import DEFAULT_ACCOUNT

if TYPE_CHECKING:  # worker.settings checks its stream names with stream_name
    from worker.settings import Settings


def partition(account: str | bytes, partitions: int) -> int:
    """The partition index of an account: crc32 of its UTF-8 bytes, mod ``partitions``."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    data = account.encode() if isinstance(account, str) else account
    return zlib.crc32(data) % partitions


def stream_name(inbound_stream: str, index: int, partitions: int) -> str:
    return inbound_stream if partitions == 1 else f"{inbound_stream}:{index}"


def inbound_stream(settings: Settings, account: str | bytes | None) -> str:
    """The stream a message of this account goes to (no account: the default account's)."""
    count = settings.inbound_partitions
    index = partition(account or DEFAULT_ACCOUNT, count)
    return stream_name(settings.inbound_stream, index, count)


def inbound_streams(settings: Settings) -> list[str]:
    """Every inbound stream, in partition order; workers read them all."""
    count = settings.inbound_partitions
    return [stream_name(settings.inbound_stream, i, count) for i in range(count)]
