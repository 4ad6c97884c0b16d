"""``/api/v1``: every operation with the token, none without it; the same JSON as the command
line; activity decided by a real worker; bad input 4xx, Redis down 503, never a 500 (with
schemathesis generating the requests from ``/openapi.json``)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import fastapi.routing
import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from pydantic import Field, SecretStr, TypeAdapter, ValidationError
from schemathesis.checks import allow_header_conformance
from schemathesis.config import SchemathesisConfig

from tests.conftest import Target, make_settings
from tests.helpers import ACCOUNT, NUMBER, events, given_number, given_presence, run_burst, send
from worker import decisions, words
from worker.http import models
from worker.http.app import create_app
from worker.settings import Settings

TOKEN = "api-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
C1, C2, C3 = "447700900001", "447700900002", "447700900003"
OTHER_NUMBER = "15550002000"
PATH_VALUES = {"account": ACCOUNT, "number": NUMBER, "customer": C1, "user": "alice"}
CONVERSATION = "/api/v1/accounts/{account}/numbers/{number}/conversations/{customer}"


@dataclass(frozen=True)
class Call:
    """One request of an operation that succeeds once the number is set up."""

    status: int
    body: dict[str, Any] | None = None
    query: dict[str, Any] = field(default_factory=dict)


# Every operation of the API, a request of it and its status: a route added without an entry
# here fails test_the_table_lists_every_operation.
OPERATIONS: dict[tuple[str, str], Call] = {
    ("PUT", "/api/v1/accounts/{account}/users/{user}/presence"): Call(200, {"status": "Away"}),
    ("POST", "/api/v1/accounts/{account}/users/{user}/heartbeat"): Call(202),
    ("GET", CONVERSATION): Call(200),
    ("POST", CONVERSATION + "/replied"): Call(202, {"user": "alice"}),
    ("POST", CONVERSATION + "/close"): Call(202, {"message_id": "close.1"}),
    ("POST", CONVERSATION + "/transfer"): Call(202, {"user": "bob"}),
    ("GET", "/api/v1/accounts/{account}/numbers/{number}"): Call(200),
    ("GET", "/api/v1/accounts/{account}/numbers/{number}/settings"): Call(200),
    ("PATCH", "/api/v1/accounts/{account}/numbers/{number}/settings"): Call(200, {"capacity": 2}),
    ("GET", "/api/v1/accounts/{account}/stats"): Call(200),
    ("GET", "/api/v1/accounts/{account}/decisions"): Call(200, query={"limit": 5}),
}


def api_settings(url: str) -> Settings:
    return make_settings(url, api_token=SecretStr(TOKEN))


@pytest.fixture
def app(target: Target, rd: Any) -> FastAPI:
    """The application on the test's server (never the one on 6379)."""
    return create_app(api_settings(target.url), client=rd)


