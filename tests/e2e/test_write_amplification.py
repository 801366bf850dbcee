"""What one hostile socket can cost in Firestore writes: a client that sends pongs nobody asked
for and a stream_ack in every other frame, as fast as its frame rate allows, against a real
gateway process and the Firestore emulator.

Each pong used to be written, and each flush wrote the latest ack: about 9.4 writes a second
from one socket at 19 frames a second, against 0.033 for a client that answers its pings. Now
a socket's pongs cost at most one write per ping round, and a user's acks at most one write
per ``ACK_WRITE_INTERVAL`` (1 s), the last one always landing.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from gateway.instance.stream_delivery import ACK_WRITE_INTERVAL
from gateway.storage.schema import ACKED_OFFSET, STREAM_ACKS
from tests.support import UNIT, GatewayProc, TokenMinter, eventually, start_gateway

pytestmark = pytest.mark.e2e

PING_INTERVAL = 2.0
FLOOD_SECONDS = 6.0
FRAMES_PER_SECOND = 19


@pytest.fixture(scope="module")
def gateway(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    """One instance with the default frame rate (20 a second) and 2 s ping rounds; a long
    SWEEP_INTERVAL keeps the instance's own heartbeat writes out of the count."""
    proc = start_gateway(
        firestore_host,
        project_id,
        minter,
        PING_INTERVAL=str(PING_INTERVAL),
        SWEEP_INTERVAL="600",
    )
    yield proc
    proc.stop()


async def counters(gateway: GatewayProc) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10 * UNIT) as http:
        text = (await http.get("/metrics")).text
    found = {}
    for line in text.splitlines():
        if line.startswith("gateway_") and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            found[name] = float(value)
    return found


async def test_a_socket_flooding_pongs_and_acks_costs_about_one_write_a_second(
    gateway: GatewayProc, firestore_client: Any
) -> None:
    """19 frames a second, half unrequested pongs and half stream_acks, for 6 s: the
    documents written stay within one pong write per ping round plus one ack write per
    second (about 1.5 a second here, 1.03 at the default 30 s ping), where every frame used to
    be written; the last acknowledged offset is the one stored."""
    user = f"w-{uuid.uuid4().hex[:12]}"
    async with connect(gateway.ws(user)) as ws:
        await asyncio.sleep(1.0)  # the connect's own writes are committed before counting
        before = await counters(gateway)
        started = time.monotonic()
        sent = offset = 0
        while (elapsed := time.monotonic() - started) < FLOOD_SECONDS:
            if sent % 2:
                offset += 1
                frame = json.dumps({"type": "stream_ack", "epoch": "e", "offset": offset})
            else:
                frame = '{"type":"pong"}'
            await ws.send(frame)
            sent += 1
            await asyncio.sleep(max(0.0, sent / FRAMES_PER_SECOND - elapsed))

        async def last_ack_stored() -> bool:
            doc = firestore_client.collection(STREAM_ACKS).document(user).get().to_dict()
            return (doc or {}).get(ACKED_OFFSET) == offset

        await eventually(last_ack_stored, timeout=10)
        await asyncio.sleep(1.0)  # a last flush
        after = await counters(gateway)
        assert ws.close_code is None  # within the frame rate: the socket stayed open

    seconds = time.monotonic() - started
    writes = after["gateway_firestore_writes_total"] - before["gateway_firestore_writes_total"]
    rounds = seconds / PING_INTERVAL
    allowed = (rounds + 1) + (seconds / ACK_WRITE_INTERVAL + 1)
    print(
        f"\nhostile socket: {sent} frames in {FLOOD_SECONDS:.0f} s -> {writes:.0f} documents "
        f"written ({writes / seconds:.2f}/s; allowed {allowed:.1f} over {seconds:.1f} s)"
        f" at {datetime.now(UTC):%H:%M:%S}"
    )
    assert writes <= allowed, (writes, allowed)
    assert writes < sent / 5
    unrequested = after["gateway_pongs_unrequested_total"] - before.get(
        "gateway_pongs_unrequested_total", 0.0
    )
    coalesced = after["gateway_stream_acks_coalesced_total"] - before.get(
        "gateway_stream_acks_coalesced_total", 0.0
    )
    assert unrequested > 0 and coalesced > 0
