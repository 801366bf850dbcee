"""The operator console (/console, docs/console.md) in Chromium against three gateway instances
with ``CONSOLE_ENABLED=1`` behind the round-robin proxy, the deployment as an operator reaches
it: signing in with the admin token and with a Firebase account carrying the ``admin`` claim
(a wrong token and a user without the claim refused, the gateway's message shown), the counts
following clients as they connect and leave, sends to a user and to a room (bad input shown
with the API's message), a sign-out from the console closing the user's sockets on every
instance, and a SIGKILLed instance shown as gone.

The page is served by the instances themselves (``CONSOLE_DIR``, built by ``make deps``); its
origin, the proxy's, is in ``ALLOWED_ORIGINS``. Each test saves a full-page screenshot under
``.run/screenshots/console/``, named after the test (and the refused wrong token in
``wrong_admin_token_refused.png``), and fails on any uncaught error or unhandled rejection in
the page. The SIGKILL test goes last: it takes an instance away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from emulator import procs
from tests.browser.conftest import WAIT_MS
from tests.conftest import PubSubEmulator
from tests.e2e.conftest import Cluster
from tests.support import LOG_DIR, UNIT, Client, TokenMinter, start_gateway

pytestmark = pytest.mark.browser

CONSOLE_DIST = procs.ROOT / "clients" / "js" / "dist" / "console"
SCREENSHOTS = procs.ROOT / ".run" / "screenshots" / "console"
#: Short intervals: an instance without a heartbeat for 3 x SWEEP_INTERVAL is lost.
SHORT = {"PING_INTERVAL": "0.5", "PONG_TIMEOUT": "10", "SWEEP_INTERVAL": "1"}
#: team:… rooms: open to any signed-in socket, with presence.
ROOMS = {"WS_PUBLIC_ROOM_PREFIXES": "team:", "PRESENCE_ROOM_PREFIXES": "team:"}
PASSWORD = "correct horse battery"
#: sessionStorage's key for the admin token (clients/js/console/session.js).
TOKEN_KEY = "presence-console.admin-token"


def live_figure(count: int) -> re.Pattern[str]:
    """The "live / known" figure with ``count`` live: the known ones include instances of
    earlier test modules (same Firestore project), stopped or lost, still in the registry."""
    return re.compile(rf"^{count} / \d+$")


@pytest.fixture(scope="module")
def cluster(
    firestore_host: str, project_id: str, minter: TokenMinter, pubsub: PubSubEmulator
) -> Iterator[Cluster]:
    """Three gateways with the console on, one topic, behind the proxy; the proxy's port is
    chosen first so that its origin can be listed in ALLOWED_ORIGINS."""
    assert (CONSOLE_DIST / "index.html").exists(), "build the console first: make deps"
    port = procs.free_port()
    topic = f"console-page-{secrets.token_hex(4)}"
    admin_token = secrets.token_urlsafe(24)
    shared = {
        "GATEWAY_ADMIN_TOKEN": admin_token,
        "PUBSUB_EMULATOR_HOST": pubsub.host,
        "PUBSUB_TOPIC": topic,
        "CONSOLE_ENABLED": "1",
        "CONSOLE_DIR": str(CONSOLE_DIST),
        "ALLOWED_ORIGINS": f"http://127.0.0.1:{port}",
        **SHORT,
        **ROOMS,
    }
    # Started side by side: each waits for its own readiness, a few seconds on a loaded machine.
    with ThreadPoolExecutor(3) as pool:
        starting = [
            pool.submit(start_gateway, firestore_host, project_id, minter, **shared)
            for _ in range(3)
        ]
    failed = [f.exception() for f in starting if f.exception() is not None]
    if failed:
        for future in starting:
            if future.exception() is None:
                future.result().stop()
        raise failed[0]
    instances = [future.result() for future in starting]
    proxy = procs.Process(
        "proxy",
        [sys.executable, "-m", "tests.proxy", str(port), *(str(g.port) for g in instances)],
        f"tcp://127.0.0.1:{port}",
        LOG_DIR / f"proxy-{port}.log",
    )
    proxy.start()
    proxy.wait_ready(30 * UNIT)
    running = Cluster(instances, proxy, port, topic, admin_token, shared, minter)
    yield running
    running.stop()


@dataclass
class Console:
    """A browser context on the console, with the page's uncaught errors."""

    page: Any
    errors: list[str] = field(default_factory=list)


