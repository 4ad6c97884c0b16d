"""The admin console at ``/``: sign in with the API token, pick an account and number, edit the
product sheet's "Round Robin Configuration" popup, and watch a live view of the number.

Server-rendered (worker/http/templates), its CSS and one small script served from
worker/http/static by this module, nothing from elsewhere. Signed in means the session cookie
of worker.http.auth; every form that changes something carries the CSRF token. Reads and
writes go through worker.admin and worker.stats, never a key spelled here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import redis
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from worker import admin, decisions, words
from worker.config import MAX_WHOLE, WHEN_NOBODY
from worker.http.app import Services, services
from worker.http.auth import (
    SESSION_COOKIE,
    csrf_ok,
    csrf_token,
    session_value,
    signed_in,
    token_matches,
)

router = APIRouter(include_in_schema=False)  # pages, not the API: kept out of /openapi.json

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
STATIC = {path.name: path for path in (HERE / "static").iterdir() if path.is_file()}
MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}

SIGN_IN, SIGN_OUT = "/console/signin", "/console/signout"
SAVE, LIVE = "/console/number", "/console/live"
LIVE_REFRESH_MS = 3000
RECENT_DECISIONS = 20
MAX_FORM_FIELDS = 50
STATUS_LABELS = {
    "available": "Available",
    "unavailable": "Unavailable",
    "away": "Away",
    "in_break": "In Break",
}
# The page may load only what Rota serves itself, and nobody may frame it.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class Popup:
    """The popup's fields as the form shows them: text as typed, so a refused save loses
    nothing; ``errors`` maps a field to its one-line reason."""

    assign_unknown: bool = True
    members: str = ""
    online_only: bool = True
    admin: str = ""
    capacity: str = "0"
    owner_online_only: bool = False
    when_nobody: str = "admin"
    queue_max_wait_s: str = "0"
    reply_timeout_s: str = "0"
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, shown: dict[str, Any]) -> Popup:
        """The number as stored (``admin.show_number``)."""
        settings = shown["settings"]
        return cls(
            assign_unknown=settings["assign_unknown"],
            members="\n".join(shown["members"]),
            online_only=settings["online_only"],
            admin=settings["admin"] or "",
            capacity=str(settings["capacity"]),
            owner_online_only=settings["owner_online_only"],
            when_nobody=settings["when_nobody"],
            queue_max_wait_s=str(settings["queue_max_wait_s"]),
            reply_timeout_s=str(settings["reply_timeout_s"]),
        )

    @classmethod
    def typed(cls, form: dict[str, str]) -> Popup:
        """What the admin sent (an unticked checkbox is not sent at all)."""
        return cls(
            assign_unknown="assign_unknown" in form,
            members=form.get("members", ""),
            online_only="online_only" in form,
            admin=form.get("admin", ""),
            capacity=form.get("capacity", ""),
            owner_online_only="owner_online_only" in form,
            when_nobody=form.get("when_nobody", ""),
            queue_max_wait_s=form.get("queue_max_wait_s", ""),
            reply_timeout_s=form.get("reply_timeout_s", ""),
        )

    def change(self) -> dict[str, Any]:
        """``admin.set_number``'s keyword arguments; fills ``errors`` with what is refused."""
        change: dict[str, Any] = {
            "assign_unknown": self.assign_unknown,
            "online_only": self.online_only,
            "owner_online_only": self.owner_online_only,
        }
        try:
            # One per line as the form suggests, or comma-separated as on the command line.
            change["members"] = words.members(self.members.replace("\n", ","))
        except words.InvalidWord as invalid:
            self.errors["members"] = str(invalid)
        try:
            # Blank: the number has no admin of its own, the account's is used.
            change["admin"] = words.user(self.admin.strip()) if self.admin.strip() else ""
        except words.InvalidWord as invalid:
            self.errors["admin"] = str(invalid)
        for name, what in (
            ("capacity", "capacity"),
            ("queue_max_wait_s", "queue max wait"),
            ("reply_timeout_s", "reply timeout"),
        ):
            text = getattr(self, name).strip() or "0"
            if text.isascii() and text.isdigit() and int(text) <= MAX_WHOLE:
                change[name] = int(text)
            else:
                self.errors[name] = f"{what} {text!r} must be a whole number from 0 to {MAX_WHOLE}"
        if self.when_nobody in WHEN_NOBODY:
            change["when_nobody"] = self.when_nobody
        else:
            self.errors["when_nobody"] = f"when nobody {self.when_nobody!r} must be admin or queue"
        return change


