from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from emulator import procs
from tests.conftest import PubSubEmulator
from tests.support import (
    GatewayProc,
    SweepStack,
    TokenMinter,
    start_gateway,
    start_proxy,
    start_short_sweep,
)


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


@dataclass
class Cluster:
    """Three (or more) gateway instances on one Pub/Sub topic behind the round-robin proxy
    (tests/proxy.py), the deployment as its callers see it: one URL, any instance behind it."""

    instances: list[GatewayProc]
    proxy: procs.Process
    port: int
    topic: str
    admin_token: str
    #: What every instance was started with (for instances a test adds).
    env: dict[str, str]
    #: Mints the ID tokens the instances were started to verify (None: AUTH_MODE=off).
    minter: TokenMinter | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request on a fresh connection, so consecutive calls land on different
        instances."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30) as http:
            return await http.request(method, path, **kwargs)

    async def holding(self, user: str) -> list[GatewayProc]:
        """The instances holding a socket of the user, each asked directly."""
        found = []
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        for gateway in self.instances:
            async with httpx.AsyncClient(base_url=gateway.http, headers=headers) as http:
                stats = (await http.get("/ws/stats", params={"scope": "instance"})).json()
            if user in stats["connected_users"]:
                found.append(gateway)
        return found

    def stop(self) -> None:
        self.proxy.stop()
        for gateway in self.instances:
            gateway.stop()


ClusterT = TypeVar("ClusterT", bound=Cluster)


def start_cluster(
    firestore_host: str,
    project: str,
    minter: TokenMinter | None,
    pubsub: PubSubEmulator,
    name: str,
    count: int = 3,
    kind: type[ClusterT] = Cluster,  # type: ignore[assignment]
    **env: str,
) -> ClusterT:
    """``count`` gateways on a fresh topic named after ``name``, behind one proxy; as a
    ``kind`` of Cluster, for a module that adds its own helpers."""
    topic = f"{name}-{secrets.token_hex(4)}"
    admin_token = secrets.token_urlsafe(24)
    shared = {
        "GATEWAY_ADMIN_TOKEN": admin_token,
        "PUBSUB_EMULATOR_HOST": pubsub.host,
        "PUBSUB_TOPIC": topic,
        **env,
    }
    started = [start_gateway(firestore_host, project, minter, **shared) for _ in range(count)]
    proxy, port = start_proxy([g.port for g in started])
    return kind(started, proxy, port, topic, admin_token, shared, minter)
