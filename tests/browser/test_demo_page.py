"""The demo page in a real browser (Debian's Chromium, driven by Playwright) against the real
stack: the Firebase JS SDK signs in at the Auth emulator, the JavaScript client connects to a
gateway process, and the sweep function runs with short intervals.

Each test opens its own browser context (its own Firebase user) and saves a screenshot under
``.run/tests/screenshots/``.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from emulator import procs
from emulator.stack import DEMO_DIR
from gateway.storage.schema import IS_SIGNED_IN, LAST_SIGN_OUT_AT, MEMBERS, UPDATED_AT
from tests.browser.conftest import SCREENSHOTS, WAIT_MS, expect_state
from tests.support import (
    UNIT,
    GatewayProc,
    SweepStack,
    TokenMinter,
    start_gateway,
    start_short_sweep,
)

pytestmark = pytest.mark.browser

SHORT = {"PING_INTERVAL": "0.5", "PONG_TIMEOUT": "4", "SWEEP_INTERVAL": "1"}


@dataclass
class Stack:
    """The gateway (replaced when a test restarts it, on the same port) and its settings."""

    gateway: GatewayProc
    start: Any

    def restart(self, *, kill: bool) -> None:
        process = self.gateway.process
        assert process.popen is not None
        if kill:
            os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait()
        else:
            process.stop()  # SIGTERM: the gateway drains, closing every socket with 1012
        self.gateway = self.start()


@pytest.fixture(scope="module")
def stack(
    firestore_host: str, project_id: str, minter: TokenMinter, callback_token: str
) -> Iterator[Stack]:
    assert (DEMO_DIR / "index.html").exists(), "build the demo first: make demo"
    port = str(procs.free_port())

    def start() -> GatewayProc:
        return start_gateway(
            firestore_host,
            project_id,
            minter,
            GATEWAY_PORT=port,
            DEMO_DIR=str(DEMO_DIR),
            GATEWAY_CALLBACK_TOKEN=callback_token,
            **SHORT,
        )

    running = Stack(start(), start)
    yield running
    running.gateway.stop()


@pytest.fixture(scope="module")
def sweeper(
    firestore_host: str, auth_host: str, project_id: str, callback_token: str
) -> Iterator[SweepStack]:
    sweep = start_short_sweep(firestore_host, auth_host, project_id, callback_token, SHORT)
    yield sweep
    sweep.stop()


@pytest.fixture
async def page(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    opened = await context.new_page()
    yield opened
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await opened.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    await context.close()


async def sign_in(page: Any, stack: Stack) -> str:
    """Open the demo, sign a new user in through the Firebase JS SDK; wait until connected.
    Returns the user's uid."""
    await page.goto(f"{stack.gateway.http}/demo")
    await page.fill("#email", f"user-{secrets.token_hex(4)}@example.com")
    await page.fill("#password", "correct horse battery")
    await page.click("#sign-in")
    await expect_state(page, "connected")
    uid: str = await page.evaluate("window.presenceDemo.auth.currentUser.uid")
    return uid


async def post(stack: Stack, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.gateway.http, headers=stack.gateway.auth) as http:
        return await http.post(path, json=body)


async def test_the_page_signs_in_connects_and_answers_pings(page: Any, stack: Stack) -> None:
    """Signing in with the Firebase JS SDK opens the socket; pings arrive and are answered."""
    from playwright.async_api import expect

    await sign_in(page, stack)
    await expect(page.locator("#pongs")).not_to_have_text("0", timeout=WAIT_MS)
    assert int(await page.locator("#pings").inner_text()) >= 1


async def test_the_page_receives_a_send_and_a_broadcast(page: Any, stack: Stack) -> None:
    """A REST send to the user and a broadcast both show up as messages on the page."""
    from playwright.async_api import expect

    uid = await sign_in(page, stack)
    sent = await post(stack, f"/ws/send/{uid}", {"type": "notification", "data": {"n": 1}})
    assert sent.status_code == 200, sent.text
    cast = await post(stack, "/ws/broadcast", {"type": "announcement", "data": {"n": 2}})
    assert cast.status_code == 200, cast.text
    messages = page.locator('[data-testid="message"]')
    await expect(messages.and_(page.locator('[data-type="notification"]'))).to_have_count(
        1, timeout=WAIT_MS
    )
    await expect(messages.and_(page.locator('[data-type="announcement"]'))).to_have_count(
        1, timeout=WAIT_MS
    )


