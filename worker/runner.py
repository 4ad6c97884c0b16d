"""The worker loop: claim what dead consumers left, read new entries, decide the batch in one
pipeline, publish decisions and dead letters and acknowledge in another, stop cleanly."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from worker import chats, connection, partitions, redis_setup, retention, stream, sweep, vanished
from worker.assign import Assigner, Decided, Decision, Move
from worker.clock import Clock, ServerClock
from worker.connection import is_passing_cluster_error, refusal, server_refusal
from worker.log import level
from worker.messages import Message, Rejection, parse
from worker.metrics import Metrics
from worker.record import Record
from worker.scripts import Scripts
from worker.settings import Settings
from worker.stream import Entry
from worker.words import mask

if TYPE_CHECKING:
    from worker.webhook import Webhooks

BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 5.0
STALE_CONSUMER_IDLE_MS = 3_600_000
T = TypeVar("T")


def default_consumer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def dead_letter(entry: Entry, error: str, detail: str) -> dict[Any, Any]:
    return {
        **entry.fields,
        b"error": error,
        b"detail": detail,
        b"inbound_id": entry.inbound_id,
        b"deliveries": entry.deliveries,
    }


def webhooks_for(client: Any, settings: Settings) -> Webhooks | None:
    """The webhook enqueuer when ROTA_WEBHOOK_URL is set (rq is imported only then)."""
    if not settings.webhook_url:
        return None
    from worker.webhook import Webhooks

    return Webhooks(client, settings)


class BudgetSpent(Exception):
    """The shutdown budget ran out while Redis could not be reached: the worker gives up,
    leaving what it holds pending for another worker to claim."""


@dataclass(eq=False)
class Lane:
    """One inbound partition as the loop sees it: its stream (``settings.inbound_stream``),
    its claimer, what Redis refused (tried again first), what was published and waits for its
    XACK, and its timers. Decisions, dead letters and acknowledgements stay on its stream."""

    settings: Settings
    claimer: stream.Claimer
    held: list[Entry] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    unpublished: vanished.Unpublished = field(default_factory=vanished.Unpublished)
    next_claim: float = 0.0
    next_trim: float = 0.0

    @property
    def stream(self) -> str:
        return self.settings.inbound_stream


class Runner:
    """The worker over every inbound partition (``ROTA_INBOUND_PARTITIONS``), one lane each,
    on one connection, one clock and one set of metrics.

    With one partition each step reads blocking up to ROTA_BLOCK_MS. With more, partitions may
    live on different Cluster masters and one XREADGROUP may not span slots, so lanes are read
    in turn without blocking; only when every lane came back empty does the worker block, at
    most ROTA_PARTITION_BLOCK_MS, on one lane (a different one each time), which bounds the
    extra latency an idle worker adds.
    """

    def __init__(
        self,
        client: Any,
        settings: Settings,
        log: Any,
        consumer: str | None = None,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ):
        self.client = client
        self.clock = clock or ServerClock(client)  # tests inject their own
        self.transport = connection.transport(client)  # the hot path's, for every lane
        self.settings = settings
        self.consumer = consumer or settings.consumer or default_consumer()
        self.log = log.bind(consumer=self.consumer)
        self.metrics = metrics or Metrics()
        self.webhooks = webhooks_for(client, settings)
        self._debug = level(settings) <= logging.DEBUG  # decided once, not per decision
        self.scripts = Scripts(client)
        self.assigner = Assigner(self.scripts, settings.dedup_window_s)
        self.lanes = [self._lane(name) for name in partitions.inbound_streams(settings)]
        self.stop_requested_at: float | None = None
        self._burst = False  # a burst gives up on a failing Redis after the shutdown budget
        self._claim_every_s = min(max(settings.claim_idle_ms / 4000, 0.01), 5.0)
        self._turn = 0  # the lane an idle worker blocks on next
        self._next_conversation_sweep = 0.0
        self._swept: set[str] = set()  # accounts known to be in rota:swept

    def _lane(self, name: str) -> Lane:
        settings = self.settings.model_copy(update={"inbound_stream": name})
        return Lane(settings, stream.Claimer(settings, self.consumer))

    def request_stop(self) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()

    def run(self, burst: bool = False) -> int:
        """0 after a clean stop (or a drained burst); 1 when the shutdown budget ran out (what
        it held stays pending: another worker claims it)."""
        self._burst = burst
        streams = [lane.stream for lane in self.lanes]
        self.log.info("worker started", burst=burst, streams=streams)
        try:
            self._with_retry(self._check_server)  # every lane talks to the same Redis
            for lane in self.lanes:
                self._with_retry(partial(self._prepare, lane))
            while self.stop_requested_at is None:
                drained = self._round(burst)
                if burst and drained:
                    break
            for lane in self.lanes:
                self._with_retry(partial(self._leave, lane))
        except BudgetSpent:
            return 1
        finally:
            self.transport.close()
        self.log.info("worker stopped")
        return 0

    def _round(self, burst: bool) -> bool:
        """The conversations' sweep when due, then a step on every lane; True when none had
        anything left to do. One lane reads blocking (none in a burst), never past the next
        sweep; of several, each reads without blocking, and only when all came back empty
        does one of them, in turn, block briefly."""
        swept_all = True
        if time.monotonic() >= self._next_conversation_sweep:
            swept_all = self._with_retry(self._sweep_conversations)
        if len(self.lanes) == 1:
            block = None if burst else min(self.settings.block_ms, self.settings.sweep_every_ms)
            return self._with_retry(partial(self._step, self.lanes[0], block)) and swept_all
        drained = True
        for lane in self.lanes:
            if self.stop_requested_at is not None:
                return False
            drained = self._with_retry(partial(self._step, lane, None)) and drained
        if drained and not burst and self.stop_requested_at is None:
            lane = self.lanes[self._turn % len(self.lanes)]
            self._turn += 1
            block = min(self.settings.partition_block_ms, self.settings.block_ms)
            self._with_retry(partial(self._step, lane, block))
        return drained and swept_all

    def _with_retry(self, action: Callable[[], T]) -> T:
        """Runs the action until Redis answers, backing off between tries; raises BudgetSpent
        when the shutdown budget ran out meanwhile (see _budget_left). The only retry layer:
        the client tries each command once."""
        delay = BACKOFF_FIRST_S
        failing_since: float | None = None
        while True:
            attempt = time.monotonic()
            try:
                return action()
            except (ConnectionError, TimeoutError, ResponseError) as error:
                if refusal(error) is not None:
                    raise  # credentials or ACL: retrying cannot help, the operator must act
                if not isinstance(error, ResponseError):
                    self.log.warning(
                        "redis unreachable, retrying", error=str(error), retry_in_s=delay
                    )
                elif "NOGROUP" in str(error):
                    self._recreate_groups()
                elif (cause := server_refusal(error)) is not None:
                    # About Redis, not the entries: they are held, their count untouched.
                    self.log.error(
                        "redis refused, backing off",
                        refusal=cause,
                        error=str(error),
                        held=sum(len(lane.held) for lane in self.lanes),
                        retry_in_s=delay,
                    )
                else:
                    # A key of the wrong type, say: nothing was acknowledged, so retrying
                    # loses nothing and the log says why.
                    self.log.error("redis refused a command, retrying", error=str(error))
            failing_since = attempt if failing_since is None else failing_since
            left = self._budget_left(failing_since)
            if left <= 0:
                self.log.error("shutdown budget spent while redis was unreachable")
                raise BudgetSpent
            time.sleep(min(delay, left))  # a backoff never outlasts the budget
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _budget_left(self, failing_since: float) -> float:
        """Seconds left to retry: after a stop request, the shutdown budget from the request;
        in a burst, which nobody may be there to stop, the budget from the first failed try
        too; otherwise infinite."""
        now, budget = time.monotonic(), self.settings.shutdown_budget_s
        left = math.inf
        if self.stop_requested_at is not None:
            left = budget - (now - self.stop_requested_at)
        if self._burst:
            left = min(left, budget - (now - failing_since))
        return left

    def _recreate_groups(self) -> None:
        """After NOGROUP: every lane's group (a check each, created where missing)."""
        for lane in self.lanes:
            with contextlib.suppress(ConnectionError, TimeoutError, ResponseError):
                self._ensure_group(lane)  # else the retry loop tries again

    def _ensure_group(self, lane: Lane) -> None:
        """Creates the group if it is missing, and says so once: only the worker whose
        XGROUP CREATE succeeded logs it."""
        created_at = stream.ensure_group(self.client, lane.settings)
        if created_at == "0":  # a new stream or a first start: nothing to tell at info
            self.log.debug("consumer group created", stream=lane.stream)
        elif created_at is not None:
            self.log.warning(
                "consumer group was missing: created again where it had published everything",
                stream=lane.stream,
                after=created_at,
            )

    def _check_server(self) -> None:
        redis_setup.check(self.client, self.settings, self.log)

    def _prepare(self, lane: Lane) -> None:
        self.clock.sync_if_due()
        self._ensure_group(lane)
        self._trim(lane)
        self._prune_consumers(lane)
        # Listed in XINFO CONSUMERS from now on, not from its first entry (`rota demo` waits
        # for this: its handlers for SIGTERM are in place by then).
        self.client.xgroup_createconsumer(lane.stream, self.settings.group, self.consumer)

    def _prune_consumers(self, lane: Lane) -> None:
        """Consumers that hold nothing and have not been seen for an hour are gone for good.
        The script checks again as it deletes: one may have been given an entry since."""
        for info in self.client.xinfo_consumers(lane.stream, self.settings.group):
            if int(info["pending"]) == 0 and int(info["idle"]) > STALE_CONSUMER_IDLE_MS:
                self._delete_consumer(lane, info["name"], STALE_CONSUMER_IDLE_MS)

    def _leave(self, lane: Lane) -> None:
        self._flush_acks(lane)
        self._trim(lane)
        self._delete_consumer(lane, self.consumer)  # kept if it holds anything, for a claimer

    def _delete_consumer(self, lane: Lane, consumer: str | bytes, idle_ms: int = 0) -> bool:
        name = consumer.decode() if isinstance(consumer, bytes) else consumer
        return stream.delete_consumer(
            self.client, self.scripts.delconsumer, lane.settings, name, idle_ms
        )

    def _step(self, lane: Lane, block: int | None) -> bool:
        """One batch of the lane, reading new entries blocking at most ``block`` ms (None: not
        at all); True when nothing was left to do: nothing new, nothing old to claim."""
        self.clock.sync_if_due()  # before reading: a failed TIME strands no entry read
        if lane.held:
            held, lane.held = lane.held, []
            self._handle(lane, held)
            return False
        if time.monotonic() >= lane.next_trim:
            self._trim(lane)
        claimed = None
        if time.monotonic() >= lane.next_claim:
            claimed = self._claim(lane)
        # While claiming still finds entries, new ones are read between its batches, without
        # waiting: a backlog drains at the speed of new entries.
        wait = None if claimed else block
        entries = stream.read_new(self.transport, lane.settings, self.consumer, wait, lane.acks)
        lane.acks = []
        if entries:
            self._handle(lane, entries)
            return False
        return not (claimed if claimed is not None else self._claim(lane))

    def _flush_acks(self, lane: Lane) -> None:
        stream.ack(self.transport, lane.settings, lane.acks)
        lane.acks = []

    def _trim(self, lane: Lane) -> None:
        """Notes how far the group got and trims what every group acknowledged."""
        lane.next_trim = time.monotonic() + self.settings.inbound_trim_every_s
        retention.sweep(self.transport, lane.settings, self.clock.now_ms())

    def _claim(self, lane: Lane) -> bool:
        """Takes over what idle consumers left, a batch at a time, decided like new entries;
        True when there was something to take. The next claim is due at once while there
        was, else on a timer (XPENDING walks the pending list)."""
        claimed = lane.claimer.claim(self.transport)
        found = bool(claimed.poison or claimed.retry or claimed.vanished or claimed.more)
        lane.next_claim = time.monotonic() + (0 if found else self._claim_every_s)
        if claimed.poison or claimed.retry:
            self.metrics.claimed.inc(len(claimed.poison) + len(claimed.retry))
        self._handle(lane, claimed.retry)  # first: if Redis refuses it, these are held
        self._bury(lane, claimed.poison)
        self._settle(lane, claimed.vanished)
        return found

    def _bury(self, lane: Lane, poison: Sequence[Entry]) -> None:
        if not poison:
            return
        letters = [dead_letter(e, "poison", f"failed {e.deliveries} deliveries") for e in poison]
        ids = [e.inbound_id for e in poison]
        self._publish(lane, len(poison), [], letters, ids, self.clock.now_ms())
        self.log.error("poison entries dead-lettered", inbound_ids=ids)

    def _settle(self, lane: Lane, gone: Sequence[Entry]) -> None:
        """Entries deleted while pending: the decision this worker made for one but could not
        publish is published; the rest are dead-lettered `vanished`."""
        if not gone:
            return
        records: list[Record] = []
        letters = []
        for entry in gone:
            known = lane.unpublished.take(entry.inbound_id)
            if known is not None:
                records.append(known)
            else:
                letters.append(dead_letter(entry, "vanished", vanished.DETAIL))
        ids = [e.inbound_id for e in gone]
        self._publish(lane, len(gone), records, letters, ids, self.clock.now_ms())
        self.log.warning(
            "entries deleted from the stream while pending",
            inbound_ids=ids,
            published=len(records),
            dead_lettered=len(letters),
        )

    def _handle(self, lane: Lane, entries: Sequence[Entry]) -> None:
        """Decides and publishes a batch (acknowledged with the next read). What Redis refused
        to decide or publish (out of memory, ...) or could not be sent (Redis away) is held, to
        be tried again first once _with_retry has backed off, without counting a delivery: the
        failure was not the entries'."""
        if not entries:
            return
        try:
            refused = self._decide_and_publish(lane, entries)
        except (ConnectionError, TimeoutError):
            lane.held = list(entries)  # Redis away: nothing to put back, nothing published
            raise
        except ResponseError as error:
            if server_refusal(error) is None:
                raise
            refused = (list(entries), error)  # the publish: all of it again (at least once)
        if refused is not None:
            lane.held, held_refusal = refused
            stream.defer(self.client, lane.settings, self.consumer, lane.held)
            raise held_refusal

    def _decide_and_publish(
        self, lane: Lane, entries: Sequence[Entry]
    ) -> tuple[list[Entry], ResponseError] | None:
        """Publishes what was decided or rejected; the entries Redis refused to decide, with
        the first refusal, or None."""
        valid: list[tuple[Entry, Message]] = []
        dead: list[dict[Any, Any]] = []
        done: list[str] = []
        for entry in entries:
            parsed = parse(entry.inbound_id, entry.fields, self.settings.max_message_bytes)
            if isinstance(parsed, Rejection):
                dead.append(dead_letter(entry, parsed.error, parsed.detail))
                done.append(entry.inbound_id)
            else:
                valid.append((entry, parsed))
        now = self.clock.now_ms()
        batch = self.assigner.decide_batch(self.transport, [m for _, m in valid], now)
        outcomes, moves_after = batch.outcomes, _moves_after(batch.moves)
        # Each record to publish, and whether this batch made it (not a repeated decision).
        decided: list[tuple[Record, bool]] = [(m.record(), True) for m in moves_after(-1)]
        deferred: list[Entry] = []
        refused: list[Entry] = []
        held_refusal: ResponseError | None = None
        for k, ((entry, message), outcome) in enumerate(zip(valid, outcomes, strict=True)):
            if isinstance(outcome, Decision):
                if outcome.published:
                    decided.append((Record.of(message, outcome), outcome.new))
                decided.extend((move.record(), True) for move in moves_after(k))
                if self._debug:
                    self._log_decision(message, outcome)
            elif isinstance(outcome, Rejection):
                dead.append(dead_letter(entry, outcome.error, outcome.detail))
            elif refusal(outcome) is not None:
                raise outcome  # the ACL, not the message: every message would fail alike
            elif is_passing_cluster_error(outcome):
                # Not run (a slot mid-migration): left pending, tried again, never poison.
                self.log.warning(
                    "decision deferred", inbound_id=entry.inbound_id, error=str(outcome)
                )
                deferred.append(entry)
                continue
            elif isinstance(outcome, ResponseError) and server_refusal(outcome) is not None:
                refused.append(entry)
                held_refusal = held_refusal or outcome
                continue
            else:
                # Left pending: claimed again later, and dead-lettered as poison in the end.
                self.log.error("decision failed", inbound_id=entry.inbound_id, error=str(outcome))
                continue
            done.append(entry.inbound_id)
        records = [record for record, _ in decided]
        new = [record for record, made in decided if made]
        self._publish(lane, len(entries), records, dead, done, now, new, batch)
        if deferred:
            stream.defer(self.client, lane.settings, self.consumer, deferred)
        return (refused, held_refusal) if held_refusal is not None else None

    def _publish(
        self,
        lane: Lane,
        entries: int,
        records: list[Record],
        dead: list[dict[Any, Any]],
        done: list[str],
        now: int,
        new: Sequence[Record] = (),
        batch: Decided | None = None,
    ) -> None:
        """Decisions and the batch's moves, dead letters, the day's chat counts (of ``new``:
        the records of decisions made in this batch, not repeated) and webhook jobs, then the
        XACK. Metrics are counted once per batch."""
        try:
            self._write_events(lane.settings, records, dead, new, now, batch or Decided([]))
        except BaseException:
            lane.unpublished.remember(records)  # published if their entries vanish
            raise
        lane.unpublished.forget(records)
        # Acknowledged with the next read: one round trip fewer per batch, and only once
        # every write above succeeded.
        lane.acks.extend(done)
        self.metrics.batch(entries, records, dead, self.clock.now_ms())

    def _write_events(
        self,
        settings: Settings,
        records: Sequence[Record],
        dead: list[dict[Any, Any]],
        new: Sequence[Record],
        now: int,
        batch: Decided,
        stranded: Sequence[sweep.Stranded] = (),
    ) -> None:
        """Records (decisions and moves), dead letters, chat counts and webhook jobs in one
        round trip, with the accounts that now have timers added to the sweeps' set; then the
        moves' outbox entries (and the ``stranded`` ones published with them) deleted."""
        webhooks = self.webhooks if records else None
        also = [lambda pipe: webhooks.enqueue(pipe, list(records))] if webhooks else []
        extra = chats.count(new, now)
        timed = batch.timed - self._swept
        if timed:
            extra.append(sweep.mark_swept(timed))
        events = [record.to_fields() for record in records]
        stream.publish(self.transport, settings, events, dead, extra, also)
        self._swept |= timed
        if webhooks is not None:
            self.metrics.webhooks.inc(len(records))
        outbox: dict[str, list[str]] = {}
        for move in batch.moves:
            outbox.setdefault(move.account, []).append(move.outbox_id)
        for left in stranded:
            outbox.setdefault(left.account, []).append(left.outbox_id)
        sweep.delete_published(self.transport, outbox)
        self.metrics.moved(batch.moves)

    def _sweep_conversations(self) -> bool:
        """Due timers and waiting queues decided, stranded outbox entries published; at once
        again while a sweep found more than it takes. True when it changed nothing (and found
        no more): what a burst waits for."""
        now = self.clock.now_ms()
        found = sweep.due(self.transport, now)
        wait = 0 if found.more else self.settings.sweep_every_ms / 1000
        self._next_conversation_sweep = time.monotonic() + wait
        if not found.entries and not found.stranded:
            return not found.more
        batch = self.assigner.decide_batch(self.transport, found.entries, now)
        gone = []
        for message, outcome in zip(found.entries, batch.outcomes, strict=True):
            if isinstance(outcome, Rejection) and outcome.error == "unknown_number":
                gone.append(message)
            elif not isinstance(outcome, Decision):
                self.log.error(
                    "sweep entry failed",
                    account=message.account,
                    number=message.number,
                    kind=message.kind,
                    error=str(outcome),
                )
        sweep.forget(self.transport, gone)
        records = [move.record() for move in batch.moves]
        records += [Record.from_fields(left.fields) for left in found.stranded]
        self._write_events(self.lanes[0].settings, records, [], records, now, batch, found.stranded)
        self.metrics.batch(len(found.entries), records, [], self.clock.now_ms())
        return not (found.more or records)

    def _log_decision(self, message: Message, decision: Decision) -> None:
        self.log.debug(
            "decided",
            account=message.account,
            number=message.number,
            customer=mask(message.customer),
            user=decision.user,
            reason=decision.reason,
        )


def _moves_after(moves: Sequence[Move]) -> Callable[[int], list[Move]]:
    """The moves published after the decision of each batch position (-1: before all)."""
    by_position: dict[int, list[Move]] = {}
    for move in moves:
        by_position.setdefault(move.after, []).append(move)
    return lambda position: by_position.get(position, [])


def handle_signals(runner: Runner) -> None:
    """A first TERM/INT finishes the batch in hand; a second exits at once."""

    def on_signal(signum: int, _frame: object) -> None:
        if runner.stop_requested_at is not None:
            os._exit(128 + signum)
        runner.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
