"""The worker loop: claim what dead consumers left, read new entries, decide the batch in one
pipeline, publish decisions and dead letters and acknowledge in another, stop cleanly."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from worker import stream
from worker.assign import Assigner, Decision
from worker.lua import Scripts
from worker.messages import Message, Rejection, parse
from worker.settings import Settings
from worker.stream import Entry
from worker.words import mask

BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 5.0
STALE_CONSUMER_IDLE_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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


def event(message: Message, decision: Decision) -> dict[str, Any]:
    return {
        "account": message.account,
        "number": message.number,
        "customer": message.customer,
        "message_id": message.message_id,
        "inbound_id": message.inbound_id,
        "user": decision.user,
        "reason": decision.reason,
        "at": decision.at,
    }


class Runner:
    def __init__(self, client: Any, settings: Settings, log: Any, consumer: str | None = None):
        self.client = client
        self.settings = settings
        self.consumer = consumer or settings.consumer or default_consumer()
        self.log = log.bind(consumer=self.consumer)
        self.assigner = Assigner(Scripts(client), settings.dedup_window_s)
        self.claimer = stream.Claimer(settings, self.consumer)
        self.stop_requested_at: float | None = None
        self._claim_every_s = min(max(settings.claim_idle_ms / 4000, 0.01), 5.0)
        self._next_claim = 0.0

    def request_stop(self) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()

    def run(self, burst: bool = False) -> int:
        """0 after a clean stop (or a drained burst); 1 when the shutdown budget ran out."""
        self.log.info("worker started", burst=burst, stream=self.settings.inbound_stream)
        self._with_retry(self._prepare)
        while self.stop_requested_at is None:
            drained = self._with_retry(lambda: self._step(burst))
            if drained is None:
                return 1
            if burst and drained:
                break
        self._with_retry(self._leave)
        self.log.info("worker stopped")
        return 0

    def _with_retry(self, action: Any) -> Any:
        """Runs the action until Redis answers; None when a stop's budget ran out meanwhile."""
        delay = BACKOFF_FIRST_S
        while True:
            try:
                return action()
            except (ConnectionError, TimeoutError) as error:
                self.log.warning("redis unreachable, retrying", error=str(error), retry_in_s=delay)
            except ResponseError as error:
                if "NOGROUP" not in str(error) and "LOADING" not in str(error):
                    raise
                self.log.warning("stream or group missing, recreating", error=str(error))
                self._recreate_group()
            left = self._budget_left()
            if left <= 0:
                self.log.error("shutdown budget spent while redis was unreachable")
                return None
            time.sleep(min(delay, left))  # a backoff never outlasts the budget
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _budget_left(self) -> float:
        """Seconds a requested stop may still spend retrying; infinite while running."""
        started = self.stop_requested_at
        if started is None:
            return math.inf
        return self.settings.shutdown_budget_s - (time.monotonic() - started)

    def _recreate_group(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError, ResponseError):
            stream.ensure_group(self.client, self.settings)  # else the retry loop tries again

    def _prepare(self) -> None:
        stream.ensure_group(self.client, self.settings)
        self._prune_consumers()

    def _prune_consumers(self) -> None:
        """Consumers that hold nothing and have not been seen for an hour are gone for good."""
        name, group = self.settings.inbound_stream, self.settings.group
        for info in self.client.xinfo_consumers(name, group):
            if int(info["pending"]) == 0 and int(info["idle"]) > STALE_CONSUMER_IDLE_MS:
                self.client.xgroup_delconsumer(name, group, info["name"])

    def _leave(self) -> None:
        name, group = self.settings.inbound_stream, self.settings.group
        if not self.client.xpending_range(name, group, "-", "+", 1, consumername=self.consumer):
            self.client.xgroup_delconsumer(name, group, self.consumer)

    def _step(self, burst: bool) -> bool:
        """One batch; True when nothing was left to do."""
        claimed_any = more_to_claim = False
        if burst or time.monotonic() >= self._next_claim:
            claimed = self.claimer.claim(self.client)
            self._next_claim = time.monotonic() + self._claim_every_s
            self._bury(claimed.poison)
            self._handle(claimed.retry)
            claimed_any = bool(claimed.poison or claimed.retry)
            more_to_claim = claimed.more
        if claimed_any:
            return False
        block = None if burst else self.settings.block_ms
        entries = stream.read_new(self.client, self.settings, self.consumer, block)
        self._handle(entries)
        return not entries and not more_to_claim

    def _bury(self, poison: Sequence[Entry]) -> None:
        if not poison:
            return
        letters = [dead_letter(e, "poison", f"failed {e.deliveries} deliveries") for e in poison]
        stream.publish(self.client, self.settings, [], letters, [e.inbound_id for e in poison])
        self.log.error("poison entries dead-lettered", inbound_ids=[e.inbound_id for e in poison])

    def _handle(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
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
        outcomes = self.assigner.decide(self.client, [m for _, m in valid], now_ms())
        events = []
        for (entry, message), outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, Decision):
                events.append(event(message, outcome))
                self._log_decision(message, outcome)
            elif isinstance(outcome, Rejection):
                dead.append(dead_letter(entry, outcome.error, outcome.detail))
            else:
                # Left pending: claimed again later, and dead-lettered as poison in the end.
                self.log.error("decision failed", inbound_id=entry.inbound_id, error=str(outcome))
                continue
            done.append(entry.inbound_id)
        stream.publish(self.client, self.settings, events, dead, done)

    def _log_decision(self, message: Message, decision: Decision) -> None:
        self.log.debug(
            "decided",
            account=message.account,
            number=message.number,
            customer=mask(message.customer),
            user=decision.user,
            reason=decision.reason,
        )


def handle_signals(runner: Runner) -> None:
    """A first TERM/INT finishes the batch in hand; a second exits at once."""

    def on_signal(signum: int, _frame: object) -> None:
        if runner.stop_requested_at is not None:
            os._exit(128 + signum)
        runner.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
