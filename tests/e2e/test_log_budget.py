"""Log lines a client's frames cause are held to a budget (gateway.logs) over a real gateway
process: a socket sending a few hundred join, leave, unknown-type and message frames (under a
raised WS_MAX_MESSAGES_PER_SECOND) gets a bounded number of lines, and a summary line says how
many were held back; the room counters in /metrics still count every join and leave.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from gateway.instance.analytics import ROOM_EVENTS_PER_SOCKET
from gateway.logs import FRAME_LINES_BURST, FRAME_LINES_WINDOW
from tests.support import Client, GatewayProc, TokenMinter, eventually, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]

#: Room join/leave pairs, unknown-type frames and message frames the flood sends.
ROOM_PAIRS = ROOM_EVENTS_PER_SOCKET // 2 + 40
UNKNOWN = 80
MESSAGES = 80


@pytest.fixture(scope="module")
def chatty(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    """A gateway of its own (the budgets are per instance) that lets a socket send 1,000
    frames a second and opens ``public:`` rooms to every token."""
    proc = start_gateway(
        firestore_host,
        project_id,
        minter,
        WS_MAX_MESSAGES_PER_SECOND="1000",
        WS_PUBLIC_ROOM_PREFIXES="public:",
    )
    yield proc
    proc.stop()


async def room_events(gateway: GatewayProc) -> dict[str, float]:
    """This instance's room_join and room_leave counters from /metrics."""
    found = {"room_join": 0.0, "room_leave": 0.0}
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        for line in (await http.get("/metrics")).text.splitlines():
            for kind in found:
                if line.startswith(f'gateway_connection_events_total{{event="{kind}"}} '):
                    found[kind] = float(line.rsplit(" ", 1)[1])
    return found


async def test_a_frame_flood_writes_a_bounded_number_of_lines_and_a_summary_of_the_rest(
    chatty: GatewayProc,
) -> None:
    """About 400 frames (join/leave pairs, unknown types, messages) write at most the budget
    of each kind of line: FRAME_LINES_BURST unknown-type and message lines, then a summary
    each with the count held back; ROOM_EVENTS_PER_SOCKET room entries, then one
    ``room events suppressed`` entry with the rest when the socket closes. Every join and
    leave is still answered and counted in /metrics."""
    user = f"chatty-{uuid.uuid4().hex[:12]}"
    before = await room_events(chatty)
    client = await Client.open(chatty.ws(user))
    frames = []
    for _ in range(ROOM_PAIRS):
        frames.append({"type": "join", "room": "public:flood"})
        frames.append({"type": "leave", "room": "public:flood"})
    frames += [{"type": f"bogus-{n}"} for n in range(UNKNOWN)]
    frames += [{"type": "message", "data": {"n": n}} for n in range(MESSAGES)]
    for frame in frames:
        await client.ws.send(json.dumps(frame))
    await client.ws.send(json.dumps({"type": "message", "data": "last", "id": "last"}))
    answers = []
    while (frame := await client.next())["type"] != "ack" or frame.get("id") != "last":
        answers.append(frame["type"])
    assert answers.count("joined") == answers.count("left") == ROOM_PAIRS
    await client.close()

    def lines(marker: str) -> list[str]:
        return [line for line in chatty.log().splitlines() if marker in line]

    async def summaries_written() -> bool:
        return bool(
            lines("gateway.web.sockets unknown message types: ")
            and lines("gateway messages: ")
            and lines(f"room events suppressed user={user}")
        )

    # The frame lines' summaries come when their window ends.
    await eventually(summaries_written, timeout=FRAME_LINES_WINDOW + 10)
    assert len(lines("ignored unknown message type 'bogus-")) == FRAME_LINES_BURST
    assert len(lines(f"message from user={user}")) == FRAME_LINES_BURST
    room_lines = lines(f"room join user={user}") + lines(f"room leave user={user}")
    assert len(room_lines) == ROOM_EVENTS_PER_SOCKET
    held_frames = UNKNOWN - FRAME_LINES_BURST
    assert lines(f"unknown message types: {held_frames} more lines suppressed in")
    # The "last" message is one more than MESSAGES, all from this socket.
    assert lines(f"gateway messages: {MESSAGES + 1 - FRAME_LINES_BURST} more lines suppressed")
    held_rooms = 2 * ROOM_PAIRS - ROOM_EVENTS_PER_SOCKET
    assert len(lines(f"room events suppressed user={user} ")) == 1
    assert f"count={held_rooms} " in lines(f"room events suppressed user={user} ")[0]
    # Every line this socket caused: the budgets, three summaries, its connect and disconnect
    # entries and uvicorn's line accepting it; against one per frame without the budgets.
    caused = [line for line in chatty.log().splitlines() if user in line or "suppressed" in line]
    assert len(caused) <= 2 * FRAME_LINES_BURST + ROOM_EVENTS_PER_SOCKET + 3 + 3, caused
    assert len(caused) < len(frames) / 2
    after = await room_events(chatty)
    assert after["room_join"] - before["room_join"] == ROOM_PAIRS
    assert after["room_leave"] - before["room_leave"] == ROOM_PAIRS
