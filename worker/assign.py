"""Decides a batch: one call of lua/decide.lua per account, every account in one round trip;
builds each call's KEYS/ARGV and parses its replies."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.exceptions import NoScriptError, ResponseError

from worker import keys, scripts
from worker.messages import SWEEP, Message, Rejection
from worker.record import REASONS, Record
from worker.scripts import Scripts
from worker.transport import Argument, Command, Transport

# A number whose groups change between our calls again and again is retried this often.
MAX_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class Decision:
    user: str  # "" for unknown_disabled, no_admin and activity that moves nobody
    reason: str  # a rule's reason, or the activity's kind (heartbeat, replied, closed, transfer)
    at: int  # unix ms of the first decision of this entry
    # True when this call decided; False when the entry had been decided before and this is
    # that first decision repeated: the same decision, so equality leaves it out.
    new: bool = field(default=True, compare=False)
    previous: str = ""  # a transfer's: the user who held the conversation
    event_id: str = ""  # a transfer's: the event's id on the events stream

    @property
    def published(self) -> bool:
        """Whether the decision goes on the events stream (heartbeats, replies and closes are
        only acknowledged)."""
        return self.reason not in QUIET


Outcome = Decision | Rejection | Exception

QUIET = ("heartbeat", "replied", "closed", *SWEEP)
_REASONS = {reason.encode(): reason for reason in (*REASONS, *QUIET)}


@dataclass(frozen=True, slots=True)
class Move:
    """A conversation given to a user without a new message (from the queue, by a timer), as
    decide.lua wrote it to the account's outbox."""

    account: str
    number: str
    customer: str
    user: str
    reason: str  # round_robin, admin_fallback or reply_timeout
    at: int
    previous: str
    event_id: str
    outbox_id: str
    after: int  # the batch position after whose decision it is published; -1: before all
    waited_ms: int | None = None  # how long it had waited in the queue

    def record(self) -> Record:
        return Record(
            self.account,
            self.number,
            self.customer,
            "",
            "",
            self.user,
            self.reason,
            self.at,
            self.previous,
            self.event_id,
        )


@dataclass(slots=True)
class Decided:
    """A batch's outcomes, in the order given; the moves, in the order they happened; and the
    accounts left with timers or an outbox (for the sweeps)."""

    outcomes: list[Outcome]
    moves: list[Move] = field(default_factory=list)
    timed: set[str] = field(default_factory=set)


_NEW = {b"1": True, b"0": False}


def decision(reply: Sequence[object], account: str) -> Decision | None:
    """One entry's six strings, {user, reason, at, new, previous, event}, checked part by
    part; None for any other shape. A user id that is not UTF-8 (only Redis edited by hand
    holds one) keeps its bytes as \\xNN escapes, the same each time."""
    user, reason, at, new, previous, event = reply
    if not all(type(part) is bytes for part in reply):
        return None
    assert isinstance(user, bytes) and isinstance(at, bytes) and isinstance(event, bytes)
    assert isinstance(previous, bytes)
    text = _REASONS.get(reason) if isinstance(reason, bytes) else None
    is_new = _NEW.get(new) if isinstance(new, bytes) else None
    if text is None or is_new is None or not at.isdigit() or not (event == b"" or event.isdigit()):
        return None
    return Decision(
        user.decode(errors="backslashreplace"),
        text,
        int(at),
        is_new,
        previous.decode(errors="backslashreplace"),
        event_id(account, event.decode()) if event else "",
    )


def event_id(account: str, sequence: str) -> str:
    """``ACCOUNT:N``: N from the account's event sequence (what the contract calls unique)."""
    return f"{account}:{sequence}"


def unexpected(reply: object) -> ResponseError:
    return ResponseError(f"decide.lua replied {reply!r:.200}")


def account_keys(account: str, bucket: int) -> tuple[str, ...]:
    """KEYS[1..9] of decide.lua for one account."""
    return (
        keys.presence(account),
        keys.heard(account),
        keys.account_settings(account),
        keys.version(account),
        keys.dedup(account, bucket),
        keys.dedup(account, bucket - 1),
        keys.event_sequence(account),
        keys.timers(account),
        keys.outbox(account),
    )