@pytest.fixture
def api(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


Json = Callable[..., Any]


@pytest.fixture
def rota_json(rota: Callable[..., str]) -> Json:
    """``rota ARGS`` in this process, on the test's server: its JSON output, if any."""

    def run(*args: str) -> Any:
        out = rota(*args)
        return json.loads(out) if out.strip() else None

    return run


def api_operations(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the application serves under /api/, whichever router added it."""
    # Newer FastAPI keeps an included router's routes inside it; older ones copy them out.
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: Iterable[Any] = flatten(app.routes) if flatten is not None else app.routes
    return {
        (method, route.path)
        for route in routes
        if (getattr(route, "path", None) or "").startswith("/api/")
        for method in getattr(route, "methods", None) or ()
    }


def url(template: str, **values: str) -> str:
    return template.format(**{**PATH_VALUES, **values})


def request(api: TestClient, method: str, template: str, call: Call, **headers: str) -> Any:
    return api.request(
        method, url(template), json=call.body, params=call.query, headers=headers or AUTH
    )


# --- Who may call it ------------------------------------------------------------------------


def test_the_table_lists_every_operation(app: FastAPI) -> None:
    assert set(api_operations(app)) == set(OPERATIONS)


def test_the_openapi_lists_every_operation_with_the_bearer_scheme(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    listed = {
        (method.upper(), path): operation
        for path, operations in document["paths"].items()
        if path.startswith("/api/")
        for method, operation in operations.items()
    }
    assert set(listed) == set(OPERATIONS)
    assert document["components"]["securitySchemes"] == {
        "ApiToken": {"type": "http", "scheme": "bearer", "description": "`Bearer ROTA_API_TOKEN`"}
    }
    for operation in listed.values():
        assert operation["security"] == [{"ApiToken": []}]
        assert {"401", "422", "503"} <= set(operation["responses"])


WRONG_AUTHORIZATIONS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    f"Basic {TOKEN}",
    TOKEN,
    "Bearer " + "x" * 10_000,
]


@pytest.mark.parametrize("authorization", WRONG_AUTHORIZATIONS)
def test_every_operation_answers_401_without_the_token(
    app: FastAPI, api: TestClient, rd: Any, settings: Settings, authorization: str | None
) -> None:
    """Whatever else is wrong with the request (here: nothing; then an invalid id and a body
    that is no JSON), the answer is 401 and nothing is written."""
    given_number(rd, ["alice"])
    headers = {} if authorization is None else {"Authorization": authorization}
    before = rd.dbsize()
    for method, template in api_operations(app):
        for path, body in (
            (url(template), None),
            (url(template, account="no such account!", customer="x"), b"{not json"),
        ):
            response = api.request(
                method, path, content=body, headers={**headers, "content-type": "application/json"}
            )
            assert response.status_code == 401, (method, path, response.text)
            assert response.json() == {"detail": "a bearer token (ROTA_API_TOKEN) is required"}
            assert response.headers["www-authenticate"] == "Bearer"
    assert rd.dbsize() == before
    assert rd.xlen(settings.inbound_stream) == 0


def test_without_a_configured_token_nothing_is_allowed(target: Target, rd: Any) -> None:
    app = create_app(make_settings(target.url), client=rd)
    with TestClient(app) as api:
        for (method, template), call in OPERATIONS.items():
            assert request(api, method, template, call, Authorization="Bearer ").status_code == 401


@pytest.mark.parametrize(("method", "template"), list(OPERATIONS))
def test_each_operation_works_with_the_token(
    api: TestClient, rd: Any, method: str, template: str
) -> None:
    given_number(rd, ["alice", "bob"])
    response = request(api, method, template, OPERATIONS[method, template])
    assert response.status_code == OPERATIONS[method, template].status, response.text
    assert response.headers["content-type"] == "application/json"


# --- Presence and activity ------------------------------------------------------------------


def inbound(rd: Any, settings: Settings) -> list[dict[str, str]]:
    return [fields for _, fields in rd.xrange(settings.inbound_stream)]


def test_presence_is_stored_canonical_and_shown_by_number_show(
    api: TestClient, rd: Any, rota_json: Json
) -> None:
    given_number(rd, ["alice", "bob"])
    presence = "/api/v1/accounts/acme/users/{user}/presence"

    response = api.put(presence.format(user="alice"), json={"status": "In Break"}, headers=AUTH)
    assert (response.status_code, response.json()) == (
        200,
        {"account": ACCOUNT, "user": "alice", "status": "in_break"},
    )
    api.put(presence.format(user="bob"), json={"status": "AVAILABLE"}, headers=AUTH)
    shown = rota_json("number", "show", ACCOUNT, NUMBER)
    assert shown["presence"] == {"alice": "in_break", "bob": "available"}
    assert shown["eligible_now"] == ["bob"]

    for bad in ({"status": "asleep"}, {"status": 1}, {}, {"status": "away", "extra": 1}):
        assert api.put(presence.format(user="bob"), json=bad, headers=AUTH).status_code == 422
    bad_user = api.put(presence.format(user="bob smith"), json={"status": "away"}, headers=AUTH)
    assert bad_user.status_code == 422
    assert rota_json("number", "show", ACCOUNT, NUMBER)["presence"]["bob"] == "available"


def test_activity_goes_on_the_inbound_stream_in_order_and_answers_its_entry_id(
    api: TestClient, rd: Any, settings: Settings
) -> None:
    customer = "/api/v1/accounts/acme/numbers/+1 (555) 000-1000/conversations/+44 7700 900001"
    ids = [
        api.post("/api/v1/accounts/acme/users/alice/heartbeat", headers=AUTH),
        api.post(customer + "/replied", json={"user": "alice", "message_id": "r.1"}, headers=AUTH),
        api.post(customer + "/close", headers=AUTH),
        api.post(customer + "/transfer", json={"user": "bob"}, headers=AUTH),
    ]
    assert [r.status_code for r in ids] == [202] * 4
    entries = rd.xrange(settings.inbound_stream)
    assert [r.json() for r in ids] == [{"inbound_id": entry_id} for entry_id, _ in entries]
    conversation = {"account": ACCOUNT, "number": NUMBER, "customer": C1}
    assert [fields for _, fields in entries] == [
        {"type": "heartbeat", "account": ACCOUNT, "user": "alice"},
        {"type": "replied", **conversation, "user": "alice", "message_id": "r.1"},
        {"type": "closed", **conversation},
        {"type": "transfer", **conversation, "user": "bob"},
    ]


def test_what_the_worker_would_dead_letter_is_400_and_nothing_is_written(
    target: Target, rd: Any
) -> None:
    """An entry over ROTA_MAX_MESSAGE_BYTES, here its least: the worker's too_large."""
    settings = make_settings(target.url, api_token=SecretStr(TOKEN), max_message_bytes=256)
    with TestClient(create_app(settings, client=rd)) as api:
        transfer = url(CONVERSATION + "/transfer")
        response = api.post(transfer, json={"user": "bob", "message_id": "m" * 200}, headers=AUTH)
        assert response.status_code == 400
        assert re.fullmatch(r"too_large: \d+ bytes, limit 256", response.json()["detail"])
        assert rd.xlen(settings.inbound_stream) == 0
        assert api.post(transfer, json={"user": "bob"}, headers=AUTH).status_code == 202


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CONVERSATION.replace("{customer}", "12345") + "/close", None),  # 5 digits
        (CONVERSATION.replace("{number}", "1555000100099999") + "/close", None),  # 16 digits
        (CONVERSATION.replace("{account}", "a" * 65) + "/close", None),
        (CONVERSATION + "/transfer", {"user": "bob smith"}),
        (CONVERSATION + "/transfer", {}),
        (CONVERSATION + "/transfer", {"user": "bob", "other": "x"}),
        (CONVERSATION + "/replied", {"user": ["bob"]}),
        (CONVERSATION + "/close", {"message_id": 7}),
        (CONVERSATION + "/close", {"message_id": "m" * 257}),  # the worker's limit: 256 bytes
        (CONVERSATION + "/close", {"message_id": "é"}),  # not ASCII: its bytes are no length
        (CONVERSATION + "/close", {"message_id": "a b"}),
        (CONVERSATION + "/close", {"message_id": ""}),
        (CONVERSATION + "/close", {"message_id": None}),
        ("/api/v1/accounts/{account}/users/alice:x/heartbeat", None),
    ],
)
def test_ids_of_the_wrong_form_are_422_and_nothing_is_written(
    api: TestClient, rd: Any, settings: Settings, path: str, body: dict[str, Any] | None
) -> None:
    assert api.post(url(path), json=body, headers=AUTH).status_code == 422
    assert rd.xlen(settings.inbound_stream) == 0


