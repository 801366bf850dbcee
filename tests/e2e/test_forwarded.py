"""X-Forwarded-For is believed only from the peers in FORWARDED_ALLOW_IPS.

TLS ends at a front end (Cloud Run's, or a local proxy), so a socket's peer is the front end
and the client's address arrives in X-Forwarded-For. The connect limiter counts attempts per
client address: with the header believed, two clients behind one proxy have a limit each;
from an untrusted peer the header is ignored and both count as that peer. The entry counted is
the one the front end added, the rightmost (``spoofed, real``: the client wrote ``spoofed``),
with ``*`` as on Cloud Run too. Here the "front end" is the test itself on loopback, with
WS_MAX_CONNECTS_PER_MINUTE=1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import UNIT, GatewayProc, TokenMinter, loads, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]


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


@pytest.fixture(scope="module")
def trusting_every_peer(
    firestore_host: str, project_id: str, minter: TokenMinter
) -> Iterator[GatewayProc]:
    """Believes X-Forwarded-* from any peer, as on Cloud Run (FORWARDED_ALLOW_IPS=*)."""
    proc = start_gateway(
        firestore_host, project_id, minter, WS_MAX_CONNECTS_PER_MINUTE="1", FORWARDED_ALLOW_IPS="*"
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


async def test_with_star_two_clients_spoofing_one_address_are_counted_by_their_real_ones(
    trusting_every_peer: GatewayProc,
) -> None:
    """With ``*``, two clients that both write the same leftmost entry, to which the front end
    appends their distinct real addresses, each get their own limit: neither spends the
    spoofed address's allowance, nor the other's."""
    await same_minute()
    assert await outcome(trusting_every_peer, "fwd-e", "198.51.100.7, 203.0.113.11") == "accepted"
    assert await outcome(trusting_every_peer, "fwd-f", "198.51.100.7, 203.0.113.12") == "accepted"
    assert await outcome(trusting_every_peer, "fwd-g", "198.51.100.7") == "accepted"


@pytest.mark.parametrize("gateway_name", ["trusting_every_peer", "trusting"])
async def test_a_client_cannot_evade_the_limit_by_varying_the_leftmost_entry(
    gateway_name: str, request: pytest.FixtureRequest
) -> None:
    """With ``*`` and with a list of trusted peers alike, a client that writes a new leftmost
    entry on every attempt is still counted by the address the front end appended: its second
    attempt in the minute is refused (4429)."""
    gateway: GatewayProc = request.getfixturevalue(gateway_name)
    real = "203.0.113.13" if gateway_name == "trusting" else "203.0.113.14"
    await same_minute()
    assert await outcome(gateway, "fwd-h", f"198.51.100.1, {real}") == "accepted"
    assert await outcome(gateway, "fwd-h", f"198.51.100.2, {real}") == "4429"
    assert await outcome(gateway, "fwd-h", f"198.51.100.3, 198.51.100.4, {real}") == "4429"
