from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import GatewayProc, start_gateway


@pytest.fixture(scope="module")
def gateway(firestore_host: str, project_id: str) -> Iterator[GatewayProc]:
    """A gateway process with PING_INTERVAL=0.2 against the session's Firestore emulator."""
    proc = start_gateway(firestore_host, project_id, WS_MAX_MESSAGE_BYTES="4096")
    yield proc
    proc.stop()
