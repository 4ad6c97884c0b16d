"""Dead letters: read them, show them with customers masked, replay each exactly once.

Every function takes a bytes client: a dead letter's fields may not be UTF-8.

A replay moves each letter with lua/replay.lua, which adds it to its inbound stream and
deletes it from the dead stream in one step, so of replays running at once exactly one moves
it. A script touches one Cluster slot only; when the dead stream and the letter's inbound
stream are in different slots (or the letter has more fields than Lua can unpack), the replay
first takes a claim on the letter (SET NX, expiring), then checks it is still dead, adds it,
deletes it and drops the claim: concurrent replays still move it once, and a replay that dies
midway leaves it dead (or, between the add and the delete, replayed and still dead: replayed
twice if replayed again), never lost.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot

from worker import keys, partitions
from worker.connection import is_cluster
from worker.messages import Fields
from worker.scripts import Scripts
from worker.settings import Settings
from worker.words import mask

DEAD_LETTER_FIELDS = (b"error", b"detail", b"inbound_id", b"deliveries")
CUSTOMER_FIELDS = ("from", "customer")  # masked when shown; `customer` is CRM activity's
PAGE = 500  # letters read, and replayed in one round trip, at a time
# Lua unpacks at most 8,000 values in one call: bigger letters take the claimed way.
MAX_SCRIPT_ARGS = 7_000
CLAIM_MS = 60_000  # longer than a claimed move takes; a replay that died frees it this late

Letter = tuple[bytes, Fields]


def letters(client: Any, settings: Settings, count: int) -> list[Letter]:
    """The oldest ``count`` dead letters, oldest first."""
    found: list[Letter] = client.xrange(settings.dead_stream, count=count)
    return found


def shown(dead_id: bytes, fields: Fields, unmasked: bool = False) -> dict[str, str]:
    """A letter as text (bytes that are not UTF-8 as ``\\x`` escapes), its id first. The
    customer is masked to the last 4 digits, in its own field and wherever ``detail`` quotes
    it, unless ``unmasked``."""
    text = {_printable(name): _printable(value) for name, value in fields.items()}
    if not unmasked:
        for name in CUSTOMER_FIELDS:
            customer = text.get(name)
            if customer:
                text[name] = mask(customer)
                if "detail" in text:
                    text["detail"] = text["detail"].replace(customer, mask(customer))
    return {"id": _printable(dead_id), **text}


def original(dead_id: bytes, fields: Fields) -> Fields:
    """The inbound entry a letter came from: its fields without the dead-letter ones (a
    letter with no others gets ``replayed_from``, since XADD needs a field)."""
    kept = {name: value for name, value in fields.items() if name not in DEAD_LETTER_FIELDS}
    return kept or {b"replayed_from": dead_id}


def replay(client: Any, settings: Settings, count: int) -> list[tuple[str, str]]:
    """Puts up to ``count`` dead letters back, oldest first, each on the inbound stream of
    its account (worker.partitions); returns (dead id, new inbound id) pairs."""
    return Replayer(client, settings).replay(count)


class Replayer:
    def __init__(self, client: Any, settings: Settings) -> None:
        self._client, self._settings = client, settings
        self._script = Scripts(client).replay
        self._cluster = is_cluster(client)
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"

    def replay(self, count: int) -> list[tuple[str, str]]:
        dead = self._settings.dead_stream
        newest = self._client.xrevrange(dead, count=1)
        if not newest:
            return []
        # Letters that die again while this runs wait for the next replay: no endless loop.
        last = newest[0][0]
        moved: list[tuple[str, str]] = []
        start: bytes | str = "-"
        while len(moved) < count:
            size = min(PAGE, count - len(moved))
            page: list[Letter] = self._client.xrange(dead, min=start, max=last, count=size)
            if not page:
                break
            for (dead_id, _), new_id in zip(page, self._move(page), strict=True):
                if new_id is not None:  # None: another replay moved it
                    moved.append((dead_id.decode(), new_id.decode()))
            start = b"(" + page[-1][0]
        return moved

    def _move(self, page: Sequence[Letter]) -> list[bytes | None]:
        """Each letter's new id, in order: runs of letters the script can move in one round
        trip each, the others one by one."""
        results: list[bytes | None] = []
        run: list[tuple[bytes, str, Fields]] = []
        for dead_id, fields in page:
            target = partitions.inbound_stream(self._settings, fields.get(b"account"))
            letter = (dead_id, target, original(dead_id, fields))
            if self._scripted(*letter):
                run.append(letter)
                continue
            results.extend(self._run(run))
            run = []
            results.append(self._move_claimed(*letter))
        results.extend(self._run(run))
        return results

    def _scripted(self, dead_id: bytes, target: str, fields: Fields) -> bool:
        if 1 + 2 * len(fields) > MAX_SCRIPT_ARGS:
            return False
        dead = self._settings.dead_stream
        return not self._cluster or key_slot(dead.encode()) == key_slot(target.encode())

    def _run(self, run: Sequence[tuple[bytes, str, Fields]]) -> list[bytes | None]:
        """lua/replay.lua for each letter: in one pipeline on a single Redis; on a Cluster,
        each call to its slot's master."""
        if self._cluster:
            return [self._call(self._client, *letter) for letter in run]
        if not run:
            return []
        pipe = self._client.pipeline(transaction=False)
        for letter in run:
            self._call(pipe, *letter)
        return list(pipe.execute())

    def _call(self, client: Any, dead_id: bytes, target: str, fields: Fields) -> Any:
        dead = self._settings.dead_stream
        return self._script(keys=[dead, target], args=[dead_id, *_flat(fields)], client=client)

    def _move_claimed(self, dead_id: bytes, target: str, fields: Fields) -> bytes | None:
        """The same move in steps, under a claim only one replay gets. A replay that gets it
        after another dropped it finds the letter gone: the claim is dropped only after the
        letter is deleted."""
        client, dead = self._client, self._settings.dead_stream
        claim = keys.replay_claim(dead, dead_id.decode())
        if not client.set(claim, self._token, nx=True, px=CLAIM_MS):
            return None
        try:
            if not client.xrange(dead, min=dead_id, max=dead_id):
                return None
            new_id: bytes = client.xadd(target, fields)
            client.xdel(dead, dead_id)
            return new_id
        finally:
            client.delete(claim)


def _flat(fields: Fields) -> list[bytes]:
    return [part for pair in fields.items() for part in pair]


def _printable(value: bytes) -> str:
    return value.decode(errors="backslashreplace")