def test_a_transfer_through_the_api_is_decided_by_a_worker(
    api: TestClient, rd: Any, rb: Any, settings: Settings, rota_json: Json
) -> None:
    given_number(rd, ["alice", "bob"], online_only=False)
    send(rd, settings, C1)
    assert run_burst(rb, settings) == 0
    show = url(CONVERSATION)
    assert api.get(show, headers=AUTH).json()["user"] == "alice"

    response = api.post(show + "/transfer", json={"user": "bob", "message_id": "t.1"}, headers=AUTH)
    assert response.status_code == 202
    assert run_burst(rb, settings) == 0

    [moved] = [e for e in events(rd, settings) if e["reason"] == "transfer"]
    assert (moved["user"], moved["previous"], moved["inbound_id"]) == (
        "bob",
        "alice",
        response.json()["inbound_id"],
    )
    shown = api.get(show, headers=AUTH).json()
    assert shown == rota_json("conversation", "show", ACCOUNT, NUMBER, C1)
    assert shown == {
        "user": "bob",
        "state": "open",
        "replied": False,
        "reply_deadline": None,
        "tried": ["alice", "bob"],
    }


def test_conversation_show_is_the_command_lines_in_each_state(
    api: TestClient, rd: Any, rb: Any, settings: Settings, rota_json: Json
) -> None:
    given_number(rd, ["alice"], capacity=1, when_nobody="queue", reply_timeout_s=600)
    given_presence(rd, alice="available")
    for customer in (C1, C2):
        send(rd, settings, customer)
    api.post(url(CONVERSATION, customer=C3) + "/close", headers=AUTH)  # never opened
    assert run_burst(rb, settings) == 0
    states = {}
    for customer in (C1, C2, C3, "447700900009"):
        shown = api.get(url(CONVERSATION, customer=customer), headers=AUTH).json()
        assert shown == rota_json("conversation", "show", ACCOUNT, NUMBER, customer)
        states[customer] = (shown["state"], shown["user"], shown["reply_deadline"] is not None)
    assert states == {
        C1: ("open", "alice", True),
        C2: ("queued", None, False),
        C3: ("none", None, False),
        "447700900009": ("none", None, False),
    }


