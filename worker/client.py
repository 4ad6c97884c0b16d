"""Rota for a CRM back end: push messages and CRM activity, set presence, read a conversation,
without spelling a key or a stream field.

    import redis
    from worker.client import Rota

    rota = Rota(redis.Redis.from_url("redis://rota:PASSWORD@redis.internal:6379/0"))
    rota.send("15550001000", "+44 7700 900123", message_id="wamid.X", account="acme", text="hi")
    rota.set_presence("acme", "alice@acme.example", "Available")
    rota.heartbeat("acme", "alice@acme.example")        # every minute or so, while the app is open
    rota.replied("acme", "15550001000", "447700900123", "alice@acme.example")
    rota.transfer("acme", "15550001000", "447700900123", "bob")
    rota.close("acme", "15550001000", "447700900123")
    rota.show_conversation("acme", "15550001000", "447700900123")
    # {"user": "bob", "state": "closed", "replied": False, "reply_deadline": None, "tried": []}

Any redis-py client works (``decode_responses`` on or off, a RedisCluster too). Input is
checked against the contract's words before anything is written: what the worker would only
dead-letter raises ``Refused`` (a ValueError) and writes nothing. Messages and activity go on
the account's inbound stream (its partition with ``ROTA_INBOUND_PARTITIONS``), so the worker
takes them in the order they were sent; each verb that adds an entry returns its entry id.
``rota send``, ``rota presence`` and ``rota conversation`` are this module on the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker import clock, keys, messages, partitions, words
from worker.settings import Settings

HEARTBEAT, REPLIED, CLOSED, TRANSFER = "heartbeat", "replied", "closed", "transfer"
# Fields a message's extra fields may not carry: Rota's own, which send() writes itself.
_OWN_FIELDS = frozenset({"type", "account", "number", "from", "message_id"})


class Refused(ValueError):
    """Input the worker would dead-letter, or that is not one of the contract's words: nothing
    was written. ``error`` is the dead-letter code (``invalid_field``, ``too_large``...)."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.error, self.detail = error, detail


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def add(client: Any, settings: Settings, fields: Mapping[str, str]) -> str:
    """XADD, unchecked, onto the inbound stream of the fields' account (its partition)."""
    stream = partitions.inbound_stream(settings, fields.get("account"))
    return _text(client.xadd(stream, dict(fields)))


def write_presence(client: Any, account: str, user: str, status: str) -> None:
    """The status as given, and the server's time as when Rota last heard from the user, in
    one MULTI/EXEC (both keys share the account's slot)."""
    now_ms = clock.server_ms(client)  # read first: a transaction's replies come after EXEC
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.presence(account), user, status)
    pipe.hset(keys.heard(account), user, str(now_ms))
    pipe.execute()