def number_keys(account: str, number: str) -> tuple[str, ...]:
    """The fourteen KEYS of decide.lua for one number of the call."""
    return (
        keys.number(account, number),
        keys.members(account, number),
        keys.access(account, number),
        keys.cursor(account, number),
        keys.owners(account, number),
        keys.rotation(account, number),
        keys.allowed(account, number),
        keys.compiled(account, number),
        keys.open_conversations(account, number),
        keys.open_counts(account, number),
        keys.replied(account, number),
        keys.queue(account, number),
        keys.queued(account, number),
        keys.tried(account, number),
    )


PER_ENTRY_REPLY, PER_MOVE_REPLY = 6, 9  # strings decide.lua answers per entry, per move


@dataclass(frozen=True, slots=True)
class AccountCall:
    """One call of decide.lua: the entries of one account, in batch order."""

    account: str
    positions: tuple[int, ...]  # where each entry is in the batch
    keys: tuple[str, ...]
    args: tuple[Argument, ...]
    # Entries repeating an entry of the call (the same de-duplication field), not sent: each
    # gets the first one's decision again, as a message decided before does.
    repeats: tuple[tuple[int, int], ...] = ()  # (position, position of the first)


def sent_ms(inbound_id: str) -> int:
    """The unix ms of a stream entry id (when the producer added it)."""
    head = inbound_id.partition("-")[0]
    return int(head) if head.isdigit() else 0