# --- Number settings ------------------------------------------------------------------------

SETTINGS_PATH = "/api/v1/accounts/acme/numbers/15550001000/settings"
POPUP_FIELDS = ("assign_unknown", "online_only", "admin")
CONVERSATION_FIELDS = (
    "capacity",
    "owner_online_only",
    "when_nobody",
    "queue_max_wait_s",
    "reply_timeout_s",
)


def from_number_show(shown: dict[str, Any]) -> dict[str, Any]:
    """The settings the API reads and writes, as `rota number show` prints them."""
    return {
        **{name: shown["settings"][name] for name in POPUP_FIELDS + CONVERSATION_FIELDS},
        "members": shown["members"],
        "access": shown["access"],
    }


def test_a_new_number_gets_the_contracts_defaults(api: TestClient, rota_json: Json) -> None:
    assert api.get(SETTINGS_PATH, headers=AUTH).status_code == 404
    response = api.patch(SETTINGS_PATH, json={}, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {
        "settings": {
            "assign_unknown": True,
            "members": [],
            "access": [],
            "online_only": True,
            "admin": None,
            "capacity": 0,
            "owner_online_only": False,
            "when_nobody": "admin",
            "queue_max_wait_s": 0,
            "reply_timeout_s": 0,
        },
        "warnings": [],
    }
    shown = rota_json("number", "show", ACCOUNT, NUMBER)
    assert from_number_show(shown) == response.json()["settings"]


def test_number_settings_round_trip_with_number_show(api: TestClient, rota_json: Json) -> None:
    rota_json("group", "set", ACCOUNT, "sales", "dave", "erin")
    popup = {
        "assign_unknown": False,
        "members": ["carol", "group:sales", "alice@acme.example"],
        "online_only": False,
        "admin": "boss",
    }
    response = api.patch(SETTINGS_PATH, json=popup, headers=AUTH)
    assert response.status_code == 200, response.text
    written = response.json()["settings"]
    shown = rota_json("number", "show", ACCOUNT, NUMBER)
    assert from_number_show(shown) == written == api.get(SETTINGS_PATH, headers=AUTH).json()
    assert {name: written[name] for name in popup} == popup
    assert shown["expanded_members"] == ["carol", "dave", "erin", "alice@acme.example"]

    conversation = {
        "capacity": 3.0,  # the same JSON number as 3
        "owner_online_only": True,
        "when_nobody": "queue",
        "queue_max_wait_s": 600,
        "reply_timeout_s": 120,
    }
    api.patch(SETTINGS_PATH, json=conversation, headers=AUTH)  # the popup's fields stay
    shown = rota_json("number", "show", ACCOUNT, NUMBER)
    assert from_number_show(shown) == {**written, **conversation, "capacity": 3}

    # Written by the command line, read by the API.
    rota_json("number", "set", ACCOUNT, NUMBER, "--members", "zoe", "--online-only")
    rota_json("number", "set", ACCOUNT, NUMBER, "--capacity", "0")
    read = api.get(SETTINGS_PATH, headers=AUTH).json()
    assert read == from_number_show(rota_json("number", "show", ACCOUNT, NUMBER))
    assert (read["members"], read["online_only"], read["capacity"]) == (["zoe"], True, 0)

    # null clears the number's admin: the account's applies again.
    rota_json("account", "set", ACCOUNT, "--admin", "chief")
    assert api.patch(SETTINGS_PATH, json={"admin": None}, headers=AUTH).status_code == 200
    shown = rota_json("number", "show", ACCOUNT, NUMBER)
    assert (shown["settings"]["admin"], shown["settings"]["effective_admin"]) == (None, "chief")
    assert api.get(SETTINGS_PATH, headers=AUTH).json()["admin"] is None


def test_a_settings_write_returns_the_warnings_of_number_set(api: TestClient) -> None:
    response = api.patch(
        SETTINGS_PATH, json={"members": ["alice", "carol"], "access": ["alice"]}, headers=AUTH
    )
    assert response.json()["warnings"] == [
        "member carol has no access to 15550001000 and will not get chats"
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"capacity": "5"},
        {"capacity": -1},
        {"capacity": 2**31},
        {"capacity": 1.5},
        {"assign_unknown": 1},
        {"online_only": "true"},
        {"online_only": None},
        {"members": "alice,bob"},
        {"members": ["alice", "group:"]},
        {"members": ["bob smith"]},
        {"admin": ""},
        {"when_nobody": "nobody"},
        {"presence_ttl_s": 5},
        {"onlineOnly": False},
    ],
)
def test_settings_of_the_wrong_form_are_422_and_change_nothing(
    api: TestClient, rd: Any, change: dict[str, Any]
) -> None:
    given_number(rd, ["alice"], capacity=1)
    before = api.get(SETTINGS_PATH, headers=AUTH).json()
    response = api.patch(SETTINGS_PATH, json=change, headers=AUTH)
    assert response.status_code == 422, response.text
    assert api.get(SETTINGS_PATH, headers=AUTH).json() == before


