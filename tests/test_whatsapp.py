"""``/whatsapp``: Meta's verification challenge, and WhatsApp Cloud API deliveries of the shape
Meta documents, through the application (FastAPI's TestClient) onto the inbound stream, and
through a worker to their decisions."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from tests.conftest import ON_SINGLE_AND_CLUSTER, make_settings
from tests.helpers import events, given_number, given_presence, run_burst
from tests.redis_server import RedisServer, free_port
from tests.test_security import PASSWORD, acl_denials, readme_acl_line
from worker import admin, connection, keys, partitions
from worker.http.app import create_app
from worker.http.whatsapp import SIGNATURE_HEADER, signature
from worker.settings import Settings

SECRET, VERIFY_TOKEN = "app-secret-for-tests", "verify-token-for-tests"
WABA = "102290129340398"  # the WhatsApp Business Account's id: entry[].id
PHONE_ID, DISPLAY = "106540352242922", "15550783881"  # the business number
OTHER_PHONE_ID, OTHER_DISPLAY = "106540352249999", "15550789999"
SHEENA, RAJ, LEE = "16505551234", "447700900123", "5511987654321"


# --- Payloads as Meta documents them ---------------------------------------------------------


def text(sender: str, wamid: str, body: str = "Does it come in another color?") -> dict[str, Any]:
    return {
        "from": sender,
        "id": wamid,
        "timestamp": "1749416383",
        "type": "text",
        "text": {"body": body},
    }


def image(sender: str, wamid: str) -> dict[str, Any]:
    return {
        "from": sender,
        "id": wamid,
        "timestamp": "1749416383",
        "type": "image",
        "image": {
            "caption": "This is a caption",
            "mime_type": "image/jpeg",
            "sha256": "81d3bd8a8db4868c9520ed47186e8b7c5789e61ff79f7f834be6950b808a90d3",
            "id": "2754859441498128",
        },
    }


def contact(wa_id: str, name: str) -> dict[str, Any]:
    return {"profile": {"name": name}, "wa_id": wa_id}


def change(
    messages: list[dict[str, Any]],
    contacts: list[dict[str, Any]],
    phone_id: str = PHONE_ID,
    display: str = DISPLAY,
) -> dict[str, Any]:
    return {
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": display, "phone_number_id": phone_id},
            "contacts": contacts,
            "messages": messages,
        },
        "field": "messages",
    }


def statuses(wamid: str, status: str) -> dict[str, Any]:
    return {
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": DISPLAY, "phone_number_id": PHONE_ID},
            "statuses": [
                {
                    "id": wamid,
                    "status": status,
                    "timestamp": "1750857384",
                    "recipient_id": SHEENA,
                    "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
                }
            ],
        },
        "field": "messages",
    }


def delivery(*changes: dict[str, Any]) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [*changes]}]}


def one_text(sender: str = SHEENA, wamid: str = "wamid.HBgLMTY1MDM4") -> dict[str, Any]:
    return delivery(change([text(sender, wamid)], [contact(sender, "Sheena Nelson")]))


# --- Fixtures --------------------------------------------------------------------------------


def app_settings(url: str, **overrides: Any) -> Settings:
    values = {"whatsapp_app_secret": SECRET, "whatsapp_verify_token": VERIFY_TOKEN}
    return make_settings(url, **{**values, **overrides})


@pytest.fixture
def settings(target: Any, rb: Any) -> Settings:
    return app_settings(target.url)


@pytest.fixture
def web(rd: Any, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, rd)) as client:
        yield client


Post = Callable[..., Any]


def post(web: TestClient, payload: Any, secret: str = SECRET, **headers: str) -> Any:
    """A delivery as Meta sends it: the JSON body, signed."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signed = {SIGNATURE_HEADER: signature(secret, body), "content-type": "application/json"}
    return web.post("/whatsapp", content=body, headers={**signed, **headers})


def inbound(rd: Any, settings: Settings, account: str = "default") -> list[dict[str, str]]:
    """The account's entries on its inbound stream (its partition)."""
    stream = partitions.inbound_stream(settings, account)
    return [fields for _, fields in rd.xrange(stream) if fields["account"] == account]


def nothing_written(rd: Any) -> bool:
    return not [k for k in rd.keys("*") if k != keys.whatsapp_numbers()]


# --- The verification challenge -------------------------------------------------------------


