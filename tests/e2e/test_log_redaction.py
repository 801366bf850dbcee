"""A socket's ID token never reaches the gateway's log, whatever the spelling of the query
parameter that carries it: real sockets against real gateway processes, their logs read back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from tests.support import Client, GatewayProc, TokenMinter, eventually, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]

#: Spellings of the token parameter that the gateway decodes to ``token`` and accepts.
SPELLINGS = ("tok%65n", "%74oken", "%74%6F%6B%65%6E")


def user() -> str:
    return f"redact-{uuid.uuid4().hex[:10]}"


async def accepted(url: str, **headers: str) -> None:
    """Open a socket, see it accepted (its first ping), and close it."""
    client = Client(await connect(url, additional_headers=headers or None))

    async def pinged() -> bool:
        return client.pings > 0

    try:
        await eventually(pinged)
    finally:
        await client.close()


def assert_absent(token: str, log: str) -> None:
    # The payload alone is distinctive (uid, times): no part of the token may show.
    assert token not in log
    assert token.split(".")[1] not in log


@pytest.fixture(scope="module")
def debug_gateway(
    firestore_host: str, project_id: str, minter: TokenMinter
) -> Iterator[GatewayProc]:
    """The websockets implementation at DEBUG, which logs request lines and headers."""
    proc = start_gateway(
        firestore_host, project_id, minter, WS_IMPLEMENTATION="websockets", LOG_LEVEL="DEBUG"
    )
    yield proc
    proc.stop()


@pytest.mark.parametrize("name", SPELLINGS)
async def test_an_encoded_token_name_is_accepted_and_kept_out_of_the_log(
    gateway: GatewayProc, name: str
) -> None:
    """A socket whose token comes as ?tok%65n= (or another encoding) is accepted, and the
    gateway's log shows its path with the query redacted and no part of the token."""
    uid = user()
    assert gateway.minter is not None
    token = gateway.minter(uid)
    await accepted(f"{gateway.bare_ws(uid)}?{name}={token}&since=0")
    log = gateway.log()
    assert f"/ws/connect/{uid}?[redacted]" in log
    assert_absent(token, log)


async def test_a_refused_socket_keeps_its_token_out_of_the_log(gateway: GatewayProc) -> None:
    """A token presented for another user (refused, 4403) does not reach the log either."""
    assert gateway.minter is not None
    token = gateway.minter(user())
    client = await Client.open(f"{gateway.bare_ws(user())}?tok%65n={token}")
    assert await client.closed() == 4403
    assert_absent(token, gateway.log())


async def test_the_websockets_implementation_at_debug_logs_no_token(
    debug_gateway: GatewayProc,
) -> None:
    """With WS_IMPLEMENTATION=websockets and LOG_LEVEL=DEBUG, whose lines carry the request
    line, every header and every frame, no token shows: in the query, in an Authorization
    header or in an auth frame."""
    assert debug_gateway.minter is not None
    in_query, in_header = user(), user()
    query_token = debug_gateway.minter(in_query)
    header_token = debug_gateway.minter(in_header)
    await accepted(f"{debug_gateway.bare_ws(in_query)}?%74oken={query_token}")
    await accepted(debug_gateway.bare_ws(in_header), Authorization=f"Bearer {header_token}")
    # A refreshed token comes in an auth frame, whose start and end the debug lines show.
    client = await Client.open(debug_gateway.ws(in_query))
    await client.ws.send(json.dumps({"type": "auth", "token": query_token}))
    assert (await client.next())["type"] == "auth_ok"
    await client.close()
    log = debug_gateway.log()
    # The debug lines were written, redacted.
    assert f"/ws/connect/{in_query}?[redacted]" in log
    assert "authorization: [redacted]" in log.lower()
    assert '"token": "[redacted]"' in log
    assert_absent(query_token, log)
    assert_absent(header_token, log)