def test_number_show_is_the_command_lines(
    api: TestClient, rd: Any, rb: Any, settings: Settings, rota_json: Json
) -> None:
    assert api.get("/api/v1/accounts/acme/numbers/15550001000", headers=AUTH).json() == {
        "detail": "no settings for account acme number 15550001000"
    }
    given_number(rd, ["alice", "bob"], capacity=1, admin="boss")
    given_presence(rd, alice="available", bob="in_break")
    send(rd, settings, C1)
    assert run_burst(rb, settings) == 0

    response = api.get("/api/v1/accounts/acme/numbers/+1-555-000-1000", headers=AUTH)
    assert response.status_code == 200
    shown = response.json()
    assert shown == rota_json("number", "show", ACCOUNT, NUMBER)
    assert (shown["open"], shown["at_capacity"], shown["next"]) == (
        {"alice": 1},
        ["alice"],
        {"user": "boss", "reason": "admin_fallback"},
    )


# --- Stats and decisions --------------------------------------------------------------------


def test_stats_are_the_command_lines_account(
    api: TestClient, rd: Any, rb: Any, settings: Settings, rota_json: Json
) -> None:
    given_number(rd, ["alice", "bob"], online_only=False)
    given_number(rd, ["carol"], number=OTHER_NUMBER, online_only=False)
    for customer in (C1, C2):
        send(rd, settings, customer)
    assert run_burst(rb, settings) == 0

    shown = api.get("/api/v1/accounts/acme/stats", headers=AUTH).json()
    assert shown == rota_json("stats", ACCOUNT)["account"]
    assert shown["chats_today"] == {"alice": 1, "bob": 1}
    assert sorted(shown["numbers"]) == [NUMBER, OTHER_NUMBER]


def decided_for(rd: Any, rb: Any, settings: Settings) -> list[dict[str, str]]:
    """Decisions on two numbers of acme and one of another account, interleaved."""
    given_number(rd, ["alice", "bob"], online_only=False)
    given_number(rd, ["carol"], number=OTHER_NUMBER, online_only=False)
    given_number(rd, ["zed"], account="other", online_only=False)
    for i in range(12):
        send(rd, settings, f"4477009001{i:02d}", number=(NUMBER, OTHER_NUMBER)[i % 2])
        send(rd, settings, f"4477009002{i:02d}", account="other")
    assert run_burst(rb, settings) == 0
    return [{"id": entry_id, **fields} for entry_id, fields in rd.xrange(settings.events_stream)]


