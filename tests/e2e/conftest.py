from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import GatewayProc, TokenMinter, start_gateway


@pytest.fixture(scope="module")
def gateway(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    """A gateway process with PING_INTERVAL=0.2 against the session's Firestore and Auth
    emulators; ``gateway.ws(user)`` carries a real ID token for that user."""
    proc = start_gateway(firestore_host, project_id, minter, WS_MAX_MESSAGE_BYTES="4096")
    yield proc
    proc.stop()