def test_the_challenge_with_our_token_answers_it_as_text(web: TestClient) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158"}
    answer = web.get("/whatsapp", params=query)
    assert (answer.status_code, answer.text) == (200, "1158")
    assert answer.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1158"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN[:-1], "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158"},
        {"hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158"},
        {"hub.mode": "subscribe", "hub.challenge": "1158"},
        {},
    ],
    ids=["wrong-token", "token-prefix", "wrong-mode", "no-mode", "no-token", "nothing"],
)
def test_the_challenge_with_a_wrong_token_or_mode_is_403(
    web: TestClient, query: dict[str, str]
) -> None:
    answer = web.get("/whatsapp", params=query)
    assert answer.status_code == 403
    assert "1158" not in answer.text


def test_without_a_verify_token_configured_every_challenge_is_403(rd: Any, target: Any) -> None:
    settings = app_settings(target.url, whatsapp_verify_token=None)
    with TestClient(create_app(settings, rd)) as web:
        query = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}
        assert web.get("/whatsapp", params=query).status_code == 403


# --- Deliveries onto the stream -------------------------------------------------------------


def test_a_text_message_becomes_one_inbound_entry(
    web: TestClient, rd: Any, settings: Settings
) -> None:
    answer = post(web, one_text())
    assert (answer.status_code, answer.json()) == (200, {"written": 1})
    assert inbound(rd, settings) == [
        {
            "account": "default",
            "number": DISPLAY,
            "from": SHEENA,
            "message_id": "wamid.HBgLMTY1MDM4",
            "name": "Sheena Nelson",
            "text": "Does it come in another color?",
            "wa_type": "text",
        }
    ]


def test_an_image_message_has_its_type_and_no_text(
    web: TestClient, rd: Any, settings: Settings
) -> None:
    payload = delivery(change([image(RAJ, "wamid.image1")], [contact(RAJ, "Raj")]))
    assert post(web, payload).status_code == 200
    [entry] = inbound(rd, settings)
    assert entry == {
        "account": "default",
        "number": DISPLAY,
        "from": RAJ,
        "message_id": "wamid.image1",
        "name": "Raj",
        "wa_type": "image",
    }


