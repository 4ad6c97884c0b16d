"""The admin console (``/``) in a real browser: Playwright's sync API driving Debian's chromium
headless against ``rota serve``'s application on uvicorn (in a thread, on a free port) and the
test's redis-server. Found by role and label, as a person finds them.

Without chromium these tests are skipped, except under CI=true, where they fail. To refresh
the README's screenshot: UPDATE_SCREENSHOT=1 .venv/bin/pytest tests/test_console.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import make_settings
from tests.helpers import ACCOUNT, NUMBER, given_number, given_presence, run_burst, run_rota
from tests.redis_server import RedisServer, free_port
from worker import admin
from worker.client import Rota
from worker.http.app import create_app
from worker.settings import Settings

TOKEN = "console-test-token-1f6c"
SCREENSHOT = Path(__file__).resolve().parent / "screenshots" / "console.png"
POPUP = "WhatsApp Business User\u2019s Round Robin Configuration"  # the sheet's apostrophe
LIVE_TIMEOUT_MS = 10_000  # the view refreshes every 3 s


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    args = ["--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    args.append("--no-first-run")
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # chromium refuses to run its sandbox as root
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        yield launched
        launched.close()


class Served:
    """The application on uvicorn in a thread, stopped at teardown."""

    def __init__(self, settings: Settings, client: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings, client),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",  # as rota serve runs it: the services are set at startup
            ws="none",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def settings(redis_server: RedisServer, rb: Any) -> Settings:
    return make_settings(redis_server.url, api_token=TOKEN)


@pytest.fixture
def console(settings: Settings, rd: Any) -> Iterator[str]:
    served = Served(settings, rd).start()
    yield served.url
    served.stop()


@pytest.fixture
def page(browser: Browser, console: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 1000}, base_url=console)
    opened = context.new_page()
    yield opened
    context.close()


def sign_in(page: Page, token: str = TOKEN) -> None:
    page.goto("/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def live_row(page: Page, user: str) -> Any:
    """The live view's row of ``user`` in the users table."""
    live = page.get_by_role("region", name="Live view")
    header = page.get_by_role("rowheader", name=re.compile(rf"^{re.escape(user)}\b"))
    return live.get_by_role("row").filter(has=header)


def test_signing_in_refuses_a_wrong_token_and_keeps_an_http_only_strict_session(
    page: Page, console: str, rd: Any
) -> None:
    # Given a number, and a record of every request the browser makes
    given_number(rd, ["alice", "bob"])
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    # When someone opens the console with the wrong token
    sign_in(page, "not-the-token")

    # Then they stay on the sign-in page, with no session
    expect(page.get_by_role("alert")).to_have_text("That is not the API token.")
    expect(page.get_by_role("heading", name="Sign in to the Rota console")).to_be_visible()
    assert page.context.cookies() == []

    # When they sign in with the API token
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()

    # Then the popup is shown, under an HttpOnly, SameSite=Strict cookie that is not the token
    expect(page.get_by_role("heading", name=POPUP)).to_be_visible()
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"] and not cookie["secure"]  # plain http here
    # and every asset came from Rota itself
    assert requested and all(url.startswith(console + "/") for url in requested)
    assert any(url.endswith("/console/static/console.css") for url in requested)

    # When they sign out, the console asks for the token again
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to the Rota console")).to_be_visible()
    page.goto("/")
    expect(page.get_by_label("API token")).to_be_visible()


def test_the_popups_three_settings_are_saved_and_rota_number_show_reports_them(
    page: Page, redis_server: RedisServer, rd: Any
) -> None:
    # Given a number with the new number's defaults (both checkboxes on)
    given_number(rd, ["alice", "bob"])
    admin.set_group(rd, ACCOUNT, "sales", ["carol", "dave"])
    sign_in(page)
    assign_unknown = page.get_by_role("checkbox", name="Assign Unknown Chat")
    online_only = page.get_by_role("checkbox", name="Assign Chat To Online User Only")
    expect(assign_unknown).to_be_checked()
    expect(online_only).to_be_checked()

    # When the admin changes the popup's three settings and a conversation setting, and saves
    assign_unknown.uncheck()
    page.get_by_label("Assign Round Robin User").fill("carol\ngroup:sales\nalice")
    online_only.uncheck()
    page.get_by_label("Capacity").fill("2")
    page.get_by_label("Queue the chat until someone is available").check()
    page.get_by_role("button", name="Save").click()

    # Then the page says so and shows what is stored
    expect(page.get_by_role("status")).to_have_text("Saved.")
    expect(page.get_by_role("checkbox", name="Assign Unknown Chat")).not_to_be_checked()
    expect(page.get_by_label("Assign Round Robin User")).to_have_value("carol\ngroup:sales\nalice")

    # and `rota number show` reports them
    shown = run_rota(redis_server.url, "number", "show", ACCOUNT, NUMBER)
    assert shown.returncode == 0, shown.stderr
    number = json.loads(shown.stdout)
    assert number["settings"]["assign_unknown"] is False
    assert number["settings"]["online_only"] is False
    assert number["members"] == ["carol", "group:sales", "alice"]
    assert number["expanded_members"] == ["carol", "dave", "alice"]
    assert number["settings"]["capacity"] == 2
    assert number["settings"]["when_nobody"] == "queue"


