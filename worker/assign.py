"""One decision per message: builds the assign script's KEYS/ARGV, runs a batch, parses replies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from worker import keys, wire
from worker.connection import is_cluster
from worker.messages import Message, Rejection
from worker.record import REASONS
from worker.scripts import Scripts

# A number whose groups change between our calls again and again is retried this often.
MAX_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class Decision:
    user: str  # "" for unknown_disabled and no_admin
    reason: str
    at: int  # unix ms of the first decision of this message
    # True when this call decided; False when the message had been decided before and this is
    # that first decision repeated: the same decision, so equality leaves it out.
    new: bool = field(default=True, compare=False)


Outcome = Decision | Rejection | Exception

_REASONS = {reason.encode(): reason for reason in REASONS}
_NEW = {b"1": True, b"0": False}


def decision(reply: Any) -> Decision | None:
    """A decision reply, {user, reason, at, new}, checked part by part; None for any other
    shape. A user id that is not UTF-8 (only Redis edited by hand holds one) keeps its bytes
    as \\xNN escapes, the same each time."""
    if type(reply) is not list or len(reply) != 4:
        return None
    user, reason, at, new = reply
    if type(user) is not bytes or type(reason) is not bytes or type(at) is not bytes:
        return None
    text = _REASONS.get(reason)
    is_new = _NEW.get(new) if type(new) is bytes else None
    if text is None or is_new is None or not at.isdigit():
        return None
    return Decision(user.decode(errors="backslashreplace"), text, int(at), is_new)


def unexpected(reply: Any) -> ResponseError:
    return ResponseError(f"assign.lua replied {reply!r:.200}")


def number_keys(account: str, number: str) -> tuple[str, ...]:
    """KEYS[1..11] of assign.lua for one number."""
    return (
        keys.number(account, number),
        keys.members(account, number),
        keys.access(account, number),
        keys.cursor(account, number),
        keys.owners(account, number),
        keys.presence(account),
        keys.version(account),
        keys.rotation(account, number),
        keys.allowed(account, number),
        keys.compiled(account, number),
        keys.account_settings(account),
    )


PER_MESSAGE_ARGS = 3  # customer, NUMBER:MESSAGE_ID, now: ARGV[1..3]


@dataclass(frozen=True, slots=True)
class _NumberCall:
    """One number's part of every assign.lua call, plain and packed for the wire."""

    bucket: int  # the de-duplication time bucket the keys name
    sha: str  # the script's sha the packed head names
    keys: tuple[str, ...]  # every KEYS
    tail: tuple[Any, ...]  # ARGV after the per-message ones
    head: bytes  # the packed command up to the per-message ARGV
    packed_tail: bytes


