"""``/whatsapp``: the WhatsApp Cloud API webhook.

``GET`` answers Meta's verification challenge. ``POST`` takes a delivery: its body is checked
against ``X-Hub-Signature-256`` (HMAC-SHA256 under ``ROTA_WHATSAPP_APP_SECRET``, constant time)
before it is even parsed, then each ``entry[].changes[].value.messages[]`` item becomes one
inbound entry, all of them written in one pipeline onto the inbound stream of their account
(its partition), by an asyncio client on the event loop. Status callbacks and other webhook
fields carry no ``messages`` and write nothing.

Answers: 200 once every entry is on its stream; 400 for a body that is not JSON or not of the
shape Meta documents; 403 for a missing or wrong signature (or no secret configured); 413 past
``ROTA_HTTP_MAX_BODY_BYTES``; 503 when Redis cannot take the entries. Nothing is written unless
the answer is 200, and Meta delivers again whatever did not get a 200: a message delivered
twice is one message (its wamid is its ``message_id``), so a retry is harmless.

A message of the right shape that the worker will refuse (a ``from`` that is no phone number,
an id past 256 bytes, an entry past ``ROTA_MAX_MESSAGE_BYTES``: ``worker.messages.check``) is
written all the same, and logged: the worker dead-letters it on ``rota:dead`` with its reason,
where it can be seen and replayed, rather than Meta retrying a delivery that can never pass.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import SecretStr
from redis.exceptions import RedisClusterException
from redis.typing import EncodableT, FieldT
from starlette.routing import Route, Router

from worker import config_redis, messages, partitions, words
from worker.http.app import Services, services
from worker.log import logger

SIGNATURE_HEADER = "x-hub-signature-256"
SIGNATURE_SCHEME = "sha256="


class Malformed(ValueError):
    """A body that is not a delivery of the shape Meta documents: the one-line reason."""


class Refused(Exception):
    """A delivery answered with ``status`` and the one-line ``detail``, nothing written."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message of a delivery: the business number's Meta id, and its entry's fields but
    the account (number, from, message_id, name, text, wa_type)."""

    phone_number_id: str
    fields: dict[str, str]


# --- GET: the verification challenge --------------------------------------------------------


async def verify(request: Request) -> Response:
    """Meta's subscription check: the challenge back, as text, when the token is ours."""
    token = services(request).settings.whatsapp_verify_token
    query = request.query_params
    if query.get("hub.mode") != "subscribe" or not _matches(token, query.get("hub.verify_token")):
        return PlainTextResponse("hub.mode or hub.verify_token is wrong", status_code=403)
    # Echoed as text that a browser may not sniff into a page.
    challenge = query.get("hub.challenge", "")
    return PlainTextResponse(challenge, headers={"X-Content-Type-Options": "nosniff"})


def _matches(token: SecretStr | None, given: str | None) -> bool:
    if token is None or not token.get_secret_value() or given is None:
        return False
    return hmac.compare_digest(given.encode(), token.get_secret_value().encode())


# --- POST: a delivery -----------------------------------------------------------------------


async def deliver(request: Request) -> Response:
    """The answer to a delivery; a refusal's detail as FastAPI's errors give it."""
    try:
        written = await _deliver(request)
    except Refused as refused:
        return JSONResponse({"detail": refused.detail}, status_code=refused.status)
    return JSONResponse({"written": written})


async def _deliver(request: Request) -> int:
    found = services(request)
    settings = found.settings
    body = await _body(request, settings.http_max_body_bytes)
    if not signed(settings.whatsapp_app_secret, request.headers.get(SIGNATURE_HEADER), body):
        raise Refused(403, f"{SIGNATURE_HEADER} is missing or wrong")
    try:
        items = inbound(_json(body))
    except Malformed as malformed:
        raise Refused(400, str(malformed)) from None
    if not items:  # statuses, other webhook fields: nothing to write, nothing to ask Redis
        return 0
    try:
        return await write(found, items)
    except (redis.RedisError, RedisClusterException) as failure:
        reason = (str(failure).splitlines() or [type(failure).__name__])[0]
        logger(settings).error("whatsapp delivery not written", error=reason)
        raise Refused(503, "Redis could not take the messages; deliver again") from None


