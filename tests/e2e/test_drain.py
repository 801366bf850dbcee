"""SIGTERM drains the gateway: sockets closed with 1012, no pong lost, the instance marked."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    INSTANCES,
    IS_ACTIVE,
    LAST_PONG_AT,
    MEMBERS,
    SESSIONS,
    STOPPED_AT,
    USER_ID,
)
from tests.support import UNIT, TokenMinter, eventually, loads, start_gateway

pytestmark = pytest.mark.e2e


async def test_sigterm_closes_sockets_with_1012_and_loses_no_pong(
    firestore_host: str, project_id: str, minter: TokenMinter, firestore_client: Any
) -> None:
    """Pongs sent right up to SIGTERM all land; sessions record 1012; stopped_at is set."""
    proc = start_gateway(
        firestore_host, project_id, minter, PONG_FLUSH_INTERVAL="1", PING_INTERVAL="0.5"
    )
    users = [f"d-{uuid.uuid4().hex[:10]}" for _ in range(20)]
    try:
        sockets = [await connect(proc.ws(u)) for u in users]
        for _ in range(5):
            last_round = datetime.now(UTC)
            for ws in sockets:
                assert loads(await ws.recv())["type"] == "ping"
                await ws.send(json.dumps({"type": "pong"}))
        assert proc.process.popen is not None

        async def all_pongs_read() -> bool:
            # A pong still in the kernel's buffers when the signal lands was never the
            # gateway's to lose: wait until it has read all 100, then signal at once.
            async with httpx.AsyncClient(base_url=proc.http) as http:
                text = (await http.get("/metrics")).text
            return "gateway_pongs_received_total 100.0" in text.splitlines()

        await eventually(all_pongs_read)
        # The last pongs are still in the write-behind buffer (flushed once a second).
        os.kill(proc.process.popen.pid, signal.SIGTERM)
        codes = []
        for ws in sockets:
            with pytest.raises(ConnectionClosed) as caught:
                async with asyncio.timeout(15 * UNIT):
                    while True:
                        await ws.recv()
            assert caught.value.rcvd is not None
            codes.append(caught.value.rcvd.code)
        assert set(codes) == {1012}
        assert proc.process.popen.wait(timeout=30 * UNIT) is not None
    finally:
        proc.stop()

    from google.cloud.firestore_v1.base_query import FieldFilter

    stats = proc.log()
    assert "gateway instance" in stats and "stopped" in stats
    for user in users:
        member = firestore_client.collection(MEMBERS).document(user).get().to_dict()
        # The last round's pong was received after last_round and persisted during the drain.
        assert member[LAST_PONG_AT] >= last_round, (user, member)
        assert not member.get(ACTIVE_SESSIONS), member
        sessions = (
            firestore_client.collection(SESSIONS)
            .where(filter=FieldFilter(USER_ID, "==", user))
            .get()
        )
        assert [(s.get(IS_ACTIVE), s.get(CLOSE_CODE)) for s in sessions] == [(False, 1012)]

    async def instance_marked() -> bool:
        doc = firestore_client.collection(INSTANCES).document(proc.env["GATEWAY_INSTANCE_ID"])
        return STOPPED_AT in (doc.get().to_dict() or {})

    await eventually(instance_marked, timeout=5)
