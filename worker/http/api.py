"""``/api/v1``: the JSON API a CRM front end uses (presence, the conversation activity, the
number settings of the product sheet's popup, ``number show``, stats, recent decisions).

Every operation needs ``Authorization: Bearer ROTA_API_TOKEN``, checked before the request
is even parsed (so a request without it learns nothing, not even that its body is wrong). It
calls the Python API (worker.client, worker.admin, worker.stats, worker.decisions), never a
key itself. Refusals: 422 (the form of an id or a body: FastAPI's list of what is wrong), and
one line in ``detail``: 400 (``Refused``: what the worker would dead-letter), 401, 404, 503
(Redis unreachable or refusing)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import AfterValidator
from redis.exceptions import RedisClusterException

from worker import admin, config_redis, connection, decisions, stats, words
from worker.client import Refused
from worker.http import auth
from worker.http.app import Services, services
from worker.http.models import (
    ACCOUNT_PATTERN,
    PHONE_PATTERN,
    USER_PATTERN,
    Accepted,
    AccountStats,
    Activity,
    Conversation,
    Decision,
    Decisions,
    NumberSettings,
    NumberSettingsChange,
    NumberSettingsWritten,
    NumberShown,
    Presence,
    PresenceSet,
    Problem,
    UserActivity,
    customer_id,
)


class _Guarded(APIRoute):
    """Every route of the API: the token first, then the operation, whose refusals by the
    Python API and by Redis become one-line answers instead of a 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                auth.bearer(request, services(request))
            except HTTPException as refused:  # says which scheme, as a 401 must
                raise HTTPException(
                    refused.status_code, refused.detail, {"WWW-Authenticate": "Bearer"}
                ) from None
            try:
                return await handle(request)
            except Refused as refused:
                return _problem(400, f"{refused.error}: {refused.detail}")
            except (redis.RedisError, RedisClusterException) as failure:
                return _problem(503, _redis_failure(failure))

        return guarded


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": (detail.splitlines() or [""])[0]}, status_code=status)


def _redis_failure(failure: Exception) -> str:
    refused = connection.refusal(failure)
    if refused is not None:
        return f"redis refused: {refused}"
    if isinstance(failure, redis.ConnectionError | redis.TimeoutError):
        return f"redis unreachable: {failure}"
    return f"redis failed: {failure}"


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Problem} for status in statuses}


# Documents the scheme in the OpenAPI (clients and tools see it); _Guarded enforces it.
_BEARER = HTTPBearer(
    auto_error=False, scheme_name="ApiToken", description="`Bearer ROTA_API_TOKEN`"
)
router = APIRouter(
    prefix="/api/v1",
    route_class=_Guarded,
    dependencies=[Security(_BEARER)],
    responses=_problems(401, 503),
)

Found = Annotated[Services, Depends(services)]
AccountId = Annotated[
    str,
    Path(pattern=ACCOUNT_PATTERN, description="a CRM tenant", examples=["acme"]),
    AfterValidator(words.account),
]
NumberId = Annotated[
    str,
    Path(
        pattern=PHONE_PATTERN,
        description="a WhatsApp Business number: 6-15 digits; +, spaces, dashes, dots and "
        "brackets are dropped",
        examples=["15550001000"],
    ),
    AfterValidator(words.phone),
]
CustomerId = Annotated[
    str,
    Path(
        pattern=PHONE_PATTERN,
        description="the customer's number: the same form as a number",
        examples=["447700900123"],
    ),
    AfterValidator(customer_id),
]
UserId = Annotated[
    str,
    Path(pattern=USER_PATTERN, description="a CRM user id", examples=["alice@acme.example"]),
    AfterValidator(words.user),
]
CONVERSATION = "/accounts/{account}/numbers/{number}/conversations/{customer}"


# --- Presence -------------------------------------------------------------------------------


@router.put(
    "/accounts/{account}/users/{user}/presence",
    tags=["presence"],
    responses=_problems(400),
)
def set_presence(account: AccountId, user: UserId, change: PresenceSet, found: Found) -> Presence:
    """Sets the user's status, at once (not through the stream); it also counts as a
    heartbeat."""
    found.rota.set_presence(account, user, change.status)
    return Presence(account=account, user=user, status=change.status)


@router.post(
    "/accounts/{account}/users/{user}/heartbeat",
    status_code=202,
    tags=["presence"],
    responses=_problems(400),
)
def heartbeat(
    account: AccountId, user: UserId, found: Found, activity: Activity | None = None
) -> Accepted:
    """The user's client is alive (it matters with the account's `presence_ttl_s`)."""
    message_id = activity.message_id if activity else None
    return Accepted(inbound_id=found.rota.heartbeat(account, user, message_id))


# --- Conversations --------------------------------------------------------------------------


@router.get(CONVERSATION, tags=["conversations"])
def show_conversation(
    account: AccountId, number: NumberId, customer: CustomerId, found: Found
) -> Conversation:
    """Who has the conversation and in what state: the same as `rota conversation show`."""
    return Conversation(**found.rota.show_conversation(account, number, customer))