async def _body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 past ``limit`` bytes: by its Content-Length before any of
    it is read, else as soon as the chunks read pass it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the body is over ROTA_HTTP_MAX_BODY_BYTES ({limit} bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the body is over ROTA_HTTP_MAX_BODY_BYTES ({limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with ``body``."""
    return SIGNATURE_SCHEME + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed(secret: SecretStr | None, header: str | None, body: bytes) -> bool:
    """Whether ``header`` is the signature of the raw ``body`` (constant time); never without a
    secret."""
    if secret is None or not secret.get_secret_value() or header is None:
        return False
    expected = signature(secret.get_secret_value(), body)
    return hmac.compare_digest(header.strip().lower().encode(), expected.encode())


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise Malformed("the body is not JSON: nested too deep") from None
    except ValueError as error:  # UnicodeDecodeError too
        raise Malformed(f"the body is not JSON: {str(error).splitlines()[0]}") from None


# --- The delivery's shape -------------------------------------------------------------------


def inbound(payload: Any) -> list[Inbound]:
    """Each ``entry[].changes[].value.messages[]`` item of a delivery, in order. Raises
    Malformed for what is not of the shape Meta documents: the containers' types, and the
    strings every message has (``metadata`` with ``display_phone_number`` and
    ``phone_number_id``; ``from``, ``id``, ``type``). A change without ``messages`` (statuses,
    another webhook field) gives nothing."""
    root = _object(payload, "the body")
    found: list[Inbound] = []
    for i, entry in enumerate(_list(root.get("entry"), "entry")):
        where = f"entry[{i}]"
        changes = _object(entry, where).get("changes", [])
        for j, change in enumerate(_list(changes, f"{where}.changes")):
            at = f"{where}.changes[{j}]"
            value = _object(change, at).get("value")
            if value is not None:
                found += _messages(_object(value, f"{at}.value"), f"{at}.value")
    return found


def _messages(value: Mapping[str, Any], where: str) -> list[Inbound]:
    listed = value.get("messages")
    if listed is None:
        return []
    items = _list(listed, f"{where}.messages")
    if not items:
        return []
    metadata = _object(value.get("metadata"), f"{where}.metadata")
    display = _string(metadata, "display_phone_number", f"{where}.metadata")
    phone_number_id = _string(metadata, "phone_number_id", f"{where}.metadata")
    names = _names(value.get("contacts", []), f"{where}.contacts")
    number = _phone(display)
    found = []
    for k, item in enumerate(items):
        at = f"{where}.messages[{k}]"
        message = _object(item, at)
        sender = _string(message, "from", at)
        fields = {
            "number": number,
            "from": _phone(sender),
            "message_id": _string(message, "id", at),
        }
        if sender in names:
            fields["name"] = names[sender]
        text = _text(message, at)
        if text is not None:
            fields["text"] = text
        fields["wa_type"] = _string(message, "type", at)
        found.append(Inbound(phone_number_id, fields))
    return found


def _names(contacts: Any, where: str) -> dict[str, str]:
    """wa_id -> profile.name, for the contacts that have both."""
    names = {}
    for i, item in enumerate(_list(contacts, where)):
        at = f"{where}[{i}]"
        contact = _object(item, at)
        profile = contact.get("profile")
        name = None if profile is None else _object(profile, f"{at}.profile").get("name")
        wa_id = contact.get("wa_id")
        if name is not None and wa_id is not None:
            names[_checked_string(wa_id, f"{at}.wa_id")] = _checked_string(name, f"{at}.name")
    return names


def _text(message: Mapping[str, Any], where: str) -> str | None:
    text = message.get("text")
    if text is None:
        return None
    body = _object(text, f"{where}.text").get("body")
    return None if body is None else _checked_string(body, f"{where}.text.body")


def _phone(text: str) -> str:
    """Normalised as ``rota`` normalises numbers; as given when it is none (the worker then
    dead-letters the message, quoting it)."""
    try:
        return words.phone(text)
    except words.InvalidWord:
        return text


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{where} must be an object")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise Malformed(f"{where} must be a list")
    return value


def _string(container: Mapping[str, Any], name: str, where: str) -> str:
    return _checked_string(container.get(name), f"{where}.{name}")


def _checked_string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise Malformed(f"{where} must be a string")
    return value


# --- Writing --------------------------------------------------------------------------------


RedisFields = dict[FieldT, EncodableT]  # what redis-py's xadd declares it takes


async def write(found: Services, items: Sequence[Inbound]) -> int:
    """The accounts of the delivery's numbers (one HMGET), then every entry in one pipeline,
    each on its account's inbound stream."""
    settings, client = found.settings, found.deliveries
    accounts = await config_redis.whatsapp_accounts(client, {i.phone_number_id for i in items})
    pipe = client.pipeline(transaction=False)
    for item in items:
        account = accounts.get(item.phone_number_id, words.DEFAULT_ACCOUNT)
        fields = {"account": account, **item.fields}
        rejected = messages.check(fields, settings.max_message_bytes)
        if rejected is not None:
            logger(settings).warning(
                "whatsapp message will be dead-lettered",
                error=rejected.error,
                detail=rejected.detail,
                account=account,
                message_id=item.fields["message_id"][:256],
            )
        # The same dict: redis-py's parameter is a dict of its own (invariant) types.
        pipe.xadd(partitions.inbound_stream(settings, account), cast(RedisFields, fields))
    await pipe.execute()
    return len(items)


# The webhook's shape is Meta's, not part of the API's OpenAPI, and at a thousand deliveries a
# second FastAPI's per-request dependency and response handling, its middleware and routing
# cost more CPU than the delivery itself: plain Starlette routes, which the application
# (worker.http.app) calls before any of FastAPI's.
PATH = "/whatsapp"
routes = Router([Route(PATH, verify, methods=["GET"]), Route(PATH, deliver, methods=["POST"])])
