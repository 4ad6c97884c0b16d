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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from worker import chats, connection, redis_setup, retention, stream, vanished
from worker.assign import Assigner, Decision
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


class Runner:
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
        self.transport = connection.transport(client)  # the hot path's own connection
        self.settings = settings
        self.consumer = consumer or settings.consumer or default_consumer()
        self.log = log.bind(consumer=self.consumer)
        self.metrics = metrics or Metrics()
        self.webhooks = webhooks_for(client, settings)
        self._debug = level(settings) <= logging.DEBUG  # decided once, not per decision
        self._acks: list[str] = []  # published, to acknowledge with the next read
        self.scripts = Scripts(client)
        self.assigner = Assigner(self.scripts, settings.dedup_window_s)
        self.claimer = stream.Claimer(settings, self.consumer)
        self.stop_requested_at: float | None = None
        self._burst = False  # a burst gives up on a failing Redis after the shutdown budget
        self._held: list[Entry] = []  # refused by Redis (out of memory...): tried again first
        self._claim_every_s = min(max(settings.claim_idle_ms / 4000, 0.01), 5.0)
        self._next_claim = 0.0
        self._next_sweep = 0.0
        self._unpublished = vanished.Unpublished()

    def request_stop(self) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()

    def run(self, burst: bool = False) -> int:
        """0 after a clean stop (or a drained burst); 1 when the shutdown budget ran out."""
        self._burst = burst
        self.log.info("worker started", burst=burst, stream=self.settings.inbound_stream)
        if self._with_retry(self._check_server) is None:
            return 1  # Redis never answered, and the budget ran out
        if self._with_retry(self._prepare) is None:
            return 1  # stopped before Redis ever answered, and the budget ran out
        block = None if burst else self.settings.block_ms
        while self.stop_requested_at is None:
            drained = self._with_retry(lambda: self._step(burst, block))
            if drained is None:
                return 1
            if burst and drained:
                break
        left = self._with_retry(self._leave)
        self.transport.close()
        if left is None:
            return 1  # what it held stays pending: another worker claims it
        self.log.info("worker stopped")
        return 0

    def _with_retry(self, action: Any) -> Any:
        """Runs the action until Redis answers, backing off between tries; None when the
        shutdown budget ran out meanwhile (see _budget_left). The only retry layer: the client
        tries each command once."""
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
                    self._recreate_group()
                elif (cause := server_refusal(error)) is not None:
                    # About Redis, not the entries: they are held, their count untouched.
                    self.log.error(
                        "redis refused, backing off",
                        refusal=cause,
                        error=str(error),
                        held=len(self._held),
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
                return None
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

    def _recreate_group(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError, ResponseError):
            self._ensure_group()  # else the retry loop tries again

    def _ensure_group(self) -> None:
        """Creates the group if it is missing, and says so once: only the worker whose
        XGROUP CREATE succeeded logs it."""
        created_at = stream.ensure_group(self.client, self.settings)
        if created_at == "0":  # a new stream or a first start: nothing to tell at info
            self.log.debug("consumer group created", stream=self.settings.inbound_stream)
        elif created_at is not None:
            self.log.warning(
                "consumer group was missing: created again where it had published everything",
                stream=self.settings.inbound_stream,
                after=created_at,
            )

    def _check_server(self) -> bool:
        redis_setup.check(self.client, self.settings, self.log)
        return True

    def _prepare(self) -> bool:
        self.clock.sync_if_due()
        self._ensure_group()
        self._sweep()
        self._prune_consumers()
        # Listed in XINFO CONSUMERS from now on, not from its first entry (`rota demo` waits
        # for this: its handlers for SIGTERM are in place by then).
        self.client.xgroup_createconsumer(
            self.settings.inbound_stream, self.settings.group, self.consumer
        )
        return True  # _with_retry's None means the shutdown budget ran out

    def _prune_consumers(self) -> None:
        """Consumers that hold nothing and have not been seen for an hour are gone for good.
        The script checks again as it deletes: one may have been given an entry since."""
        name, group = self.settings.inbound_stream, self.settings.group
        for info in self.client.xinfo_consumers(name, group):
            if int(info["pending"]) == 0 and int(info["idle"]) > STALE_CONSUMER_IDLE_MS:
                self._delete_consumer(info["name"], STALE_CONSUMER_IDLE_MS)

    def _leave(self) -> bool:
        self._flush_acks()
        self._sweep()
        self._delete_consumer(self.consumer)  # kept if it holds anything, for a claimer
        return True

    def _delete_consumer(self, consumer: str | bytes, idle_ms: int = 0) -> bool:
        name = consumer.decode() if isinstance(consumer, bytes) else consumer
        return stream.delete_consumer(
            self.client, self.scripts.delconsumer, self.settings, name, idle_ms
        )

    def _step(self, burst: bool, block: int | None) -> bool:
        """One batch, reading new entries blocking at most ``block`` ms (None: not at all);
        True when nothing was left to do: nothing new, nothing old to claim."""
        self.clock.sync_if_due()  # before reading: a failed TIME strands no entry read
        if self._held:
            held, self._held = self._held, []
            self._handle(held)
            return False
        if time.monotonic() >= self._next_sweep:
            self._sweep()
        claimed = None
        if time.monotonic() >= self._next_claim:
            claimed = self._claim()
        # While claiming still finds entries, new ones are read between its batches, without
        # waiting: a backlog drains at the speed of new entries.
        wait = None if claimed else block
        entries = stream.read_new(self.transport, self.settings, self.consumer, wait, self._acks)
        self._acks = []
        if entries:
            self._handle(entries)
            return False
        return not (claimed if claimed is not None else self._claim())

    def _flush_acks(self) -> None:
        stream.ack(self.transport, self.settings, self._acks)
        self._acks = []

    def _sweep(self) -> None:
        """Notes how far the group got and trims what every group acknowledged."""
        self._next_sweep = time.monotonic() + self.settings.inbound_trim_every_s
        retention.sweep(self.transport, self.settings, self.clock.now_ms())

    def _claim(self) -> bool:
        """Takes over what idle consumers left, a batch at a time, decided like new entries;
        True when there was something to take. The next claim is due at once while there
        was, else on a timer (XPENDING walks the pending list)."""
        claimed = self.claimer.claim(self.transport)
        found = bool(claimed.poison or claimed.retry or claimed.vanished or claimed.more)
        self._next_claim = time.monotonic() + (0 if found else self._claim_every_s)
        if claimed.poison or claimed.retry:
            self.metrics.claimed.inc(len(claimed.poison) + len(claimed.retry))
        self._handle(claimed.retry)  # first: if Redis refuses it, these are held
        self._bury(claimed.poison)
        self._settle(claimed.vanished)
        return found

    def _bury(self, poison: Sequence[Entry]) -> None:
        if not poison:
            return
        letters = [dead_letter(e, "poison", f"failed {e.deliveries} deliveries") for e in poison]
        self._publish(len(poison), [], letters, [e.inbound_id for e in poison], self.clock.now_ms())
        self.log.error("poison entries dead-lettered", inbound_ids=[e.inbound_id for e in poison])

    def _settle(self, gone: Sequence[Entry]) -> None:
        """Entries deleted while pending: the decision this worker made for one but could not
        publish is published; the rest are dead-lettered `vanished`."""
        if not gone:
            return
        records: list[Record] = []
        letters = []
        for entry in gone:
            known = self._unpublished.take(entry.inbound_id)
            if known is not None:
                records.append(known)
            else:
                letters.append(dead_letter(entry, "vanished", vanished.DETAIL))
        ids = [e.inbound_id for e in gone]
        self._publish(len(gone), records, letters, ids, self.clock.now_ms())
        self.log.warning(
            "entries deleted from the stream while pending",
            inbound_ids=ids,
            published=len(records),
            dead_lettered=len(letters),
        )

    def _handle(self, entries: Sequence[Entry]) -> None:
        """Decides and publishes a batch (acknowledged with the next read). What Redis refused
        to decide or publish (out of memory, ...) or could not be sent (Redis away) is held, to
        be tried again first once _with_retry has backed off, without counting a delivery: the
        failure was not the entries'."""
        if not entries:
            return
        try:
            refused = self._decide_and_publish(entries)
        except (ConnectionError, TimeoutError):
            self._held = list(entries)  # Redis away: nothing to put back, nothing published
            raise
        except ResponseError as error:
            if server_refusal(error) is None:
                raise
            refused = (list(entries), error)  # the publish: all of it again (at least once)
        if refused is not None:
            self._held, held_refusal = refused
            stream.defer(self.client, self.settings, self.consumer, self._held)
            raise held_refusal

    def _decide_and_publish(
        self, entries: Sequence[Entry]
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
        outcomes = self.assigner.decide(self.transport, [m for _, m in valid], now)
        decided: list[tuple[Record, Decision]] = []
        deferred: list[Entry] = []
        refused: list[Entry] = []
        held_refusal: ResponseError | None = None
        for (entry, message), outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, Decision):
                decided.append((Record.of(message, outcome), outcome))
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
        new = [record for record, decision in decided if decision.new]
        self._publish(len(entries), records, dead, done, now, new)
        if deferred:
            stream.defer(self.client, self.settings, self.consumer, deferred)
        return (refused, held_refusal) if held_refusal is not None else None

    def _publish(
        self,
        entries: int,
        records: list[Record],
        dead: list[dict[Any, Any]],
        done: list[str],
        now: int,
        new: Sequence[Record] = (),
    ) -> None:
        """Decisions, dead letters, the day's chat counts (of ``new``: the records of decisions
        made in this batch, not repeated) and webhook jobs, then the XACK. Metrics are counted
        once per batch."""
        webhooks = self.webhooks if records else None
        also = [lambda pipe: webhooks.enqueue(pipe, records)] if webhooks is not None else []
        counts = chats.count(new, now)
        events = [record.to_fields() for record in records]
        try:
            stream.publish(self.transport, self.settings, events, dead, counts, also)
        except BaseException:
            self._unpublished.remember(records)  # published if their entries vanish
            raise
        self._unpublished.forget(records)
        # Acknowledged with the next read: one round trip fewer per batch, and only once
        # every write above succeeded.
        self._acks.extend(done)
        self.metrics.batch(entries, records, dead, self.clock.now_ms())
        if webhooks is not None:
            self.metrics.webhooks.inc(len(records))

    def _log_decision(self, message: Message, decision: Decision) -> None:
        self.log.debug(
            "decided",
            account=message.account,
            number=message.number,
            customer=mask(message.customer),
            user=decision.user,
            reason=decision.reason,
        )


class Stoppable(Protocol):
    @property
    def stop_requested_at(self) -> float | None: ...

    def request_stop(self) -> None: ...


def handle_signals(runner: Stoppable) -> None:
    """A first TERM/INT finishes the batch in hand; a second exits at once."""

    def on_signal(signum: int, _frame: object) -> None:
        if runner.stop_requested_at is not None:
            os._exit(128 + signum)
        runner.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