@pytest.fixture
async def console(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[Console]:
    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    opened = Console(page)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    yield opened
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    await context.close()
    assert not opened.errors, f"uncaught errors in the page: {opened.errors}"


async def open_console(console: Console, cluster: Cluster) -> Any:
    """Load /console through the proxy and wait until the page has set itself up."""
    from playwright.async_api import expect

    page = console.page
    await page.goto(f"{cluster.url}/console")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
    return page


async def sign_in_with_token(console: Console, cluster: Cluster, token: str) -> Any:
    page = await open_console(console, cluster)
    await page.fill("#admin-token", token)
    await page.click("#token-sign-in")
    return page


async def signed_in(page: Any) -> None:
    """The console shows the deployment: the instances table has rows."""
    from playwright.async_api import expect

    await expect(page.locator("#console-panel")).to_be_visible(timeout=WAIT_MS)
    await expect(page.get_by_test_id("instance").first).to_be_visible(timeout=WAIT_MS)


def instance_row(page: Any, instance_id: str) -> Any:
    return page.locator(f'[data-testid="instance"][data-instance-id="{instance_id}"]')


async def frame_of_type(client: Client, kind: str) -> dict[str, Any]:
    """The client's next frame of this type, skipping others (presence snapshots, diffs)."""
    while True:
        frame = await client.next(30)
        if frame.get("type") == kind:
            return frame


async def api_message(cluster: Cluster, path: str) -> str:
    """The error message the API itself answers for this GET (what the page must show)."""
    answer = await cluster.request("GET", path)
    assert answer.status_code == 400, answer.text
    message: str = answer.json()["message"]
    return message


async def test_the_admin_token_signs_in_and_a_wrong_one_is_refused(
    console: Console, cluster: Cluster
) -> None:
    """A wrong token is refused with the gateway's message on the page; the admin token opens
    the console on all three live instances and is kept in sessionStorage only."""
    from playwright.async_api import expect

    page = await sign_in_with_token(console, cluster, "not-the-token")
    error = page.locator("#sign-in-error")
    await expect(error).to_be_visible(timeout=WAIT_MS)
    await expect(error).to_contain_text("The gateway refused this sign-in: ")
    assert len((await error.inner_text()).split(": ", 1)[1]) > 3, "no message from the API"
    await expect(page.locator("#console-panel")).to_be_hidden()
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "wrong_admin_token_refused.png"))

    await page.fill("#admin-token", cluster.admin_token)
    await page.click("#token-sign-in")
    await signed_in(page)
    await expect(page.locator("#sign-in-error")).to_be_hidden()
    await expect(page.locator("#live-instances")).to_have_text(live_figure(3), timeout=WAIT_MS)
    await expect(page.locator("#scope")).to_have_attribute("data-scope", "deployment")
    for gateway in cluster.instances:
        row = instance_row(page, gateway.env["GATEWAY_INSTANCE_ID"])
        await expect(row).to_have_attribute("data-state", "live")
    stored = await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")
    assert stored == cluster.admin_token
    assert await page.evaluate("localStorage.length") == 0
    # A reload keeps the sign-in (same tab), the console's sign-out forgets it.
    await page.reload()
    await signed_in(page)
    await page.click("#console-sign-out")
    await expect(page.locator("#sign-in-panel")).to_be_visible()
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None


async def test_a_firebase_user_with_the_admin_claim_signs_in_one_without_is_refused(
    console: Console, cluster: Cluster, firebase_app: Any
) -> None:
    """Email and password through the Firebase JS SDK at the Auth emulator: a user without the
    admin claim is refused (the message shown), one with it sees the deployment."""
    from firebase_admin import auth
    from playwright.async_api import expect

    def create(claims: dict[str, Any] | None) -> str:
        email = f"operator-{secrets.token_hex(4)}@example.com"
        user = auth.create_user(email=email, password=PASSWORD, app=firebase_app)
        if claims:
            auth.set_custom_user_claims(user.uid, claims, app=firebase_app)
        return email

    plain = await asyncio.to_thread(create, None)
    admin = await asyncio.to_thread(create, {"admin": True})
    page = await open_console(console, cluster)
    await expect(page.locator("#firebase-sign-in")).to_be_enabled()

    await page.fill("#email", plain)
    await page.fill("#password", PASSWORD)
    await page.click("#firebase-sign-in")
    error = page.locator("#sign-in-error")
    await expect(error).to_contain_text("The gateway refused this sign-in: ", timeout=WAIT_MS)
    await expect(page.locator("#console-panel")).to_be_hidden()

    await page.fill("#email", admin)
    await page.fill("#password", PASSWORD)
    await page.click("#firebase-sign-in")
    await signed_in(page)
    await expect(page.locator("#operator")).to_have_text(f"Signed in with {admin}")
    await expect(page.locator("#live-instances")).to_have_text(live_figure(3), timeout=WAIT_MS)
    # The console keeps polling with the ID token: a later refresh still answers.
    polled = int(await page.locator("body").get_attribute("data-polled") or 0)
    await expect(page.locator("body")).not_to_have_attribute(
        "data-polled", str(polled), timeout=WAIT_MS
    )
    await expect(page.locator("#poll-error")).to_be_hidden()
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None


async def test_the_counts_follow_clients_as_they_connect_and_leave(
    console: Console, cluster: Cluster
) -> None:
    """Sockets and users on the page rise as two users open four sockets through the proxy and
    fall back as they close."""
    from playwright.async_api import expect

    overview = (await cluster.request("GET", "/ws/console/overview")).json()
    sockets, users = overview["totals"]["sockets"], overview["totals"]["users"]
    page = await sign_in_with_token(console, cluster, cluster.admin_token)
    await signed_in(page)
    total_sockets, total_users = page.locator("#total-sockets"), page.locator("#total-users")
    await expect(total_sockets).to_have_text(str(sockets), timeout=WAIT_MS)

    ids = [f"console-count-{secrets.token_hex(3)}" for _ in range(2)]
    url = f"ws://127.0.0.1:{cluster.port}/ws/connect"
    minter = cluster.minter
    assert minter is not None
    clients = [await Client.open(f"{url}/{uid}?token={minter(uid)}") for uid in (*ids, *ids)]
    try:
        await expect(total_sockets).to_have_text(str(sockets + 4), timeout=WAIT_MS)
        await expect(total_users).to_have_text(str(users + 2), timeout=WAIT_MS)
        for client in clients[1:]:
            await client.close()
        await expect(total_sockets).to_have_text(str(sockets + 1), timeout=WAIT_MS)
        await expect(total_users).to_have_text(str(users + 1), timeout=WAIT_MS)
        await clients[0].close()
        await expect(total_sockets).to_have_text(str(sockets), timeout=WAIT_MS)
        await expect(total_users).to_have_text(str(users), timeout=WAIT_MS)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()


async def test_a_sign_out_from_the_console_closes_the_users_sockets_on_every_instance(
    console: Console, cluster: Cluster
) -> None:
    """The user's three sockets (one per instance) are listed; Sign out, confirmed in the
    dialog, closes each with 4410, and the sign-out shows among the recent events."""
    from playwright.async_api import expect

    uid = f"console-out-{secrets.token_hex(3)}"
    clients = [await Client.open(gateway.ws(uid)) for gateway in cluster.instances]
    try:
        page = await sign_in_with_token(console, cluster, cluster.admin_token)
        await signed_in(page)
        await page.fill("#user-id", uid)
        await page.click("#user-look-up")
        rows = page.get_by_test_id("user-socket")
        await expect(rows).to_have_count(3, timeout=WAIT_MS)
        shown = {await row.get_attribute("data-instance-id") for row in await rows.all()}
        assert shown == {g.env["GATEWAY_INSTANCE_ID"] for g in cluster.instances}

        await page.click("#user-sign-out")
        dialog = page.locator("#confirm-dialog")
        await expect(dialog).to_be_visible()
        await expect(dialog).to_contain_text(uid)
        await page.click("#confirm-ok")
        status = page.locator("#user-action-status")
        await expect(status).to_have_text("Signed out: 3 socket(s) closed.", timeout=WAIT_MS)
        codes = await asyncio.gather(*(client.closed(30) for client in clients))
        assert codes == [4410, 4410, 4410]
        await expect(rows).to_have_count(0, timeout=WAIT_MS)

        await page.select_option("#event-kind", "signout")
        await page.fill("#event-user", uid)
        await page.click("#event-filter")
        # The list is the filtered one: the gateway's answer for this kind and user.
        await expect(page.locator("#events")).to_have_attribute(
            "data-filter", f"signout|{uid}", timeout=WAIT_MS
        )
        events = page.get_by_test_id("event")
        await expect(events.first).to_be_visible(timeout=WAIT_MS)
        for event in await events.all():
            assert await event.get_attribute("data-kind") == "signout"
            assert await event.get_attribute("data-user-id") == uid
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()


async def test_sends_from_the_console_reach_the_user_and_the_room_and_bad_input_is_explained(
    console: Console, cluster: Cluster
) -> None:
    """Send, send durable (in a stream frame) and send to room reach the user's socket; the
    room lists its member with presence; a message that is not JSON, an invalid user id and an
    invalid room name each show an error (the API's own message for the last two)."""
    from playwright.async_api import expect

    uid, room = f"console-send-{secrets.token_hex(3)}", f"team:{secrets.token_hex(3)}"
    client = await Client.open(cluster.instances[0].ws(uid))
    try:
        await client.ws.send(json.dumps({"type": "join", "room": room, "id": "j-1"}))
        assert (await frame_of_type(client, "joined"))["room"] == room
        page = await sign_in_with_token(console, cluster, cluster.admin_token)
        await signed_in(page)
        await page.fill("#user-id", uid)
        await page.click("#user-look-up")
        await expect(page.get_by_test_id("user-socket")).to_have_count(1, timeout=WAIT_MS)
        await expect(page.get_by_test_id("user-socket")).to_contain_text(room)

        status = page.locator("#user-action-status")
        await page.fill("#user-message", '{"type": "console", "data": {"n": 1}}')
        await page.click("#user-send")
        await expect(status).to_have_text("Sent to 1 socket(s).", timeout=WAIT_MS)
        assert (await frame_of_type(client, "console"))["data"] == {"n": 1}
        await page.fill("#user-message", '{"type": "console", "data": {"n": 2}}')
        await page.click("#user-send-durable")
        # Delivered in a stream frame carrying its place in the user's stream.
        stored = await frame_of_type(client, "stream")
        assert stored["data"] == {"type": "console", "data": {"n": 2}}
        await expect(status).to_contain_text(f"Stored at offset {stored['offset']};")
        await page.fill("#user-message", "{not json")
        await page.click("#user-send")
        await expect(status).to_contain_text("not valid JSON")
        await expect(status).to_have_attribute("data-kind", "error")

        await page.fill("#room-name", room)
        await page.click("#room-look-up")
        member = page.locator(f'[data-testid="room-member"][data-user-id="{uid}"]')
        await expect(member).to_contain_text("1 device(s)", timeout=WAIT_MS)
        await expect(page.locator("#room-summary")).to_contain_text("1 user(s) online")
        await page.fill("#room-message", '{"type": "console", "data": {"n": 3}}')
        await page.click("#room-send")
        await expect(page.locator("#room-action-status")).to_have_text(
            "Sent to 1 socket(s) of 1 user(s).", timeout=WAIT_MS
        )
        assert (await frame_of_type(client, "console"))["data"] == {"n": 3}

        bad_user, bad_room = "not a user id!", "not a room!"
        await page.fill("#user-id", bad_user)
        await page.click("#user-look-up")
        user_message = await api_message(cluster, f"/ws/console/users/{bad_user}")
        await expect(page.locator("#user-error")).to_have_text(user_message, timeout=WAIT_MS)
        await page.fill("#room-name", bad_room)
        await page.click("#room-look-up")
        room_message = await api_message(cluster, f"/ws/rooms/{bad_room}")
        await expect(page.locator("#room-error")).to_have_text(room_message, timeout=WAIT_MS)
        await expect(page.locator("#console-panel")).to_be_visible()
        await expect(page.locator("#global-error")).to_be_hidden()
    finally:
        await client.close()


async def test_a_sigkilled_instance_is_shown_as_gone(console: Console, cluster: Cluster) -> None:
    """An instance killed with SIGKILL stops answering: its row stays, marked gone, once its
    heartbeat is older than 3 x SWEEP_INTERVAL; the others stay live."""
    from playwright.async_api import expect

    page = await sign_in_with_token(console, cluster, cluster.admin_token)
    await signed_in(page)
    await expect(page.locator("#live-instances")).to_have_text(live_figure(3), timeout=WAIT_MS)
    victim = cluster.instances[-1]
    assert victim.process.popen is not None
    os.killpg(victim.process.popen.pid, signal.SIGKILL)
    victim.process.popen.wait()

    row = instance_row(page, victim.env["GATEWAY_INSTANCE_ID"])
    await expect(row).to_have_attribute("data-state", "lost", timeout=WAIT_MS)
    await expect(row).to_have_class("gone")
    await expect(row.get_by_test_id("instance-state")).to_have_text("gone (lost)")
    await expect(page.locator("#live-instances")).to_have_text(live_figure(2), timeout=WAIT_MS)
    for gateway in cluster.instances[:-1]:
        live = instance_row(page, gateway.env["GATEWAY_INSTANCE_ID"])
        await expect(live).to_have_attribute("data-state", "live")