def test_recent_decisions_newest_first_of_the_account_and_number(
    api: TestClient, rd: Any, rb: Any, settings: Settings
) -> None:
    published = decided_for(rd, rb, settings)
    mine = [e for e in reversed(published) if e["account"] == ACCOUNT]
    path = "/api/v1/accounts/acme/decisions"

    got = api.get(path, params={"limit": 5}, headers=AUTH).json()
    assert [d["id"] for d in got["decisions"]] == [e["id"] for e in mine[:5]]
    first = got["decisions"][0]
    assert first == {**mine[0], "at": int(mine[0]["at"]), "previous": "", "event_id": ""}
    assert got["searched_all"] is False

    everything = api.get(path, params={"limit": 100}, headers=AUTH).json()
    assert [d["id"] for d in everything["decisions"]] == [e["id"] for e in mine]
    assert (everything["scanned"], everything["searched_all"]) == (len(published), True)

    of_number = api.get(path, params={"number": "+1 555 000 2000"}, headers=AUTH).json()
    assert {d["number"] for d in of_number["decisions"]} == {OTHER_NUMBER}
    assert len(of_number["decisions"]) == 6
    assert api.get("/api/v1/accounts/nobody/decisions", headers=AUTH).json() == {
        "decisions": [],
        "scanned": len(published),
        "searched_all": True,
    }
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"number": "12"}):
        assert api.get(path, params=bad, headers=AUTH).status_code == 422