@router.post(
    CONVERSATION + "/replied", status_code=202, tags=["conversations"], responses=_problems(400)
)
def replied(
    account: AccountId, number: NumberId, customer: CustomerId, activity: UserActivity, found: Found
) -> Accepted:
    """The user answered the customer: stops the reply timer if the user holds the
    conversation; counts as the user's heartbeat."""
    entry = found.rota.replied(account, number, customer, activity.user, activity.message_id)
    return Accepted(inbound_id=entry)


@router.post(
    CONVERSATION + "/close", status_code=202, tags=["conversations"], responses=_problems(400)
)
def close(
    account: AccountId,
    number: NumberId,
    customer: CustomerId,
    found: Found,
    activity: Activity | None = None,
) -> Accepted:
    """Closes the conversation: its user's slot frees; the user stays the owner."""
    message_id = activity.message_id if activity else None
    return Accepted(inbound_id=found.rota.close(account, number, customer, message_id))


@router.post(
    CONVERSATION + "/transfer", status_code=202, tags=["conversations"], responses=_problems(400)
)
def transfer(
    account: AccountId, number: NumberId, customer: CustomerId, activity: UserActivity, found: Found
) -> Accepted:
    """The user takes the conversation now, whatever their status or capacity, and becomes
    the owner (reason `transfer`)."""
    entry = found.rota.transfer(account, number, customer, activity.user, activity.message_id)
    return Accepted(inbound_id=entry)


# --- Numbers --------------------------------------------------------------------------------


def _no_settings(account: str, number: str) -> HTTPException:
    return HTTPException(404, f"no settings for account {account} number {number}")


@router.get("/accounts/{account}/numbers/{number}", tags=["numbers"], responses=_problems(404))
def show_number(account: AccountId, number: NumberId, found: Found) -> NumberShown:
    """Settings, the rotation, who is eligible now and next, open conversations, the queue,
    chats today: the same as `rota number show`."""
    shown = admin.show_number(found.client, account, number)
    if shown is None:
        raise _no_settings(account, number)
    return NumberShown.model_validate(shown)


def _settings(found: Services, account: str, number: str) -> NumberSettings | None:
    config = config_redis.read_number(found.client, account, number)
    if config is None:
        return None
    return NumberSettings(
        assign_unknown=config.assign_unknown,
        members=config.members,
        access=config.access,
        online_only=config.online_only,
        admin=config.admin,
        capacity=config.capacity,
        owner_online_only=config.owner_online_only,
        when_nobody="queue" if config.when_nobody == "queue" else "admin",
        queue_max_wait_s=config.queue_max_wait_s,
        reply_timeout_s=config.reply_timeout_s,
    )


@router.get(
    "/accounts/{account}/numbers/{number}/settings", tags=["numbers"], responses=_problems(404)
)
def number_settings(account: AccountId, number: NumberId, found: Found) -> NumberSettings:
    """The product sheet's popup and the conversation settings of the number."""
    shown = _settings(found, account, number)
    if shown is None:
        raise _no_settings(account, number)
    return shown


@router.patch(
    "/accounts/{account}/numbers/{number}/settings", tags=["numbers"], responses=_problems(400)
)
def change_number_settings(
    account: AccountId, number: NumberId, change: NumberSettingsChange, found: Found
) -> NumberSettingsWritten:
    """Changes what is given and keeps the rest, atomically (as `rota number set`); returns
    all the settings and the warnings (members that access leaves out)."""
    given = change.model_dump(exclude_unset=True)
    if "admin" in given and given["admin"] is None:
        given["admin"] = ""  # stored empty: no admin of its own, the account's applies
    warnings = admin.set_number(found.client, account, number, **given)
    written = _settings(found, account, number)
    if written is None:  # removed between the write and the read
        raise _no_settings(account, number)
    return NumberSettingsWritten(settings=written, warnings=warnings)


# --- Stats and decisions --------------------------------------------------------------------


@router.get("/accounts/{account}/stats", tags=["stats"])
def account_stats(account: AccountId, found: Found) -> AccountStats:
    """The account's queue, chats per user today, and each number's eligible users, next
    user, cursor and queue: the same as the `account` of `rota stats ACCOUNT`."""
    return AccountStats.model_validate(stats.account(found.client, account))


NumberFilter = Annotated[
    str | None,
    Query(pattern=PHONE_PATTERN, description="only this number's decisions"),
    AfterValidator(lambda text: None if text is None else words.phone(text)),
]


@router.get(
    "/accounts/{account}/decisions",
    tags=["stats"],
    description="The account's last `limit` decisions (and changes of user), newest first, "
    "from the decisions stream. Bounded work: at most "
    f"{decisions.SCAN_LIMIT} of the stream's newest entries (all accounts') are looked at; "
    "`searched_all` says whether that reached the stream's start.",
)
def recent_decisions(
    account: AccountId,
    found: Found,
    number: NumberFilter = None,
    limit: Annotated[
        int, Query(ge=1, le=decisions.MAX_LIMIT, description="how many, newest first")
    ] = 20,
) -> Decisions:
    found_ = decisions.recent(found.client, found.settings, account, number, limit)
    return Decisions(
        decisions=[
            Decision(id=entry_id, **asdict(record)) for entry_id, record in found_.decisions
        ],
        scanned=found_.scanned,
        searched_all=found_.searched_all,
    )
