"""X-Forwarded-For is believed only from the peers in FORWARDED_ALLOW_IPS.

TLS ends at a front end (Cloud Run's, or a local proxy), so a socket's peer is the front end
and the client's address arrives in X-Forwarded-For. The connect limiter counts attempts per
client address: with the header believed, two clients behind one proxy have a limit each;
from an untrusted peer the header is ignored and both count as that peer. Here the "front end"
is the test itself on loopback, with WS_MAX_CONNECTS_PER_MINUTE=1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import UNIT, GatewayProc, TokenMinter, loads, start_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trusting(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    """Believes X-Forwarded-* from loopback (the default off Cloud Run)."""
    proc = start_gateway(firestore_host, project_id, minter, WS_MAX_CONNECTS_PER_MINUTE="1")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def distrusting(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    """Believes X-Forwarded-* from one other address only: loopback's headers are ignored."""
    proc = start_gateway(
        firestore_host,
        project_id,
        minter,
        WS_MAX_CONNECTS_PER_MINUTE="1",
        FORWARDED_ALLOW_IPS="10.9.9.9",
    )
    yield proc
    proc.stop()


async def outcome(gateway: GatewayProc, user: str, client_address: str) -> str:
    """Open a socket as if forwarded for ``client_address``: "accepted" when the first frame
    is a ping, else the close code."""
    ws: ClientConnection
    async with connect(
        gateway.ws(user), additional_headers={"X-Forwarded-For": client_address}
    ) as ws:
        try:
            async with asyncio.timeout(10 * UNIT):
                frame = loads(await ws.recv())
        except ConnectionClosed:
            return str(ws.close_code)
        return "accepted" if frame["type"] == "ping" else repr(frame)


async def same_minute() -> None:
    """The limiter's window is the calendar minute: start a test well inside one."""
    if time.time() % 60 > 45:
        await asyncio.sleep(60 - time.time() % 60 + 0.5)


async def test_a_trusted_front_ends_x_forwarded_for_gives_each_client_its_own_limit(
    trusting: GatewayProc,
) -> None:
    """From loopback the header is believed: a second attempt for one forwarded address is
    refused (4429), while another forwarded address is still let in."""
    await same_minute()
    assert await outcome(trusting, "fwd-a", "203.0.113.1") == "accepted"
    assert await outcome(trusting, "fwd-a", "203.0.113.1") == "4429"
    assert await outcome(trusting, "fwd-b", "203.0.113.2") == "accepted"


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    distrusting: GatewayProc,
) -> None:
    """From a peer outside FORWARDED_ALLOW_IPS the header cannot pick the address: two
    attempts claiming different clients count as the same peer and the second is refused."""
    await same_minute()
    assert await outcome(distrusting, "fwd-c", "203.0.113.3") == "accepted"
    assert await outcome(distrusting, "fwd-d", "203.0.113.4") == "4429"
