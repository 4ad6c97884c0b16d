"""``rota demo``: the product sheet's four Quick Reference cases, end to end, with two worker
processes, on whatever Redis the settings name (the embedded one when ROTA_REDIS_URL is unset)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from redis.exceptions import ResponseError

from worker import admin, connection, keys, partitions
from worker.record import Record
from worker.settings import Settings
from worker.words import mask

ACCOUNT, NUMBER, ADMIN = "demo", "15550001000", "Admin"
USERS = ("A", "B", "C", "D")
WAIT_S = 15.0
WORKERS = 2


class Demo:
    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        last = client.xrevrange(settings.events_stream, count=1)
        self.last_event = last[0][0] if last else "0-0"
        self.customers = 0
        self.failures = 0

    def reset(self) -> None:
        for key in self.client.scan_iter(keys.account_pattern(ACCOUNT)):
            self.client.delete(key)
        admin.set_account(self.client, ACCOUNT, ADMIN)
        admin.set_number(self.client, ACCOUNT, NUMBER, members=list(USERS))

    def presence(self, **statuses: str) -> None:
        for user, status in statuses.items():
            admin.set_presence(self.client, ACCOUNT, user, status)

    def chat(self) -> tuple[str, str, str]:
        """A new customer writes in; returns (customer, user, reason) once a worker decided."""
        self.customers += 1
        customer = f"4477009{self.customers:05d}"
        message_id = f"wamid.demo-{uuid.uuid4().hex}"
        fields = {"account": ACCOUNT, "number": NUMBER, "from": customer, "message_id": message_id}
        admin.send(self.client, self.settings, fields)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            reply = self.client.xread({self.settings.events_stream: self.last_event}, block=500)
            for _, entries in reply or []:
                for event_id, event in entries:
                    self.last_event = event_id
                    if event.get("message_id") == message_id:
                        record = Record.from_fields(event)
                        return customer, record.user, record.reason
        raise TimeoutError(f"no decision for {message_id} within {WAIT_S:.0f} s; are workers up?")

    def case(self, title: str, chats: int, expected: list[str]) -> None:
        print(f"\n{title}")
        got = []
        for _ in range(chats):
            customer, user, reason = self.chat()
            got.append(user)
            print(f"  chat from {mask(customer)} -> {user or '(nobody)':6} ({reason})")
        verdict = "as the sheet says" if got == expected else f"EXPECTED {' -> '.join(expected)}"
        self.failures += got != expected
        print(f"  {' -> '.join(got)}: {verdict}")


def start_workers(settings: Settings) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "ROTA_LOG_LEVEL": "warning"}
    if settings.redis_url is None:
        env["ROTA_REDIS_URL"] = connection.url(settings)
    command = [sys.executable, "-m", "worker", "worker"]
    return [subprocess.Popen(command, env=env) for _ in range(WORKERS)]


def wait_for_workers(client: Any, settings: Settings, count: int) -> None:
    """Until ``count`` consumers read the demo account's stream: a worker stopped before it
    set up its signal handlers would die of the SIGTERM instead of exiting 0."""
    stream = partitions.inbound_stream(settings, ACCOUNT)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if len(client.xinfo_consumers(stream, settings.group)) >= count:
                return
        except ResponseError:  # no stream or group yet
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{count} workers did not start within {WAIT_S:.0f} s")


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> list[int]:
    for process in workers:
        process.send_signal(signal.SIGTERM)
    return [process.wait(timeout=30) for process in workers]


def run_demo(settings: Settings) -> int:
    client = connection.connect(settings, decode=True)
    demo = Demo(client, settings)
    demo.reset()
    print(f"Rota demo: account {ACCOUNT}, number {NUMBER}, users {', '.join(USERS)}, admin {ADMIN}")
    print(f"Redis: {connection.url(settings)}; {WORKERS} worker processes")
    workers = start_workers(settings)
    try:
        wait_for_workers(client, settings, WORKERS)
        demo.presence(A="available", B="available", C="available", D="available")
        demo.case("Case 1: all users available", 5, ["A", "B", "C", "D", "A"])
        demo.presence(A="unavailable", C="in_break")
        demo.case(
            "Case 2: A unavailable, B available, C in break, D available", 4, ["B", "D", "B", "D"]
        )
        demo.case("Case 3a: B gets a chat while available", 1, ["B"])
        demo.presence(B="unavailable")
        demo.case("Case 3b: B sets Unavailable; the next chat skips B", 1, ["D"])
        demo.presence(D="away")
        demo.case("Case 4: nobody available (unavailable, away, in break)", 2, [ADMIN, ADMIN])
    finally:
        codes = stop_workers(workers)
    print(f"\nworkers stopped with exit codes {codes}")
    shown = admin.show_number(client, ACCOUNT, NUMBER) or {}
    print(f"cursor {shown.get('cursor')}, known customers {shown.get('known_customers')}")
    return 1 if demo.failures or any(codes) else 0