async def test_the_page_shows_the_user_id_and_a_send_command_that_works(
    page: Any, stack: Stack
) -> None:
    """Once signed in, the page shows the uid with a copy button and a curl command that sends
    to it; the command's URL and body, posted as shown, arrive on the page."""
    from playwright.async_api import expect

    uid = await sign_in(page, stack)
    await expect(page.locator("#session-uid")).to_be_visible()
    await expect(page.locator("#session-uid")).to_have_text(uid)
    await page.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=stack.gateway.http
    )
    await page.click("#copy-uid")
    await expect(page.locator("#copy-status")).to_have_text("User id copied.")
    assert await page.evaluate("navigator.clipboard.readText()") == uid

    command = await page.locator("#rest-example").inner_text()
    assert "$GATEWAY_ADMIN_TOKEN" in command
    shown = re.search(r"(\S+/ws/send/\S+) -d '([^']+)'", command)
    assert shown, command
    url, body = shown.groups()
    assert url == f"{stack.gateway.http}/ws/send/{uid}"
    async with httpx.AsyncClient(headers=stack.gateway.auth) as http:
        sent = await http.post(url, content=body, headers={"Content-Type": "application/json"})
    assert sent.status_code == 200, sent.text
    messages = page.locator('[data-testid="message"][data-type="hello"]')
    await expect(messages).to_have_count(1, timeout=WAIT_MS)


async def test_a_message_sent_from_the_page_is_acknowledged_and_explained(
    page: Any, stack: Stack
) -> None:
    """A message typed into the page is acknowledged, and the status says where it went: the
    application's message handler, which by default only logs it."""
    from playwright.async_api import expect

    await sign_in(page, stack)
    await page.fill("#send-text", "hello gateway")
    await page.click("#send")
    status = page.locator("#send-status")
    await expect(status).to_contain_text("delivered to the gateway (acknowledged", timeout=WAIT_MS)
    await expect(status).to_contain_text("application's message handler")
    await expect(status).to_contain_text("the default one only logs them")
    await expect(status).to_contain_text("examples/room_echo.py")


async def expect_signed_out_view(page: Any, title: str) -> None:
    """The signed-out banner with the human title, "Sign in again" as the only sign-in or
    sign-out control, and no raw state name on the page."""
    from playwright.async_api import expect

    await expect(page.locator("#signed-out")).to_be_visible(timeout=WAIT_MS)
    await expect_state(page, "signed_out")
    await expect(page.locator("#signed-out-title")).to_have_text(title)
    await expect(page.locator("#state")).to_have_text("Signed out")
    controls = page.get_by_role("button", name=re.compile(r"^Sign (out|in again)$"))
    await expect(controls).to_have_count(1)
    await expect(controls).to_have_attribute("id", "sign-in-again")
    await expect(page.locator("#sign-out")).to_be_hidden()
    assert "signed_out" not in await page.locator("body").inner_text()


