"""Who may use the API and the console: the bearer token ``ROTA_API_TOKEN`` (compared in
constant time), or the console's session cookie derived from it (never the token itself), and
the console forms' CSRF token derived from the session."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, HTTPException, Request

from worker.http.app import Services, services

SESSION_COOKIE = "rota_session"


def _derived(secret: str, purpose: str) -> str:
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def token_matches(found: Services, given: str) -> bool:
    """Whether ``given`` is the API token; False when none is configured."""
    token = found.settings.api_token
    if token is None or not token.get_secret_value():
        return False
    return hmac.compare_digest(given.encode(), token.get_secret_value().encode())


def session_value(found: Services) -> str:
    """The console's cookie value once signed in: a digest of the token, so a leaked cookie
    does not leak the token."""
    assert found.settings.api_token is not None
    return _derived(found.settings.api_token.get_secret_value(), "rota console session")


def signed_in(request: Request, found: Services) -> bool:
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if found.settings.api_token is None or not cookie:
        return False
    return hmac.compare_digest(cookie.encode(), session_value(found).encode())


def csrf_token(found: Services) -> str:
    """What every console form carries back (the cookie alone, sent by a foreign page's form,
    is not enough)."""
    return _derived(session_value(found), "rota console csrf")


def csrf_ok(found: Services, given: str) -> bool:
    return hmac.compare_digest(given.encode(), csrf_token(found).encode())


def bearer(request: Request, found: Services = Depends(services)) -> Services:  # noqa: B008
    """The API's dependency: 401 unless ``Authorization: Bearer ROTA_API_TOKEN``."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token_matches(found, given.strip()):
        raise HTTPException(401, "a bearer token (ROTA_API_TOKEN) is required")
    return found