class Counting:
    """An asyncio client (the webhook's) that counts what is sent to Redis: direct commands,
    and pipelines with the commands each held."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.commands: list[str] = []
        self.pipelines: list[int] = []

    def pipeline(self, transaction: bool = True) -> Any:
        inner, counting = self.client.pipeline(transaction=transaction), self

        class Pipe:
            def __getattr__(self, name: str) -> Any:
                return getattr(inner, name)

            async def execute(self) -> Any:
                counting.pipelines.append(len(inner.command_stack))
                return await inner.execute()

        return Pipe()

    def __getattr__(self, name: str) -> Any:
        self.commands.append(name)
        return getattr(self.client, name)


def test_several_messages_and_contacts_of_one_delivery_go_on_in_one_round_trip(
    rd: Any, settings: Settings
) -> None:
    # Given one delivery of three messages, two changes, three senders of whom two have a
    # contact (Lee's profile is not in it), for two business numbers
    first = change(
        [text(SHEENA, "wamid.1", "hello"), image(LEE, "wamid.2")],
        [contact(SHEENA, "Sheena Nelson"), contact(RAJ, "Raj")],
    )
    second = change(
        [text("+44 7700 900123", "wamid.3", "second number")],
        [contact("+44 7700 900123", "Raj")],
        OTHER_PHONE_ID,
        "+1 555-078-9999",
    )
    counting = Counting(connection.connect_async(settings))
    with TestClient(create_app(settings, rd, counting)) as web:
        answer = post(web, delivery(first, second))
    # Then each message is one entry, in order, names matched by wa_id, numbers normalised
    assert (answer.status_code, answer.json()) == (200, {"written": 3})
    entries = inbound(rd, settings)
    assert [(e["message_id"], e["number"], e["from"], e.get("name")) for e in entries] == [
        ("wamid.1", DISPLAY, SHEENA, "Sheena Nelson"),
        ("wamid.2", DISPLAY, LEE, None),
        ("wamid.3", OTHER_DISPLAY, RAJ, "Raj"),
    ]
    assert [e.get("text") for e in entries] == ["hello", None, "second number"]
    # And Redis was asked once for the accounts and once (one pipeline) for every entry; the
    # client was closed when the application stopped
    assert counting.commands == ["hmget", "aclose"]
    assert counting.pipelines == [3]


def test_statuses_only_write_nothing_and_never_ask_redis() -> None:
    # Given an application whose Redis is nowhere: a status callback needs none
    settings = app_settings(f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings)) as web:
        answer = post(web, delivery(statuses("wamid.out1", "sent"), statuses("wamid.out1", "read")))
    assert (answer.status_code, answer.json()) == (200, {"written": 0})


def test_a_change_of_another_webhook_field_is_ignored(
    web: TestClient, rd: Any, settings: Settings
) -> None:
    other = {"value": {"phone_number": DISPLAY, "event": "VERIFIED_ACCOUNT"}, "field": "x"}
    assert post(web, delivery(other, statuses("wamid.o", "delivered"))).json() == {"written": 0}
    assert post(web, {"object": "whatsapp_business_account", "entry": []}).status_code == 200
    assert nothing_written(rd)


# --- The account, by the number's whatsapp_phone_number_id -----------------------------------


@pytest.mark.parametrize("partitions_", [1, 4])
def test_the_account_is_the_one_whose_number_has_the_phone_number_id(
    rd: Any, target: Any, partitions_: int
) -> None:
    # Given acme's number with Meta's id, and an id nobody has
    settings = app_settings(target.url, inbound_partitions=partitions_)
    admin.set_number(rd, "acme", DISPLAY, members=["ann"], whatsapp_phone_number_id=PHONE_ID)
    mine = change([text(SHEENA, "wamid.acme")], [])
    unknown = change([text(RAJ, "wamid.other")], [], OTHER_PHONE_ID, OTHER_DISPLAY)
    with TestClient(create_app(settings, rd)) as web:
        assert post(web, delivery(mine, unknown)).status_code == 200
    # Then each went onto its account's stream (its partition), the unknown one to default's
    for account, wamid in (("acme", "wamid.acme"), ("default", "wamid.other")):
        assert [e["message_id"] for e in inbound(rd, settings, account)] == [wamid]


@ON_SINGLE_AND_CLUSTER
def test_a_changed_phone_number_id_moves_the_deliveries_with_it(
    web: TestClient, rd: Any, settings: Settings
) -> None:
    admin.set_number(rd, "acme", DISPLAY, members=["ann"], whatsapp_phone_number_id=PHONE_ID)
    admin.set_number(rd, "acme", DISPLAY, whatsapp_phone_number_id=OTHER_PHONE_ID)
    post(web, one_text(wamid="wamid.old-id"))
    assert [e["account"] for e in inbound(rd, settings)] == ["default"]
    admin.set_number(rd, "beta", DISPLAY, members=["bo"], whatsapp_phone_number_id=PHONE_ID)
    post(web, one_text(wamid="wamid.moved"))
    assert [e["message_id"] for e in inbound(rd, settings, "beta")] == ["wamid.moved"]


# --- Refused: signatures, shapes, sizes -----------------------------------------------------


def test_a_wrong_or_missing_signature_is_403_and_writes_nothing(web: TestClient, rd: Any) -> None:
    body = json.dumps(one_text()).encode()
    good = signature(SECRET, body)
    for headers in (
        {},
        {SIGNATURE_HEADER: ""},
        {SIGNATURE_HEADER: signature("another secret", body)},
        {SIGNATURE_HEADER: signature(SECRET, body + b" ")},  # of another body
        {SIGNATURE_HEADER: good.removeprefix("sha256=")},  # no scheme
        {SIGNATURE_HEADER: "sha1=" + good.removeprefix("sha256=")},
        {SIGNATURE_HEADER: good[:-1]},
    ):
        answer = web.post("/whatsapp", content=body, headers=headers)
        assert answer.status_code == 403, headers
    assert nothing_written(rd)
    # The same body, rightly signed (Meta's hex is lowercase; any case is the same digest)
    upper = "sha256=" + good.removeprefix("sha256=").upper()
    assert web.post("/whatsapp", content=body, headers={SIGNATURE_HEADER: upper}).is_success


def test_the_signature_is_of_the_raw_body_not_of_its_json(
    web: TestClient, rd: Any, settings: Settings
) -> None:
    # Given the body Meta sent (its spacing, its escapes) and the signature of exactly that
    body = json.dumps(one_text(), indent=3, ensure_ascii=True).encode()
    headers = {SIGNATURE_HEADER: signature(SECRET, body)}
    answer = web.post("/whatsapp", content=body, headers=headers)
    assert answer.status_code == 200
    # Then re-encoding it compactly signs something else
    compact = json.dumps(json.loads(body)).encode()
    assert signature(SECRET, compact) != signature(SECRET, body)
    assert len(inbound(rd, settings)) == 1


def test_without_an_app_secret_every_delivery_is_403(rd: Any, target: Any) -> None:
    settings = app_settings(target.url, whatsapp_app_secret=None)
    with TestClient(create_app(settings, rd)) as web:
        assert post(web, one_text()).status_code == 403
        assert post(web, one_text(), secret="").status_code == 403
    assert nothing_written(rd)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"not json", "not JSON", id="text"),
        pytest.param(b'{"entry": [', "not JSON", id="cut"),
        pytest.param(b"\xff\xfe{}", "not JSON", id="bytes"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "not JSON", id="deep"),
        pytest.param(b"[]", "the body must be an object", id="array"),
        pytest.param(b"{}", "entry must be a list", id="no-entry"),
        pytest.param(b'{"entry": {}}', "entry must be a list", id="entry-object"),
        pytest.param(b'{"entry": [1]}', "entry[0] must be an object", id="entry-item"),
        pytest.param(
            b'{"entry": [{"changes": {}}]}', "entry[0].changes must be a list", id="changes-object"
        ),
        pytest.param(
            b'{"entry": [{"changes": [{"value": []}]}]}',
            "entry[0].changes[0].value must be",
            id="value-list",
        ),
    ],
)
def test_a_body_that_is_not_a_delivery_is_400_with_its_reason(
    web: TestClient, rd: Any, body: bytes, reason: str
) -> None:
    answer = post(web, body)
    assert answer.status_code == 400
    [said] = answer.json()["detail"].splitlines()
    assert reason in said
    assert nothing_written(rd)


def broken(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """A delivery of a good message and a second message changed by ``edit``."""
    payload = delivery(change([text(SHEENA, "wamid.good"), text(RAJ, "wamid.bad")], []))
    edit(payload["entry"][0]["changes"][0]["value"])
    return payload


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        pytest.param(
            lambda v: v.update(messages={}), "value.messages must be a list", id="messages-object"
        ),
        pytest.param(
            lambda v: v["messages"].append("hi"), "messages[2] must be an object", id="message-text"
        ),
        pytest.param(
            lambda v: v["messages"][1].pop("id"), "messages[1].id must be a string", id="no-id"
        ),
        pytest.param(
            lambda v: v["messages"][1].pop("from"),
            "messages[1].from must be a string",
            id="no-from",
        ),
        pytest.param(
            lambda v: v["messages"][1].update({"from": 447700900123}),
            "from must be a string",
            id="from-number",
        ),
        pytest.param(
            lambda v: v["messages"][1].pop("type"),
            "messages[1].type must be a string",
            id="no-type",
        ),
        pytest.param(
            lambda v: v["messages"][1].update(text="hi"),
            "messages[1].text must be an object",
            id="text-string",
        ),
        pytest.param(
            lambda v: v["messages"][1]["text"].update(body=1),
            "text.body must be a string",
            id="body-number",
        ),
        pytest.param(
            lambda v: v.pop("metadata"), "value.metadata must be an object", id="no-metadata"
        ),
        pytest.param(
            lambda v: v["metadata"].pop("phone_number_id"),
            "phone_number_id must be a string",
            id="no-phone-id",
        ),
        pytest.param(
            lambda v: v["metadata"].pop("display_phone_number"),
            "display_phone_number must be",
            id="no-display",
        ),
        pytest.param(
            lambda v: v.update(contacts={}), "value.contacts must be a list", id="contacts-object"
        ),
        pytest.param(
            lambda v: v.update(contacts=[{"wa_id": 1, "profile": {"name": "x"}}]),
            "wa_id must be",
            id="wa-id-number",
        ),
        pytest.param(
            lambda v: v.update(contacts=[{"wa_id": RAJ, "profile": "x"}]),
            "profile must be",
            id="profile-string",
        ),
    ],
)
def test_a_delivery_of_the_wrong_shape_is_400_and_writes_none_of_it(
    web: TestClient, rd: Any, edit: Callable[[dict[str, Any]], None], reason: str
) -> None:
    answer = post(web, broken(edit))
    assert answer.status_code == 400
    assert reason in answer.json()["detail"]
    assert nothing_written(rd)


def test_a_body_over_the_limit_is_413_and_one_at_it_is_read(rd: Any, target: Any) -> None:
    settings = app_settings(target.url, http_max_body_bytes=4096)
    payload = one_text()
    payload["padding"] = ""
    at_limit = json.dumps(payload).encode()
    payload["padding"] = "x" * (4096 - len(at_limit))
    at_limit = json.dumps(payload).encode()
    assert len(at_limit) == 4096
    with TestClient(create_app(settings, rd)) as web:
        assert post(web, at_limit).status_code == 200
        assert post(web, at_limit + b" ").status_code == 413
        # Without a Content-Length (chunked), counted as it is read
        body = at_limit + b"  "
        chunks = iter([body[:3000], body[3000:]])
        headers = {SIGNATURE_HEADER: signature(SECRET, body)}
        answer = web.post("/whatsapp", content=chunks, headers=headers)
        assert answer.status_code == 413
        assert "ROTA_HTTP_MAX_BODY_BYTES" in answer.json()["detail"]
    assert len(rd.xrange(settings.inbound_stream)) == 1


def test_redis_unreachable_is_503_so_meta_delivers_again() -> None:
    settings = app_settings(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout_s=1)
    with TestClient(create_app(settings)) as web:
        answer = post(web, one_text())
    assert answer.status_code == 503


# --- Through the worker ----------------------------------------------------------------------


def test_a_message_the_worker_refuses_is_written_and_dead_lettered_visibly(
    web: TestClient, rd: Any, rb: Any, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given acme's number, and one delivery of a good message and two the worker refuses
    given_number(rd, ["ann"], number=DISPLAY, whatsapp_phone_number_id=PHONE_ID)
    given_presence(rd, ann="available")
    messages = [text(SHEENA, "wamid.ok"), text("Sheena", "wamid.no-number")]
    messages.append(text(RAJ, "wamid." + "x" * 300))
    answer = post(web, delivery(change(messages, [])))
    # Then all three are written (200), the good one decided, the others on rota:dead
    assert answer.json() == {"written": 3}
    warned = [line for line in capsys.readouterr().err.splitlines() if "dead-lettered" in line]
    assert len(warned) == 2 and all("invalid_field" in line for line in warned), warned
    assert run_burst(rb, settings) == 0
    assert [(e["message_id"], e["user"]) for e in events(rd, settings)] == [("wamid.ok", "ann")]
    dead = [fields for _, fields in rd.xrange(settings.dead_stream)]
    assert [(d["from"], d["error"]) for d in dead] == [
        ("Sheena", "invalid_field"),
        (RAJ, "invalid_field"),
    ]
    assert "message_id longer than 256 bytes" in dead[1]["detail"]


def test_one_decision_per_wamid_after_three_redeliveries(
    web: TestClient, rd: Any, rb: Any, settings: Settings
) -> None:
    # Given acme's number with two users, and a delivery of one message from each of two
    # customers, delivered again three times (Meta retries what it did not see a 200 for):
    # twice before a worker ran, once after
    given_number(rd, ["ann", "bob"], number=DISPLAY, whatsapp_phone_number_id=PHONE_ID)
    given_presence(rd, ann="available", bob="available")
    payload = delivery(change([text(SHEENA, "wamid.A"), text(RAJ, "wamid.B")], []))
    for _ in range(3):
        assert post(web, payload).status_code == 200
    assert run_burst(rb, settings) == 0
    assert post(web, payload).status_code == 200
    assert run_burst(rb, settings) == 0
    # Then each wamid has four published entries, all the same decision, and the cursor moved
    # once per customer
    decided: dict[str, set[tuple[str, str, str]]] = {}
    for event in events(rd, settings):
        decided.setdefault(event["message_id"], set()).add(
            (event["user"], event["reason"], event["at"])
        )
    assert {m: len(d) for m, d in decided.items()} == {"wamid.A": 1, "wamid.B": 1}
    assert {next(iter(d))[0] for d in decided.values()} == {"ann", "bob"}
    assert len(events(rd, settings)) == 8
    assert rd.get(keys.cursor("acme", DISPLAY)) == "2"


def test_the_webhook_and_its_setting_run_as_the_readmes_acl_user(
    server_factory: Callable[..., RedisServer],
) -> None:
    # Given a server with only the README's rota user (the default user off)
    server = server_factory()
    with server.client() as owner:
        owner.execute_command("ACL", "SETUSER", *readme_acl_line())
        owner.execute_command("ACL", "SETUSER", "owner", "on", ">owner", "~*", "&*", "+@all")
        owner.execute_command("ACL", "SETUSER", "default", "off")
    url = f"redis://rota:{PASSWORD}@127.0.0.1:{server.port}/0"
    settings = app_settings(url)
    with redis.Redis.from_url(url, decode_responses=True) as rd:
        # When the id is set, changed and set again, and a delivery comes in
        admin.set_number(
            rd, "acme", DISPLAY, members=["ann"], whatsapp_phone_number_id=OTHER_PHONE_ID
        )
        admin.set_number(rd, "acme", DISPLAY, whatsapp_phone_number_id=PHONE_ID)
        with TestClient(create_app(settings, rd)) as web:
            assert post(web, one_text()).status_code == 200
        # Then it all worked, and Redis refused nothing
        assert [e["account"] for e in inbound(rd, settings, "acme")] == ["acme"]
    assert acl_denials(server) == []