def test_a_refused_save_says_why_beside_the_field_keeps_what_was_typed_and_writes_nothing(
    page: Page, rd: Any
) -> None:
    # Given a number that only alice and bob use
    given_number(rd, ["alice", "bob"], access=["alice", "bob"])
    sign_in(page)

    # When the admin types a bad user id and a capacity that is no number, and saves
    page.get_by_role("checkbox", name="Assign Unknown Chat").uncheck()
    page.get_by_label("Assign Round Robin User").fill("alice\nnot a user!")
    page.get_by_label("Capacity").fill("lots")
    page.get_by_role("button", name="Save").click()

    # Then each field says why, and everything typed is still there
    expect(page.get_by_role("alert")).to_contain_text("Not saved: 2 fields need a change.")
    members = page.get_by_label("Assign Round Robin User")
    expect(members).to_have_value("alice\nnot a user!")
    expect(members).to_have_accessible_description(re.compile(r"user 'not a user!' must match"))
    expect(page.get_by_label("Capacity")).to_have_value("lots")
    expect(page.get_by_role("checkbox", name="Assign Unknown Chat")).not_to_be_checked()
    # and nothing was written
    shown = admin.show_number(rd, ACCOUNT, NUMBER)
    assert shown is not None
    assert shown["members"] == ["alice", "bob"] and shown["settings"]["assign_unknown"]

    # When the admin fixes them with a member who has no access to the number
    page.get_by_label("Assign Round Robin User").fill("alice\nzed")
    page.get_by_label("Capacity").fill("0")
    page.get_by_role("button", name="Save").click()

    # Then it is saved, with set_number's warning shown
    expect(page.get_by_text("Saved.")).to_be_visible()
    expect(page.get_by_text("Warning: member zed has no access to 15550001000")).to_be_visible()
    shown = admin.show_number(rd, ACCOUNT, NUMBER)
    assert shown is not None and shown["members"] == ["alice", "zed"]


def test_the_live_view_follows_presence_and_decisions_without_a_reload(
    page: Page, console: str, rd: Any, rb: Any, settings: Settings, tmp_path: Path
) -> None:
    # Given alice and bob available, carol in break, and the console open
    given_number(rd, ["alice", "bob", "carol"], admin="boss")
    given_presence(rd, alice="available", bob="available", carol="in_break")
    sign_in(page)
    expect(live_row(page, "alice")).to_contain_text("Available")
    expect(page.locator("#next-user")).to_contain_text("alice")

    # When three customers write and a worker decides
    rota = Rota(rd, settings)
    for n, customer in enumerate(["447700900111", "447700900222", "447700900333"]):
        rota.send(NUMBER, customer, message_id=f"wamid.{n}", account=ACCOUNT)
    run_burst(rb, settings)

    # Then the view shows the decisions, the chats of the day and who is next
    decisions = page.get_by_role("table", name="Last 20 decisions")
    expect(decisions.get_by_role("row")).to_have_count(4, timeout=LIVE_TIMEOUT_MS)
    expect(decisions).to_contain_text("round_robin")
    expect(decisions).to_contain_text("*******0333")  # customers masked, as in the logs
    expect(live_row(page, "alice")).to_contain_text("2")
    expect(page.locator("#next-user")).to_contain_text("bob")

    # When bob goes Unavailable through the JSON API
    answer = httpx2.put(
        f"{console}/api/v1/accounts/{ACCOUNT}/users/bob/presence",
        json={"status": "Unavailable"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 200, answer.text

    # Then his row and who is next change in place
    expect(live_row(page, "bob")).to_contain_text("Unavailable", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#next-user")).to_contain_text("alice")

    shot = tmp_path / "console.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_pages_need_a_session_and_forms_the_csrf_token(console: str, rd: Any) -> None:
    given_number(rd, ["alice", "bob"])
    live = f"/console/live?account={ACCOUNT}&number={NUMBER}"
    form = {"account": ACCOUNT, "number": NUMBER, "members": "mallory"}
    with httpx2.Client(base_url=console, follow_redirects=False) as client:
        # Not signed in: pages send to the sign-in page, the live view is 401, nothing written
        assert client.get("/").headers["location"] == "/console/signin"
        assert client.get(live).status_code == 401
        assert client.post("/console/number", data=form).status_code == 303

        # Signed in (the session is Secure when the request came over https)
        signed = client.post(
            "/console/signin", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"}
        )
        assert signed.status_code == 303 and "Secure" in signed.headers["set-cookie"]
        client.cookies.set("rota_session", signed.cookies["rota_session"])
        page = client.get("/")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get(live).status_code == 200

        # a form without the CSRF token, or with another, is refused and writes nothing
        assert client.post("/console/number", data=form).status_code == 403
        forged = {**form, "csrf_token": "0" * 64}
        assert client.post("/console/number", data=forged).status_code == 403
        assert client.post("/console/signout", data={}).status_code == 403
        assert client.get("/").status_code == 200  # still signed in
    shown = admin.show_number(rd, ACCOUNT, NUMBER)
    assert shown is not None and shown["members"] == ["alice", "bob"]


def test_the_console_is_not_part_of_the_api_document(settings: Settings, rd: Any) -> None:
    paths = create_app(settings, rd).openapi().get("paths", {})
    assert not [path for path in paths if path == "/" or path.startswith("/console")]