class Rota:
    """The verbs of the contract for a CRM, over one redis-py client."""

    def __init__(self, client: Any, settings: Settings | None = None) -> None:
        """``settings``: the stream names, partitions and size limit the workers run with;
        left out, read from the environment (``ROTA_*``, ``.env``) as ``rota`` reads them."""
        self.client = client
        self.settings = settings if settings is not None else Settings()

    # --- Messages and activity: entries on the inbound stream --------------------------------

    def send(
        self,
        number: str,
        customer: str,
        message_id: str | None = None,
        account: str | None = None,
        **extra: str,
    ) -> str:
        """One inbound message from ``customer`` (its ``from``) to ``number``; ``extra``
        fields (``name``, ``text``...) are carried along untouched. Returns the entry id."""
        fields = self._fields(account, number=number, **{"from": customer})
        if message_id:
            fields["message_id"] = message_id
        for name, value in extra.items():
            if name in _OWN_FIELDS:
                raise Refused("invalid_field", f"{name} is not an extra field")
            if not isinstance(value, str):
                raise Refused("invalid_field", f"{name} must be a string")
            fields[name] = value
        self._refuse_what_the_worker_would(fields)
        return add(self.client, self.settings, fields)

    def heartbeat(self, account: str, user: str, message_id: str | None = None) -> str:
        """``user``'s client is alive (it matters with the account's ``presence_ttl_s``)."""
        return self._activity(HEARTBEAT, account, message_id, user=user)

    def replied(
        self, account: str, number: str, customer: str, user: str, message_id: str | None = None
    ) -> str:
        """``user`` answered ``customer``: stops the reply timer if ``user`` holds the
        conversation; counts as ``user``'s heartbeat."""
        return self._activity(
            REPLIED, account, message_id, number=number, customer=customer, user=user
        )

    def close(self, account: str, number: str, customer: str, message_id: str | None = None) -> str:
        """Closes the conversation; its user stays the owner."""
        return self._activity(CLOSED, account, message_id, number=number, customer=customer)

    def transfer(
        self, account: str, number: str, customer: str, user: str, message_id: str | None = None
    ) -> str:
        """``user`` takes the conversation now, whatever their status or capacity, and becomes
        the owner."""
        return self._activity(
            TRANSFER, account, message_id, number=number, customer=customer, user=user
        )

    # --- Presence and reading -----------------------------------------------------------------

    def set_presence(self, account: str, user: str, status: str) -> None:
        """``Available``, ``In Break``, ``in-break``... stored as the canonical status; it is
        also a heartbeat (written at once, not through the stream)."""
        try:
            canonical = words.status(status)
        except words.InvalidWord as invalid:
            raise Refused("invalid_field", str(invalid)) from None
        write_presence(self.client, _checked("account", account), _checked("user", user), canonical)

    def show_conversation(self, account: str, number: str, customer: str) -> dict[str, Any]:
        """``user`` (who holds it while open, else, unless it is queued, the owner, else
        None), ``state`` (``queued``, ``open``, ``closed`` or ``none``), ``replied``,
        ``reply_deadline`` (unix ms while open and not replied, else None) and ``tried`` (the
        users who held it since it opened), read in one MULTI."""
        account, number = _checked("account", account), _checked("number", number)
        customer = _checked("customer", customer)
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(keys.open_conversations(account, number), customer)
        pipe.hget(keys.owners(account, number), customer)
        pipe.hget(keys.replied(account, number), customer)
        pipe.hexists(keys.queued(account, number), customer)
        pipe.hget(keys.tried(account, number), customer)
        pipe.zscore(keys.timers(account), keys.timer(number, customer))
        *texts, queued, tried, due = pipe.execute()
        holder, owner, replied = (None if v is None else _text(v) for v in texts)
        if queued:
            state = "queued"
        else:
            state = "open" if holder is not None else "closed" if owner is not None else "none"
        is_replied = replied == "1"
        deadline = int(due) if state == "open" and not is_replied and due is not None else None
        return {
            "user": holder if holder is not None or queued else owner,
            "state": state,
            "replied": is_replied,
            "reply_deadline": deadline,
            # Stored once a second user held it (a reply timeout, a transfer); else the holder.
            "tried": (_text(tried).split(",") if tried else [holder]) if holder is not None else [],
        }

    # --- Helpers -------------------------------------------------------------------------------

    def _fields(self, account: str | None, **given: str) -> dict[str, str]:
        """``account`` (left out: ``default``) first, then the given fields, each checked and
        normalised as its word."""
        fields = {"account": account or words.DEFAULT_ACCOUNT, **given}
        return {name: _checked(name, value) for name, value in fields.items()}

    def _refuse_what_the_worker_would(self, fields: Mapping[str, str]) -> None:
        """The worker's own checks (worker.messages): its dead letters, raised instead."""
        rejected = messages.check(fields, self.settings.max_message_bytes)
        if rejected is not None:
            raise Refused(rejected.error, rejected.detail)

    def _activity(self, kind: str, account: str, message_id: str | None, **given: str) -> str:
        fields = {"type": kind, **self._fields(account, **given)}
        if message_id:
            fields["message_id"] = message_id
        self._refuse_what_the_worker_would(fields)
        return add(self.client, self.settings, fields)


def _checked(name: str, value: str) -> str:
    """One field of an entry in the form the worker accepts; a customer is quoted masked, as
    the worker's dead letters and logs quote it."""
    if not isinstance(value, str):
        raise Refused("invalid_field", f"{name} must be a string")
    try:
        if name in ("from", "customer"):
            return messages.customer(value, name)
        parse = {"account": words.account, "number": words.phone, "user": words.user}[name]
        return parse(value)
    except words.InvalidWord as invalid:
        raise Refused("invalid_field", str(invalid)) from None