def _page(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    base = request.scope.get("root_path", "")
    shared = {"base": base, "sign_in": base + SIGN_IN, "sign_out": base + SIGN_OUT}
    response = templates.TemplateResponse(
        request, name, {**shared, **context}, status_code=status_code, headers=HEADERS
    )
    return response


def _to(request: Request, path: str, **query: str) -> RedirectResponse:
    target = request.scope.get("root_path", "") + path
    if query:
        target += "?" + urlencode(query)
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


async def _form(request: Request, found: Services) -> dict[str, str] | None:
    """A urlencoded form's fields (the first of each name); None when it is too large or no
    such form, read at most ROTA_HTTP_MAX_BODY_BYTES far."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > found.settings.http_max_body_bytes:
            return None
    try:
        pairs = parse_qsl(
            body.decode("utf-8", "replace"),
            keep_blank_values=True,
            max_num_fields=MAX_FORM_FIELDS,
        )
    except ValueError:
        return None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


def _refused(request: Request, message: str, status_code: int) -> HTMLResponse:
    return _page(request, "refused.html", {"message": message}, status_code)


# --- Signing in and out -------------------------------------------------------------------


@router.get(SIGN_IN)
def sign_in_page(request: Request, found: Services = Depends(services)) -> Response:  # noqa: B008
    if signed_in(request, found):
        return _to(request, "/")
    return _page(request, "signin.html", _sign_in_context(found), _sign_in_status(found))


@router.post(SIGN_IN)
async def sign_in(request: Request, found: Services = Depends(services)) -> Response:  # noqa: B008
    # No CSRF token here: the form carries the API token itself, which a foreign page cannot
    # know (and the CSRF token, derived from it, must not be shown to someone not signed in).
    form = await _form(request, found)
    if form is None:
        return _refused(request, "The sign-in form could not be read.", 400)
    if not token_matches(found, form.get("token", "")):
        context = {**_sign_in_context(found), "error": "That is not the API token."}
        return _page(request, "signin.html", context, 401 if _configured(found) else 503)
    response = _to(request, "/")
    response.set_cookie(
        SESSION_COOKIE,
        session_value(found),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post(SIGN_OUT)
async def sign_out(request: Request, found: Services = Depends(services)) -> Response:  # noqa: B008
    if not signed_in(request, found):
        return _to(request, SIGN_IN)
    form = await _form(request, found)
    if form is None or not csrf_ok(found, form.get("csrf_token", "")):
        return _refused(request, "This form did not come from the console: reload it.", 403)
    response = _to(request, SIGN_IN)
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _configured(found: Services) -> bool:
    token = found.settings.api_token
    return token is not None and bool(token.get_secret_value())


def _sign_in_context(found: Services) -> dict[str, Any]:
    return {"configured": _configured(found), "error": None}


def _sign_in_status(found: Services) -> int:
    return 200 if _configured(found) else 503


# --- The console --------------------------------------------------------------------------


@dataclass
class Picked:
    """The account and number the page is about, as far as they could be chosen."""

    accounts: list[str]
    account: str | None = None
    numbers: list[str] = field(default_factory=list)
    number: str | None = None
    problem: str | None = None


def _pick(found: Services, account: str | None, number: str | None) -> Picked:
    """The asked-for account and number, else the first ones there are."""
    picked = Picked(admin.accounts(found.client))
    try:
        asked_account = words.account(account) if account else None
        asked_number = words.phone(number) if number else None
    except words.InvalidWord as invalid:
        picked.problem = str(invalid)
        return picked
    if asked_account is not None and asked_account not in picked.accounts:
        picked.problem = f"account {asked_account} has no configuration"
        return picked
    picked.account = asked_account or next(iter(picked.accounts), None)
    if picked.account is None:
        return picked
    picked.numbers = admin.numbers(found.client, picked.account)
    # Another account's number (the account was just switched in the picker): its first one.
    known = asked_number is not None and asked_number in picked.numbers
    picked.number = asked_number if known else next(iter(picked.numbers), None)
    return picked


def _live(found: Services, account: str, number: str) -> dict[str, Any] | None:
    """The live view's context; None when the number has no settings (any more)."""
    shown = admin.show_number(found.client, account, number)
    if shown is None:
        return None
    recent = decisions.recent(found.client, found.settings, account, number, RECENT_DECISIONS)
    rotation = shown["expanded_members"]
    users = [
        {
            "user": user,
            "status": _status(shown["presence"].get(user)),
            "eligible": user in shown["eligible_now"],
            "next": user == shown["next"]["user"],
            "open": shown["open"].get(user, 0),
            "chats_today": shown["chats_today"].get(user, 0),
            "at_capacity": user in shown["at_capacity"],
        }
        for user in rotation
    ]
    admin_user = shown["settings"]["effective_admin"]
    return {
        "shown": shown,
        "users": users,
        "admin_user": admin_user,
        "admin_open": shown["open"].get(admin_user, 0) if admin_user else 0,
        # The admin a blank admin field means: the account's (the number has none of its own).
        "account_admin": admin_user if shown["settings"]["admin"] is None else None,
        "oldest_wait": _duration(shown["oldest_wait_ms"]),
        "chats_today": sum(shown["chats_today"].values()),
        # Customers masked as the logs mask them: who got the chat matters here, not who wrote.
        "recent": [
            {**asdict(record), "customer": words.mask(record.customer), "when": _clock(record.at)}
            for _, record in recent.decisions
        ],
        "recent_limit": RECENT_DECISIONS,
        "updated": _clock(int(time.time() * 1000)),
    }


def _status(stored: str | None) -> dict[str, str]:
    """A stored status as the canonical word and the sheet's label; a value that is no status
    (written by hand) counts as unavailable, as the worker counts it, and is shown as it is."""
    try:
        canonical = words.status(stored or "unavailable")
    except words.InvalidWord:
        return {"status": "unavailable", "label": (stored or "")[:64]}
    return {"status": canonical, "label": STATUS_LABELS[canonical]}


def _clock(at_ms: int) -> dict[str, str]:
    seconds = at_ms / 1000
    return {
        "time": time.strftime("%H:%M:%S", time.gmtime(seconds)),
        "iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)),
    }


def _duration(ms: int | None) -> str | None:
    if ms is None:
        return None
    seconds = ms // 1000
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _console(
    request: Request,
    found: Services,
    picked: Picked,
    popup: Popup | None = None,
    saved: bool = False,
    warnings: list[str] | None = None,
    failure: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    live = None
    if picked.account is not None and picked.number is not None:
        live = _live(found, picked.account, picked.number)
        if live is None and popup is None:
            picked.problem = f"account {picked.account} number {picked.number} has no settings"
        elif popup is None and live is not None:
            popup = Popup.of(live["shown"])
    context = {
        "picked": picked,
        "popup": popup,
        "live": live,
        "saved": saved,
        "warnings": warnings or [],
        "failure": failure,
        "csrf_token": csrf_token(found),
        "save_url": request.scope.get("root_path", "") + SAVE,
        "live_url": _live_url(request, picked),
        "refresh_ms": LIVE_REFRESH_MS,
    }
    return _page(request, "console.html", context, status_code)


def _live_url(request: Request, picked: Picked) -> str | None:
    if picked.account is None or picked.number is None:
        return None
    query = urlencode({"account": picked.account, "number": picked.number})
    return f"{request.scope.get('root_path', '')}{LIVE}?{query}"


@router.get("/")
def console(
    request: Request,
    account: str | None = None,
    number: str | None = None,
    found: Services = Depends(services),  # noqa: B008
) -> Response:
    if not signed_in(request, found):
        return _to(request, SIGN_IN)
    status_code = 200
    picked = _pick(found, account, number)
    if picked.problem is not None:
        status_code = 404
    return _console(request, found, picked, status_code=status_code)


@router.post(SAVE)
async def save(request: Request, found: Services = Depends(services)) -> Response:  # noqa: B008
    """Writes the popup through ``admin.set_number``: all of it or, when any field is refused,
    none of it, the page shown again with what was typed and why."""
    if not signed_in(request, found):
        return _to(request, SIGN_IN)
    form = await _form(request, found)
    if form is None or not csrf_ok(found, form.get("csrf_token", "")):
        return _refused(request, "This form did not come from the console: reload it.", 403)
    try:
        account = words.account(form.get("account", ""))
        number = words.phone(form.get("number", ""))
    except words.InvalidWord as invalid:
        return _refused(request, str(invalid), 400)
    # The form's own number even if it vanished meanwhile: saving writes it back.
    picked = await run_in_threadpool(_pick, found, account, number)
    picked.account, picked.number, picked.problem = account, number, None
    popup = Popup.typed(form)
    change = popup.change()
    if popup.errors:
        return await run_in_threadpool(
            lambda: _console(request, found, picked, popup, status_code=400)
        )
    try:
        warnings = await run_in_threadpool(
            lambda: admin.set_number(found.client, account, number, **change)
        )
    except redis.RedisError as error:
        failure = "Not saved: " + (str(error).splitlines() or [type(error).__name__])[0]
        return await run_in_threadpool(
            lambda: _console(request, found, picked, popup, failure=failure, status_code=503)
        )
    return await run_in_threadpool(
        lambda: _console(
            request, found, _pick(found, account, number), saved=True, warnings=warnings
        )
    )


@router.get(LIVE)
def live(
    request: Request,
    account: str = "",
    number: str = "",
    found: Services = Depends(services),  # noqa: B008
) -> Response:
    """The live view's HTML, which the page's script fetches every few seconds (signed in by
    the session cookie: 401 without, which the script shows and stops at)."""
    if not signed_in(request, found):
        return _page(request, "live.html", {"signed_out": True}, 401)
    try:
        account, number = words.account(account), words.phone(number)
    except words.InvalidWord as invalid:
        return _page(request, "live.html", {"problem": str(invalid)}, 400)
    try:
        shown = _live(found, account, number)
    except redis.RedisError as error:  # the page keeps asking: say why the view is stale
        problem = "Not refreshed: " + (str(error).splitlines() or [type(error).__name__])[0]
        return _page(request, "live.html", {"problem": problem}, 503)
    if shown is None:
        problem = f"account {account} number {number} has no settings"
        return _page(request, "live.html", {"problem": problem}, 404)
    return _page(request, "live.html", {"live": shown})


@router.get("/console/static/{name}")
def static(name: str) -> Response:
    """The console's own CSS and script (no CDN): only the files shipped in static/."""
    path = STATIC.get(name)
    if path is None:
        return Response(status_code=404)
    media_type = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(
        path,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )
