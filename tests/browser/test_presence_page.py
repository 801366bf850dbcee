"""The demo page's presence panels in Chromium against real gateways (docs/presence.md): two
browser contexts, each signed in as its own Firebase user, see each other in a presence room
(join, typing, leave) over the socket, and see each other's user presence in Firestore
(Contacts, read with the Firebase JS SDK). Then three instances behind the round-robin proxy:
a SIGKILLed instance's member leaves the room within the documented bound.

The users are made with the Admin SDK so that their tokens carry the ``rooms_publish`` claim
publishing needs; the page signs them in with email and password like anyone else.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from emulator.stack import DEMO_DIR
from gateway.cluster.liveness import MIN_STALL_GRACE
from tests.browser.conftest import SCREENSHOTS, WAIT_MS, expect_state
from tests.conftest import PubSubEmulator
from tests.e2e.conftest import Cluster, start_cluster
from tests.support import UNIT, GatewayProc, TokenMinter, start_gateway

pytestmark = pytest.mark.browser

ROOM = "doc:demo"
#: Presence rooms under doc:, open to every signed-in user; a closed socket counts for 1 s; a
#: lost instance's entries go after 3 x SWEEP_INTERVAL = 3 s without a heartbeat.
PRESENCE = {
    "PRESENCE_ROOM_PREFIXES": "doc:",
    "WS_PUBLIC_ROOM_PREFIXES": "doc:",
    "PRESENCE_GRACE": "1",
    "PRESENCE_DIFF_INTERVAL": "0.2",
    "SWEEP_INTERVAL": "1",
    "PING_INTERVAL": "0.5",
    "PONG_TIMEOUT": "4",
}
#: docs/presence.md: a lost instance's entries are dropped once it has had no heartbeat for
#: 3 x SWEEP_INTERVAL, noticed at the next check and confirmed at the one after (a check every
#: SWEEP_INTERVAL; each check's registry read, up to half a second on this loaded machine, may
#: end after its next tick), then sent in the next diff (PRESENCE_DIFF_INTERVAL).
LOST_INSTANCE_BOUND = 3 * 1 + 2 * (1 + 0.5) + 0.2
#: What a browser adds to a bound: the page polled by Playwright, the frame rendered.
RENDER_SLACK = 1.0
PASSWORD = "correct horse battery"


@dataclass
class Person:
    """A Firebase user with the publish claim, in a browser context of their own."""

    name: str
    uid: str
    email: str
    context: Any
    page: Any

    async def sign_in(self, base_url: str) -> None:
        """Open the demo and sign in with email and password; wait until connected."""
        await self.page.goto(f"{base_url}/demo")
        await self.page.fill("#email", self.email)
        await self.page.fill("#password", PASSWORD)
        await self.page.click("#sign-in")
        await expect_state(self.page, "connected")
        assert await self.page.locator("#my-uid").inner_text() == self.uid

    async def join(self, room: str = ROOM) -> None:
        await self.page.fill("#room-name", room)
        await self.page.fill("#room-display-name", self.name)
        await self.page.click("#room-join")

    def member(self, uid: str) -> Any:
        return self.page.locator(f'[data-testid="member"][data-uid="{uid}"]')

    def contact(self, uid: str) -> Any:
        return self.page.locator(f'[data-testid="contact"][data-uid="{uid}"]')


People = Callable[[str], Awaitable[Person]]


@pytest.fixture
async def people(
    browser: Any, firebase_app: Any, request: pytest.FixtureRequest
) -> AsyncIterator[People]:
    """Makes people; screenshots each page at the end (those still open) and closes them."""
    from firebase_admin import auth

    made: list[Person] = []

    async def make(name: str) -> Person:
        email = f"{name.lower()}-{secrets.token_hex(4)}@example.com"
        user = await asyncio.to_thread(
            auth.create_user, email=email, password=PASSWORD, app=firebase_app
        )
        await asyncio.to_thread(
            auth.set_custom_user_claims, user.uid, {"rooms_publish": ["doc:*"]}, app=firebase_app
        )
        context = await browser.new_context(viewport={"width": 1100, "height": 1400})
        person = Person(name, user.uid, email, context, await context.new_page())
        made.append(person)
        return person

    yield make
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for person in made:
        if not person.page.is_closed():
            shot = SCREENSHOTS / f"{request.node.name}-{person.name}.png"
            await person.page.screenshot(path=str(shot), full_page=True)
        await person.context.close()


@pytest.fixture(scope="module")
def gateway(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    proc = start_gateway(firestore_host, project_id, minter, DEMO_DIR=str(DEMO_DIR), **PRESENCE)
    yield proc
    proc.stop()


async def test_two_users_see_each_other_join_type_and_leave_a_room(
    gateway: GatewayProc, people: People
) -> None:
    """Each sees the other join with their name; Ana's typing shows as "Ana is typing…" on
    Ben's page and goes away after she stops; Ben's leave takes him off Ana's list."""
    from playwright.async_api import expect

    ana, ben = await people("Ana"), await people("Ben")
    for person in (ana, ben):
        await person.sign_in(gateway.http)
        await person.join()
    await expect(ana.member(ben.uid)).to_have_text("Ben", timeout=WAIT_MS)
    await expect(ben.member(ana.uid)).to_have_text("Ana", timeout=WAIT_MS)
    await expect(ana.member(ana.uid)).to_have_text("Ana (you)", timeout=WAIT_MS)

    await ana.page.locator("#room-text").press_sequentially("hello", delay=50)
    await expect(ben.page.locator("#typing")).to_have_text("Ana is typing…", timeout=WAIT_MS)
    await expect(ana.page.locator("#typing")).to_have_text("")
    # Stopped: typing:false 3 s after the last keystroke (or the receiver's own 3 s expiry).
    await expect(ben.page.locator("#typing")).to_have_text("", timeout=6_000 * UNIT)

    await ben.page.click("#room-leave")
    await expect(ana.member(ben.uid)).to_have_count(0, timeout=WAIT_MS)
    await expect(ana.member(ana.uid)).to_have_count(1)
    await expect(ben.page.locator('[data-testid="member"]')).to_have_count(0)


async def test_contacts_show_the_other_user_online_then_offline_once_they_close(
    gateway: GatewayProc, people: People
) -> None:
    """Ana follows Ben: "online (1 device)" from presence/{uid} while his page is open, then
    "last seen …" once his browser closed and PRESENCE_GRACE passed."""
    from playwright.async_api import expect

    ana, ben = await people("Ana"), await people("Ben")
    await ana.sign_in(gateway.http)
    await ben.sign_in(gateway.http)
    await ana.page.fill("#contact-uid", ben.uid)
    await ana.page.click("#contact-add")
    contact = ana.contact(ben.uid)
    await expect(contact).to_have_attribute("data-state", "online", timeout=WAIT_MS)
    await expect(contact.get_by_test_id("contact-status")).to_have_text("online (1 device)")

    await ben.context.close()
    await expect(contact).to_have_attribute("data-state", "offline", timeout=WAIT_MS)
    await expect(contact.get_by_test_id("contact-status")).to_contain_text("last seen")


# --- three instances ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(
    firestore_host: str, project_id: str, minter: TokenMinter, pubsub: PubSubEmulator
) -> Iterator[Cluster]:
    """Three gateways serving the demo, on one topic, behind the round-robin proxy."""
    running = start_cluster(
        firestore_host,
        project_id,
        minter,
        pubsub,
        "presence-page",
        3,
        Cluster,
        DEMO_DIR=str(DEMO_DIR),
        **PRESENCE,
    )
    yield running
    running.stop()


async def holder(cluster: Cluster, uid: str) -> GatewayProc | None:
    """The instance holding the user's socket, asked of each instance directly."""
    import httpx

    headers = {"Authorization": f"Bearer {cluster.admin_token}"}
    for gateway in cluster.instances:
        if gateway.process.popen is None or gateway.process.popen.poll() is not None:
            continue
        async with httpx.AsyncClient(base_url=gateway.http, headers=headers) as http:
            stats = (await http.get("/ws/stats", params={"scope": "instance"})).json()
        if uid in stats["connected_users"]:
            return gateway
    return None


@dataclass
class Gate:
    """Routes a page's sockets (Playwright's route_web_socket): through to the gateway while
    open, closed at once once shut, as by a dead network. Set before the page loads, since the
    client keeps the WebSocket constructor it was given."""

    open: bool = True

    async def __call__(self, ws: Any) -> None:
        if self.open:
            ws.connect_to_server()
        else:
            await ws.close()


async def test_a_member_of_a_killed_instance_leaves_the_room_within_the_bound(
    cluster: Cluster, people: People
) -> None:
    """Ben's socket sits on another instance than Ana's; that instance is SIGKILLed (and
    Ben's page cannot reach the deployment again): Ana sees Ben leave the room within
    3 x SWEEP_INTERVAL + SWEEP_INTERVAL + PRESENCE_DIFF_INTERVAL."""
    from playwright.async_api import expect

    began = time.monotonic()  # the instances started before this
    ana, ben = await people("Ana"), await people("Ben")
    gate = Gate()
    await ben.page.route_web_socket(re.compile(r"/ws/connect/"), gate)
    await ana.sign_in(cluster.url)
    ana_at = await holder(cluster, ana.uid)
    await ben.sign_in(cluster.url)
    # The proxy sends each new connection to the next instance: sign in again until Ben's
    # socket is elsewhere than Ana's (a reload opens a new socket).
    for _ in range(len(cluster.instances) + 1):
        ben_at = await holder(cluster, ben.uid)
        if ben_at is not None and ben_at is not ana_at:
            break
        await ben.page.reload()
        await expect_state(ben.page, "connected")
    assert ben_at is not None and ana_at is not None and ben_at is not ana_at
    for person in (ana, ben):
        await person.join()
    await expect(ana.member(ben.uid)).to_have_text("Ben", timeout=WAIT_MS)

    # Ben's device goes with the instance: his page's reconnects go nowhere, so the only
    # way Ana can see him leave is the deployment dropping the lost instance's entries.
    # The bound is the steady state's: a young instance whose first writes lagged (a loaded
    # start) takes the registry to be behind and keeps the last live set for MIN_STALL_GRACE
    # (gateway.cluster.liveness; without a lag it holds it only until it reads its own entry).
    await asyncio.sleep(max(0.0, began + MIN_STALL_GRACE - time.monotonic()))
    gate.open = False
    assert ben_at.process.popen is not None
    killed_at = time.monotonic()
    os.killpg(ben_at.process.popen.pid, signal.SIGKILL)
    ben_at.process.popen.wait()
    await expect(ana.member(ben.uid)).to_have_count(0, timeout=WAIT_MS)
    took = time.monotonic() - killed_at
    assert took <= (LOST_INSTANCE_BOUND + RENDER_SLACK) * UNIT, f"Ben left after {took:.1f} s"
    await expect(ana.member(ana.uid)).to_have_count(1)
    await expect_state(ana.page, "connected")
    assert await holder(cluster, ben.uid) is None, "Ben's page reached the deployment again"
