"""Decides a batch: one call of lua/decide.lua per number, every number in one round trip;
builds each call's KEYS/ARGV and parses its replies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.exceptions import NoScriptError, ResponseError

from worker import keys
from worker.messages import Message, Rejection
from worker.record import REASONS
from worker.scripts import Scripts
from worker.transport import Argument, Command, Transport

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


def decision(reply: object) -> Decision | None:
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


def unexpected(reply: object) -> ResponseError:
    return ResponseError(f"decide.lua replied {reply!r:.200}")


def number_keys(account: str, number: str) -> tuple[str, ...]:
    """KEYS[1..11] of decide.lua for one number."""
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


MESSAGE = "message"  # the kind of entry decide.lua decides (the first of its three ARGV)
PER_ENTRY_REPLY = 4  # strings decide.lua answers per entry


@dataclass(frozen=True, slots=True)
class NumberCall:
    """One call of decide.lua: the messages of one number, in batch order."""

    number: tuple[str, str]  # account, number
    positions: tuple[int, ...]  # where each message is in the batch
    keys: tuple[str, ...]
    args: tuple[Argument, ...]


class Assigner:
    """Decides batches of messages; remembers which groups each number names."""

    def __init__(self, scripts: Scripts, dedup_window_s: int) -> None:
        self._script = scripts.decide
        self._window_ms = dedup_window_s * 1000
        self._groups: dict[tuple[str, str], tuple[str, ...]] = {}

    def calls(self, messages: Sequence[Message], now_ms: int) -> list[NumberCall]:
        """One call per number, in the order numbers first appear (also what the benchmark
        replays)."""
        by_number: dict[tuple[str, str], list[int]] = {}
        for i, message in enumerate(messages):
            by_number.setdefault((message.account, message.number), []).append(i)
        return [
            self._call(number, positions, messages, now_ms)
            for number, positions in by_number.items()
        ]

    def _call(
        self,
        number: tuple[str, str],
        positions: Sequence[int],
        messages: Sequence[Message],
        now_ms: int,
    ) -> NumberCall:
        account, bucket = number[0], now_ms // self._window_ms
        groups = self._groups.get(number, ())
        script_keys = (
            *number_keys(*number),
            keys.dedup(account, bucket),
            keys.dedup(account, bucket - 1),
            *(keys.group(account, name) for name in groups),
        )
        args: list[Argument] = [now_ms, (bucket + 2) * self._window_ms, len(groups), *groups]
        for i in positions:
            message = messages[i]
            args += (MESSAGE, message.customer, f"{message.number}:{message.message_id}")
        return NumberCall(number, tuple(positions), script_keys, tuple(args))

    def command(self, call: NumberCall) -> Command:
        return ("EVALSHA", self._script.sha, len(call.keys), *call.keys, *call.args)

    def decide(
        self, transport: Transport, messages: Sequence[Message], now_ms: int
    ) -> list[Outcome]:
        """Decisions in the order given; one round trip unless a retry is needed.

        EVALSHA is sent directly rather than through Script-in-pipeline, which would cost a
        SCRIPT EXISTS round trip per batch; NOSCRIPT replies are reloaded and redone here.
        """
        outcomes: list[Outcome | None] = [None] * len(messages)
        todo = self.calls(messages, now_ms)
        for _ in range(MAX_ATTEMPTS):
            replies = transport.execute([self.command(call) for call in todo])
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # SCRIPT FLUSH or a restarted server: load once (on a cluster, on every
                # master), redo only those calls.
                self._script.sha = transport.script_load(_text(self._script.script))
            again = []
            for call, reply in zip(todo, replies, strict=True):
                decided = self._outcomes(call, messages, reply)
                if decided is None:
                    again.append(self._call(call.number, call.positions, messages, now_ms))
                    continue
                for i, outcome in zip(call.positions, decided, strict=True):
                    outcomes[i] = outcome
            todo = again
            if not todo:
                break
        return [
            outcome if outcome is not None else ResponseError("groups changed during every try")
            for outcome in outcomes
        ]

    def _outcomes(
        self, call: NumberCall, messages: Sequence[Message], reply: object
    ) -> list[Outcome] | None:
        """Each message's outcome, or None when the call must be made again. Nothing of the
        reply is assumed: a shape the script never sends is a failed decision, not a crash."""
        if isinstance(reply, NoScriptError):
            return None
        count = len(call.positions)
        if isinstance(reply, Exception):
            return [reply] * count
        if type(reply) is not list:
            return [unexpected(reply)] * count
        if len(reply) == 1 and type(reply[0]) is list:  # one answer for the whole call
            head, names = reply[0][:1], reply[0][1:]
            if head == [b"!groups"] and names and all(type(n) is bytes for n in names):
                failed = self._more_groups(call.number, names)
                return None if failed is None else [failed] * count
            return [unexpected(reply)] * count
        if len(reply) != PER_ENTRY_REPLY * count:
            return [unexpected(reply)] * count
        return [
            self._outcome(messages[i], reply[at : at + PER_ENTRY_REPLY])
            for i, at in zip(call.positions, range(0, len(reply), PER_ENTRY_REPLY), strict=True)
        ]

    def _outcome(self, message: Message, reply: list[object]) -> Outcome:
        decided = decision(reply)
        if decided is not None:
            return decided
        head, detail, at, new = reply
        if not all(type(part) is bytes for part in reply) or (at, new) != (b"", b""):
            return unexpected(reply)
        if head == b"!unknown_number" and detail == b"":
            text = f"no settings for account {message.account} number {message.number}"
            return Rejection("unknown_number", text)
        if head == b"!invalid_data" and isinstance(detail, bytes):
            return Rejection("invalid_data", detail.decode(errors="backslashreplace"))
        return unexpected(reply)

    def _more_groups(self, number: tuple[str, str], names: list[bytes]) -> Rejection | None:
        """Remembers the groups the number names; None: call again with them."""
        try:
            groups = tuple(name.decode() for name in names)
        except UnicodeDecodeError:
            return Rejection("invalid_data", "members or access name a group that is not UTF-8")
        self._groups[number] = groups
        return None


def _text(script: str | bytes | memoryview) -> str:
    return script if isinstance(script, str) else bytes(script).decode()