class Assigner:
    """Decides batches of messages; remembers which groups each number names."""

    def __init__(self, scripts: Scripts, dedup_window_s: int) -> None:
        self._script = scripts.assign
        self._window_ms = dedup_window_s * 1000
        self._groups: dict[tuple[str, str], tuple[str, ...]] = {}
        self._calls: dict[tuple[str, str], _NumberCall] = {}

    def _number_call(self, message: Message, now_ms: int) -> _NumberCall:
        """What every call for this message's number shares, built again when the time bucket
        or the script's sha changes, or a reply drops it (other groups, unknown number)."""
        number = (message.account, message.number)
        bucket, sha = now_ms // self._window_ms, self._script.sha
        cached = self._calls.get(number)
        if cached is not None and cached.bucket == bucket and cached.sha == sha:
            return cached
        account, groups = message.account, self._groups.get(number, ())
        script_keys = (
            *number_keys(*number),
            keys.dedup(account, bucket),
            keys.dedup(account, bucket - 1),
            *(keys.group(account, name) for name in groups),
        )
        tail = ((bucket + 2) * self._window_ms, *groups)
        head = wire.packed_head(
            3 + len(script_keys) + PER_MESSAGE_ARGS + len(tail), "EVALSHA", sha,
            len(script_keys), *script_keys,
        )  # fmt: skip
        packed_tail = b"".join(wire.bulk(str(part).encode()) for part in tail)
        built = _NumberCall(bucket, sha, script_keys, tail, head, packed_tail)
        self._calls[number] = built
        return built

    def call(self, message: Message, now_ms: int) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        """KEYS and ARGV of assign.lua for one message (also what the benchmark replays)."""
        shared = self._number_call(message, now_ms)
        field = f"{message.number}:{message.message_id}"
        return shared.keys, (message.customer, field, now_ms, *shared.tail)

    def _packed(self, message: Message, now_ms: int) -> wire.Packed:
        """The EVALSHA of call(), in the Redis protocol: only the message's own arguments are
        packed per message, around the number's packed KEYS and trailing ARGV."""
        shared = self._number_call(message, now_ms)
        field = f"{message.number}:{message.message_id}"
        return b"".join(
            (
                shared.head,
                wire.bulk(message.customer.encode()),
                wire.bulk(field.encode()),
                wire.bulk(b"%d" % now_ms),
                shared.packed_tail,
            )
        )

    def _round_trip(
        self, client: Any, messages: Sequence[Message], now_ms: int, route: Any
    ) -> list[Any]:
        if route is None:
            return wire.execute(client, [self._packed(m, now_ms) for m in messages])
        pipe = client.pipeline(transaction=False)
        for message in messages:
            self._queue_routed(pipe, message, now_ms, route)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    def _queue_routed(self, pipe: Any, message: Message, now_ms: int, route: Any) -> None:
        script_keys, args = self.call(message, now_ms)
        # A cluster pipeline refuses evalsha() and would ask a node (COMMAND GETKEYS) where
        # each call goes; every key is in the account's slot, which names the master.
        # A MOVED or ASK reply is still followed: redis-py resends that call on its own.
        sha, node = self._script.sha, route(script_keys[0])
        pipe.execute_command(
            "EVALSHA", sha, len(script_keys), *script_keys, *args, target_nodes=node
        )

    def _outcome(self, message: Message, reply: Any) -> Outcome | None:
        """The outcome, or None when the call must be made again. Nothing of the reply is
        assumed: a shape the script never sends is a failed decision, not a crash."""
        if isinstance(reply, NoScriptError):
            return None
        if isinstance(reply, Exception):
            return reply
        decided = decision(reply)
        if decided is not None:
            return decided
        if type(reply) is not list or not reply or not all(type(p) is bytes for p in reply):
            return unexpected(reply)
        head, *rest = reply
        if head == b"!groups" and rest:
            return self._more_groups(message, rest)
        if head == b"!unknown_number" and not rest:
            self._calls.pop((message.account, message.number), None)
            detail = f"no settings for account {message.account} number {message.number}"
            return Rejection("unknown_number", detail)
        if head == b"!invalid_data" and len(rest) == 1:
            return Rejection("invalid_data", rest[0].decode(errors="backslashreplace"))
        return unexpected(reply)

    def _more_groups(self, message: Message, names: list[bytes]) -> Rejection | None:
        """Remembers the groups the number names; None: call again with them."""
        try:
            groups = tuple(name.decode() for name in names)
        except UnicodeDecodeError:
            return Rejection("invalid_data", "members or access name a group that is not UTF-8")
        number = (message.account, message.number)
        self._groups[number] = groups
        self._calls.pop(number, None)
        return None

    def decide(self, client: Any, messages: Sequence[Message], now_ms: int) -> list[Outcome]:
        """Decisions in the order given; one round trip unless a retry is needed.

        EVALSHA is sent directly rather than through Script-in-pipeline, which would cost a
        SCRIPT EXISTS round trip per batch; NOSCRIPT replies are reloaded and redone here.
        """
        outcomes: list[Outcome | None] = [None] * len(messages)
        todo = list(range(len(messages)))
        base = wire.unwrap(client)
        route = base.get_node_from_key if is_cluster(base) else None
        for _ in range(MAX_ATTEMPTS):
            replies = self._round_trip(client, [messages[i] for i in todo], now_ms, route)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # SCRIPT FLUSH or a restarted server: load once (on a cluster, on every
                # master), redo only those calls.
                self._script.sha = wire.script_load(client, self._script.script)
            for i, reply in zip(todo, replies, strict=True):
                outcomes[i] = self._outcome(messages[i], reply)
            todo = [i for i in todo if outcomes[i] is None]
            if not todo:
                break
        return [
            outcome if outcome is not None else ResponseError("groups changed during every try")
            for outcome in outcomes
        ]
