"""The gateway image as Cloud Run runs it: only Cloud Run's variables plus documented ones.

The container shares the host's network (so it reaches the session's Firestore emulator at
the address the tests use); it must answer its health check, log JSON as on Cloud Run, and on
SIGTERM (``docker stop``, a Cloud Run scale-in) close its sockets with 1012, mark the instance
stopped in Firestore and exit 0.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
import pytest

from emulator import procs
from gateway.storage.schema import INSTANCES, STOPPED_AT
from tests.support import UNIT, Client, eventually

pytestmark = pytest.mark.e2e

IMAGE = "presence/gateway:local"


def health(container: Any) -> str:
    container.reload()
    return str(container.attrs["State"].get("Health", {}).get("Status", "none"))


async def test_the_image_serves_reports_healthy_and_drains_on_sigterm(
    firestore_host: str, project_id: str, firestore_client: Any
) -> None:
    import docker

    port = procs.free_port()
    instance = f"cloud-run-{secrets.token_hex(3)}"
    admin = secrets.token_urlsafe(24)
    client = docker.from_env()
    container = client.containers.run(
        IMAGE,
        detach=True,
        network_mode="host",
        environment={
            # What Cloud Run sets ...
            "PORT": str(port),
            "K_SERVICE": "presence-gateway",
            "K_REVISION": "presence-gateway-00001-abc",
            "K_CONFIGURATION": "presence-gateway",
            # ... and documented settings (AUTH_MODE=off: the emulators only).
            "GOOGLE_CLOUD_PROJECT": project_id,
            "GATEWAY_ADMIN_TOKEN": admin,
            "GATEWAY_INSTANCE_ID": instance,
            "FIRESTORE_EMULATOR_HOST": firestore_host,
            "AUTH_MODE": "off",
        },
    )
    try:
        deadline = time.monotonic() + 60 * UNIT
        while not procs.probe(f"http://127.0.0.1:{port}/healthz"):
            assert time.monotonic() < deadline, container.logs().decode()[-2000:]
            await asyncio.sleep(0.2)

        async def healthy() -> bool:
            return health(container) == "healthy"

        await eventually(healthy, timeout=60)
        socket = await Client.open(f"ws://127.0.0.1:{port}/ws/connect/image-user")

        async def counted() -> bool:
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {admin}"}) as http:
                stats = await http.get(f"http://127.0.0.1:{port}/ws/stats")
            return bool(stats.json()["connected_users"] == ["image-user"])

        await eventually(counted)
        await asyncio.to_thread(container.stop, timeout=30)
        assert await socket.closed() == 1012
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0
        lines = [json.loads(line) for line in container.logs().decode().splitlines() if line]
        assert any(f"gateway instance {instance} stopped" in e["message"] for e in lines)
        assert all({"severity", "message", "time"} <= set(e) for e in lines)
        stopped = firestore_client.collection(INSTANCES).document(instance).get()
        assert stopped.get(STOPPED_AT) is not None
    finally:
        container.remove(force=True)
        client.close()