def test_recent_decisions_look_at_no_more_than_the_scan_bound(
    api: TestClient, rd: Any, rb: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = decided_for(rd, rb, settings)
    monkeypatch.setattr(decisions, "SCAN_LIMIT", 7)
    monkeypatch.setattr(decisions, "_FIRST_PAGE", 3)
    got = api.get("/api/v1/accounts/acme/decisions", params={"limit": 100}, headers=AUTH).json()
    newest = [e for e in reversed(published)][:7]
    assert (got["scanned"], got["searched_all"]) == (7, False)
    assert [d["id"] for d in got["decisions"]] == [
        e["id"] for e in newest if e["account"] == ACCOUNT
    ]


def test_recent_decisions_skip_what_is_no_published_decision(
    api: TestClient, rd: Any, rb: Any, settings: Settings
) -> None:
    published = decided_for(rd, rb, settings)
    [latest, *_] = [e for e in reversed(published) if e["account"] == ACCOUNT]
    written_by_hand = {k: v for k, v in latest.items() if k != "id"}
    rd.xadd(settings.events_stream, {**written_by_hand, "at": "yesterday"})
    rd.xadd(settings.events_stream, {"account": ACCOUNT, "note": "no decision"})
    got = api.get("/api/v1/accounts/acme/decisions", params={"limit": 1}, headers=AUTH).json()
    assert [d["id"] for d in got["decisions"]] == [latest["id"]]
    assert got["scanned"] == 2 + published[::-1].index(latest) + 1


def test_recent_decisions_include_changes_of_user(
    api: TestClient, rd: Any, rb: Any, settings: Settings
) -> None:
    given_number(rd, ["alice", "bob"], online_only=False)
    send(rd, settings, C1)
    assert run_burst(rb, settings) == 0
    api.post(url(CONVERSATION) + "/transfer", json={"user": "bob"}, headers=AUTH)
    assert run_burst(rb, settings) == 0
    [moved, decided] = api.get("/api/v1/accounts/acme/decisions", headers=AUTH).json()["decisions"]
    assert (moved["reason"], moved["user"], moved["previous"]) == ("transfer", "bob", "alice")
    assert moved["event_id"] and moved["message_id"] == ""
    assert (decided["reason"], decided["user"]) == ("round_robin", "alice")


# --- Redis down -----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


@pytest.mark.parametrize(("method", "template"), list(OPERATIONS))
def test_redis_unreachable_is_503_with_one_line(method: str, template: str) -> None:
    app = create_app(api_settings(f"redis://127.0.0.1:{closed_port()}/0"))  # rota serve's client
    with TestClient(app) as api:
        response = request(api, method, template, OPERATIONS[method, template])
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith("redis unreachable: ") and "\n" not in detail


# --- The documented forms are the validators' -----------------------------------------------

FORMS = {
    models.ACCOUNT_PATTERN: words.account,
    models.PHONE_PATTERN: words.phone,
    models.USER_PATTERN: words.user,
    models.MEMBER_PATTERN: words.member,
}
NEAR_MISSES = st.text(alphabet="09aZ_.-@+:() group\t\n!é", max_size=140)


@pytest.mark.parametrize("pattern", list(FORMS))
@hypothesis.given(data=st.data())
@hypothesis.settings(max_examples=200, deadline=None)
def test_each_documented_pattern_accepts_what_its_validator_accepts(
    pattern: str, data: st.DataObject
) -> None:
    """The pattern as pydantic applies it (and as the schema's readers do: `$` is the end)."""
    text = data.draw(st.one_of(st.from_regex(pattern, fullmatch=True), NEAR_MISSES))
    try:
        FORMS[pattern](text)
        accepted = True
    except words.InvalidWord:
        accepted = False
    try:
        TypeAdapter(Annotated[str, Field(pattern=pattern)]).validate_python(text)
        matches = True
    except ValidationError:
        matches = False
    assert matches == accepted, text


@hypothesis.given(st.from_regex(models.STATUS_PATTERN, fullmatch=True))
@hypothesis.settings(max_examples=200, deadline=None)
def test_every_status_the_schema_allows_is_a_status(text: str) -> None:
    """The schema's status is words.status's ASCII part: all of it is accepted (what else
    words.status takes, other Unicode spaces, the API refuses with 422)."""
    assert words.status(text) in words.STATUSES


# --- Generated requests: schemathesis -------------------------------------------------------


class _NoRedis:
    """The client of the application that only serves the schema: any use is a test bug."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the schema's application has no Redis ({name})")


# The schema is read once, at collection; each test calls its own application, on the test's
# Redis (``app=``), never the one on 6379.
SCHEMA_APP = create_app(api_settings("redis://127.0.0.1:1/0"), client=_NoRedis())
# Knowing the token and the scheme it belongs to, schemathesis also checks that requests
# without it are refused (its ignored_auth check).
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    SCHEMA_APP,
    config=SchemathesisConfig.from_dict({"auth": {"openapi": {"ApiToken": {"bearer": TOKEN}}}}),
)
schema_without_token = schemathesis.openapi.from_asgi("/openapi.json", SCHEMA_APP)


@pytest.fixture
def app_with_a_number(app: FastAPI, rd: Any) -> FastAPI:
    given_number(rd, ["alice", "bob"])  # so that some generated requests find a number
    return app


@dataclass(frozen=True)
class Sent:
    path: str
    with_token: bool
    status: int


@pytest.fixture
def sent() -> Iterator[list[Sent]]:
    """One operation's generated requests: of an API operation, some with the token must get
    past the token check, else the test tested nothing."""
    seen: list[Sent] = []
    yield seen
    if any(request.path.startswith("/api/") for request in seen):
        passed = [r for r in seen if r.with_token and r.status != 401]
        assert passed, f"no request got past 401: {seen}"


# The application and its Redis are kept across a test's examples on purpose: what one
# generated request writes, the next may read.
GENERATED = {
    "deadline": None,
    "suppress_health_check": [hypothesis.HealthCheck.function_scoped_fixture],
}


def sends_the_token(case: Any) -> bool:
    sent = {k.lower(): v for k, v in (case.headers or {}).items()}
    return sent.get("authorization") == f"Bearer {TOKEN}"


@schema.parametrize()
@hypothesis.settings(max_examples=25, **GENERATED)
def test_no_generated_request_gets_a_server_error(
    case: Any, app_with_a_number: FastAPI, sent: list[Sent]
) -> None:
    """No 5xx, and every other default check: documented statuses and bodies, schema-valid
    requests accepted, invalid ones refused, requests without the token (schemathesis makes
    some) refused. Less the Allow header of a 405: Starlette lists only the first route's
    methods of a path that has two (settings: GET and PATCH)."""
    response = case.call_and_validate(
        app=app_with_a_number, excluded_checks=[allow_header_conformance]
    )
    path, status = case.operation.path, response.status_code
    sent.append(Sent(path, sends_the_token(case), status))
    if path.startswith("/api/") and case.method.upper() == case.operation.method.upper():
        assert (status == 401) != sends_the_token(case), status


@schema_without_token.include(path_regex="^/api/").parametrize()
@hypothesis.settings(max_examples=10, **GENERATED)
def test_no_generated_request_without_the_token_gets_past_401(
    case: Any, app_with_a_number: FastAPI
) -> None:
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.headers = headers
    response = case.call(app=app_with_a_number)
    # A method the path does not serve is no operation: routing answers 405 before any.
    expected = 401 if case.method.upper() == case.operation.method.upper() else 405
    assert response.status_code == expected, (case.method, response.text)