async def test_a_sign_out_by_the_service_leaves_only_sign_in_again(page: Any, stack: Stack) -> None:
    """POST /ws/signout (the signed_out message, 4410): the page says so in a sentence, offers
    only "Sign in again", and that control brings back the sign-in form."""
    from playwright.async_api import expect

    uid = await sign_in(page, stack)
    signed_out = await post(stack, f"/ws/signout/{uid}", {})
    assert signed_out.status_code == 200, signed_out.text
    await expect_signed_out_view(page, "Signed out by the service. Sign in again to reconnect.")
    await page.click("#sign-in-again")
    await expect(page.locator("#sign-in-panel")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#signed-out")).to_be_hidden()
    await expect(page.locator("#sign-out")).to_be_hidden()
    await expect(page.locator("#state")).to_have_text("Not connected")


async def test_the_page_reconnects_after_a_drain_and_after_a_crash(page: Any, stack: Stack) -> None:
    """SIGTERM (the gateway closes with 1012) and SIGKILL (the socket drops): each time the
    client goes back to reconnecting and is connected again once a gateway is back."""
    await sign_in(page, stack)
    for kill in (False, True):
        await asyncio.to_thread(stack.restart, kill=kill)
        await expect_state(page, "connected")


async def test_a_page_that_stops_answering_is_signed_out_and_stays_out(
    page: Any, stack: Stack, sweeper: SweepStack
) -> None:
    """With "Answer pings" off the sweep signs the user out: the page shows the timeout, offers
    only "Sign in again", and never reconnects."""
    await sign_in(page, stack)
    # The checkbox is drawn as a switch whose track sits over it: click it as a user would.
    await page.locator("#answer-pings").uncheck(force=True)
    await expect_signed_out_view(page, "Signed out for inactivity. Sign in again to reconnect.")
    assert "inactivity (4 seconds)" in await page.locator("#signed-out-message").inner_text()
    await asyncio.sleep(3 * UNIT)
    await expect_state(page, "signed_out")


async def test_a_revoked_session_ends_in_the_auth_error_state(
    page: Any, stack: Stack, firestore_client: Any, firebase_app: Any
) -> None:
    """A user signed out elsewhere (tokens revoked, member marked signed out) whose socket
    drops: the reconnect is refused, a refreshed token too, and the page shows the auth
    error instead of retrying."""
    from firebase_admin import auth
    from playwright.async_api import expect

    uid = await sign_in(page, stack)
    await asyncio.to_thread(auth.revoke_refresh_tokens, uid, app=firebase_app)
    now = datetime.now(UTC)
    firestore_client.collection(MEMBERS).document(uid).set(
        {IS_SIGNED_IN: False, LAST_SIGN_OUT_AT: now, UPDATED_AT: now}, merge=True
    )
    await asyncio.to_thread(stack.restart, kill=False)
    await expect(page.locator("#auth-error")).to_be_visible(timeout=WAIT_MS)
    await expect_state(page, "auth_error")


async def test_a_hidden_page_keeps_answering_pings(
    page: Any, stack: Stack, sweeper: SweepStack
) -> None:
    """A background tab: hidden, its timers throttled to one wake-up a minute (Chrome's
    intensive throttling). The client answers a ping from the socket's message event, with no
    timer, so pongs go on and the sweep leaves the user signed in.

    Headless Chromium (and a headed one under Xvfb without a window manager) never reports a
    page as hidden, so the page is made hidden here: ``visibilityState`` reads "hidden", a
    ``visibilitychange`` is dispatched, and ``setTimeout``/``setInterval`` are throttled."""
    uid = await sign_in(page, stack)
    await page.evaluate(HIDE_AND_THROTTLE)
    assert await page.evaluate("document.visibilityState") == "hidden"
    before = int(await page.locator("#pongs").inner_text())
    await asyncio.sleep(2 * float(SHORT["PONG_TIMEOUT"]) * UNIT)
    assert int(await page.locator("#pongs").inner_text()) > before
    await expect_state(page, "connected")
    status = await get_status(stack, uid)
    assert status["is_connected"] is True


HIDE_AND_THROTTLE = """() => {
  Object.defineProperty(document, "visibilityState", { get: () => "hidden" });
  Object.defineProperty(document, "hidden", { get: () => true });
  document.dispatchEvent(new Event("visibilitychange"));
  const later = (original) => (fn, ms, ...args) => original(fn, Math.max(ms || 0, 60000), ...args);
  window.setTimeout = later(window.setTimeout.bind(window));
  window.setInterval = later(window.setInterval.bind(window));
}"""


async def get_status(stack: Stack, uid: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.gateway.http, headers=stack.gateway.auth) as http:
        body: dict[str, Any] = (await http.get(f"/ws/status/{uid}")).json()
    return body
