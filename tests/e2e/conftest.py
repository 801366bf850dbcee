from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.support import GatewayProc, SweepStack, TokenMinter, start_gateway, start_short_sweep


@pytest.fixture(scope="module")
def gateway(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    """A gateway process with PING_INTERVAL=0.2 against the session's Firestore and Auth
    emulators; ``gateway.ws(user)`` carries a real ID token for that user."""
    proc = start_gateway(firestore_host, project_id, minter, WS_MAX_MESSAGE_BYTES="4096")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def callback_token() -> str:
    """The module's shared callback token (the sweep's and the instances' credential)."""
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def sweeper(
    request: pytest.FixtureRequest,
    firestore_host: str,
    auth_host: str,
    project_id: str,
    callback_token: str,
) -> Iterator[SweepStack]:
    """The sweep function and its scheduler, with the requesting module's ``SHORT`` intervals
    (the same PONG_TIMEOUT and SWEEP_INTERVAL as its gateways)."""
    stack = start_short_sweep(
        firestore_host, auth_host, project_id, callback_token, request.module.SHORT
    )
    yield stack
    stack.stop()