class Assigner:
    """Decides batches of entries; remembers which groups each account's numbers name."""

    def __init__(self, scripts: Scripts, dedup_window_s: int) -> None:
        self._script = scripts.decide
        self._window_ms = dedup_window_s * 1000
        self._groups: dict[str, tuple[str, ...]] = {}

    def calls(self, messages: Sequence[Message], now_ms: int) -> list[AccountCall]:
        """One call per account, in the order accounts first appear (also what the benchmark
        replays)."""
        by_account: dict[str, list[int]] = {}
        for i, message in enumerate(messages):
            by_account.setdefault(message.account, []).append(i)
        return [
            self._call(account, positions, messages, now_ms)
            for account, positions in by_account.items()
        ]

    def _call(
        self, account: str, positions: Sequence[int], messages: Sequence[Message], now_ms: int
    ) -> AccountCall:
        bucket = now_ms // self._window_ms
        groups = self._groups.get(account, ())
        numbers: dict[str, int] = {}  # number -> j, in order of first appearance
        entries: list[Argument] = []
        last: dict[tuple[str, str], int] = {}  # (number, customer) -> its last entry so far
        first_of: dict[str, int] = {}  # de-duplication field -> the batch position sent
        sent: list[int] = []
        repeats: list[tuple[int, int]] = []
        for i in positions:
            message = messages[i]
            swept = message.kind in SWEEP
            first = i if swept else first_of.setdefault(message.dedup_field, i)
            if first != i:
                repeats.append((i, first))
                continue
            sent.append(i)
            place = len(sent)
            j = 0
            if message.number:
                j = numbers.setdefault(message.number, len(numbers) + 1)
            conversation = (message.number, message.customer)
            earlier = 0
            if j and message.customer:
                earlier = last.get(conversation, 0)
                last[conversation] = place
            entries += (
                message.kind,
                j,
                message.customer,
                "" if swept else message.dedup_field,
                message.user,
                earlier,
                sent_ms(message.inbound_id),
            )
        script_keys = (
            *account_keys(account, bucket),
            *(key for number in numbers for key in number_keys(account, number)),
            *(keys.group(account, name) for name in groups),
        )
        head: list[Argument] = [now_ms, (bucket + 2) * self._window_ms, account, len(numbers)]
        args = (*head, len(groups), *numbers, *groups, *entries)
        return AccountCall(account, tuple(sent), script_keys, args, tuple(repeats))

    def command(self, call: AccountCall) -> Command:
        return ("EVALSHA", self._script.sha, len(call.keys), *call.keys, *call.args)

    def decide(
        self, transport: Transport, messages: Sequence[Message], now_ms: int
    ) -> list[Outcome]:
        """Decisions in the order given (what ``decide_batch`` decides, without the rest)."""
        return self.decide_batch(transport, messages, now_ms).outcomes

    def decide_batch(
        self, transport: Transport, messages: Sequence[Message], now_ms: int
    ) -> Decided:
        """Decisions in the order given, and the moves; one round trip unless a retry is
        needed.

        EVALSHA is sent directly rather than through Script-in-pipeline, which would cost a
        SCRIPT EXISTS round trip per batch; NOSCRIPT replies are reloaded and redone here.
        """
        outcomes: list[Outcome | None] = [None] * len(messages)
        done = Decided([])
        todo = self.calls(messages, now_ms)
        # Each number of a call may find groups missing in its turn.
        numbers = len({(m.account, m.number) for m in messages})
        for _ in range(MAX_ATTEMPTS + numbers):
            replies = transport.execute([self.command(call) for call in todo])
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # SCRIPT FLUSH or a restarted server: load once (on a cluster, on every
                # master), redo only those calls.
                self._script.sha = transport.script_load(scripts.text(self._script))
            again = []
            for call, reply in zip(todo, replies, strict=True):
                decided = self._outcomes(call, messages, reply, now_ms, done)
                if decided is None:
                    every = sorted((*call.positions, *(i for i, _ in call.repeats)))
                    again.append(self._call(call.account, every, messages, now_ms))
                    continue
                for i, outcome in zip(call.positions, decided, strict=True):
                    outcomes[i] = outcome
                for i, first in call.repeats:
                    outcomes[i] = _again(outcomes[first])
            todo = again
            if not todo:
                break
        done.outcomes = [
            outcome if outcome is not None else ResponseError("groups changed during every try")
            for outcome in outcomes
        ]
        return done

    def _outcomes(
        self,
        call: AccountCall,
        messages: Sequence[Message],
        reply: object,
        now_ms: int,
        done: Decided,
    ) -> list[Outcome] | None:
        """Each entry's outcome (the moves and the timed flag into ``done``), or None when the
        call must be made again. Nothing of the reply is assumed: a shape the script never
        sends is a failed decision, not a crash."""
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
                failed = self._more_groups(call.account, names)
                return None if failed is None else [failed] * count
            return [unexpected(reply)] * count
        entries_end = PER_ENTRY_REPLY * count
        moves = _moves(call, reply[entries_end:-1], now_ms)
        if len(reply) <= entries_end or moves is None or reply[-1] not in (b"0", b"1"):
            return [unexpected(reply)] * count
        done.moves.extend(moves)
        if reply[-1] == b"1":
            done.timed.add(call.account)
        return [
            self._outcome(messages[i], reply[at : at + PER_ENTRY_REPLY])
            for i, at in zip(call.positions, range(0, entries_end, PER_ENTRY_REPLY), strict=True)
        ]

    def _outcome(self, message: Message, reply: list[object]) -> Outcome:
        decided = decision(reply, message.account)
        if decided is not None:
            return decided
        head, detail, *rest = reply
        if not all(type(part) is bytes for part in reply) or any(rest):
            return unexpected(reply)
        if head == b"!unknown_number" and detail == b"":
            text = f"no settings for account {message.account} number {message.number}"
            return Rejection("unknown_number", text)
        if head == b"!invalid_data" and isinstance(detail, bytes):
            return Rejection("invalid_data", detail.decode(errors="backslashreplace"))
        return unexpected(reply)

    def _more_groups(self, account: str, names: list[bytes]) -> Rejection | None:
        """Remembers the groups the account's numbers name; None: call again with them."""
        try:
            groups = tuple(name.decode() for name in names)
        except UnicodeDecodeError:
            return Rejection("invalid_data", "members or access name a group that is not UTF-8")
        self._groups[account] = tuple(dict.fromkeys((*self._groups.get(account, ()), *groups)))
        return None


def _moves(call: AccountCall, reply: Sequence[object], now_ms: int) -> list[Move] | None:
    """The moves of one call's reply (nine strings each), or None for any other shape."""
    texts = [part.decode(errors="backslashreplace") for part in reply if type(part) is bytes]
    if len(reply) % PER_MOVE_REPLY or len(texts) != len(reply):
        return None
    moves = []
    for at in range(0, len(texts), PER_MOVE_REPLY):
        parts = texts[at : at + PER_MOVE_REPLY]
        position, outbox_id, number, customer, user, reason, previous, event, waited = parts
        if not (position.isdigit() and int(position) <= len(call.positions) and event.isdigit()):
            return None
        after = call.positions[int(position) - 1] if int(position) else -1
        moves.append(
            Move(
                call.account,
                number,
                customer,
                user,
                reason,
                now_ms,
                previous,
                event_id(call.account, event),
                outbox_id,
                after,
                int(waited) if waited.isdigit() else None,
            )
        )
    return moves


def _again(outcome: Outcome | None) -> Outcome | None:
    """The outcome of an entry repeated within a batch: the first one's, not new."""
    if isinstance(outcome, Decision):
        return dataclasses.replace(outcome, new=False)
    return outcome
