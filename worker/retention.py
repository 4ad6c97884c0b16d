"""What an inbound stream keeps, and where Rota's consumer group starts again if it is lost.

A worker sweeps each inbound stream as it starts, every ROTA_INBOUND_TRIM_EVERY_S, and as it
leaves. A sweep notes the id up to which Rota's group has acknowledged every entry, that is
published its decision or dead letter (keys.published): a group destroyed by hand is created
again there (stream.ensure_group), so nothing still pending is skipped and only what was
acknowledged since the last sweep is read again (and repeats its first decision). Then it
trims, approximately (XTRIM MINID ~), the entries that every group on the stream has
acknowledged and that are older than ROTA_INBOUND_KEEP_S. Without Rota's group it trims
nothing: its recreation may need every entry.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from worker import keys
from worker.settings import Settings
from worker.transport import Transport

StreamId = tuple[int, int]  # milliseconds, sequence
MAX_SEQUENCE = 2**64 - 1
# Entries one XTRIM may free: a bounded pause for Redis after a long backlog, and with the
# default timer still far more than one Redis takes in meanwhile.
TRIM_LIMIT = 1_000_000


def parse_id(entry_id: bytes | str) -> StreamId:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, sequence = text.partition("-")
    return int(ms), int(sequence or 0)


def format_id(entry_id: StreamId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def before(entry_id: StreamId) -> StreamId:
    """The greatest id below ``entry_id``."""
    ms, sequence = entry_id
    if sequence:
        return ms, sequence - 1
    return (ms - 1, MAX_SEQUENCE) if ms else (0, 0)


def acknowledged_up_to(client: Any, stream: str, group: dict[str, Any]) -> StreamId:
    """The id up to which this group (an XINFO GROUPS entry) acknowledged every entry."""
    last = parse_id(group["last-delivered-id"])
    if int(group["pending"]) == 0:
        return last
    oldest = client.xpending(stream, group["name"])["min"]
    if oldest is None:  # acknowledged since XINFO GROUPS: all up to ``last`` then
        return last
    return min(last, before(parse_id(oldest)))


def sweep(transport: Transport, settings: Settings, now_ms: int) -> StreamId | None:
    """Notes how far Rota's group got and trims what every group acknowledged; the id below
    which entries may go, or None when Rota's group (or the stream) is missing."""
    stream, client = settings.inbound_stream, transport.client
    try:
        groups = client.xinfo_groups(stream)
    except ResponseError as error:
        if "no such key" in str(error):
            return None
        raise
    reached = {_text(g["name"]): acknowledged_up_to(client, stream, g) for g in groups}
    ours = reached.get(settings.group)
    if ours is None:
        return None
    kept_from = (now_ms - settings.inbound_keep_s * 1000, 0)
    below = min(*reached.values(), kept_from)
    replies = transport.execute(
        [
            ("SET", keys.published(stream), format_id(ours)),
            ("XTRIM", stream, "MINID", "~", format_id(below), "LIMIT", TRIM_LIMIT),
        ],
    )
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return below


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
