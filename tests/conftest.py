"""Session fixtures: the Firestore emulator (container or local process) and its clients."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from emulator import procs
from tests.support import LOG_DIR, UNIT

FIRESTORE_IMAGE = os.environ.get("FIRESTORE_EMULATOR_IMAGE", "presence/firestore-emulator:local")
_how_started: list[str] = []


def _docker_image_available(image: str) -> bool:
    """A reachable Docker engine that already has the emulator image (no registry here)."""
    if not shutil.which("docker"):
        return False
    try:
        result = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.fixture(scope="session")
def firestore_host() -> Iterator[str]:
    """host:port of a Firestore emulator for the whole session.

    Through testcontainers when a Docker engine is reachable and has the emulator image
    (``make emulator-image`` builds it), otherwise as a local process; the choice is printed
    in pytest's summary.
    """
    if os.environ.get("FIRESTORE_EMULATOR_HOST_FOR_TESTS"):
        _how_started.append("an already running emulator (FIRESTORE_EMULATOR_HOST_FOR_TESTS)")
        yield os.environ["FIRESTORE_EMULATOR_HOST_FOR_TESTS"]
        return
    if _docker_image_available(FIRESTORE_IMAGE):
        yield from _firestore_container()
        return
    port = procs.free_port()
    process = procs.firestore_process("127.0.0.1", port, LOG_DIR)
    process.log_path = LOG_DIR / f"firestore-{port}.log"
    _how_started.append(
        f"a local process ({process.argv[0]}) on 127.0.0.1:{port}: no Docker engine with "
        f"image {FIRESTORE_IMAGE} is reachable"
    )
    process.start()
    try:
        process.wait_ready(60 * UNIT)
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


def _firestore_container() -> Iterator[str]:
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = (
        DockerContainer(FIRESTORE_IMAGE)
        .with_command("/opt/firestore/cloud_firestore_emulator start --host=0.0.0.0 --port=8080")
        .with_exposed_ports(8080)
    )
    with container:
        wait_for_logs(container, "Dev App Server is now running", timeout=60 * UNIT)
        host = f"{container.get_container_host_ip()}:{container.get_exposed_port(8080)}"
        _how_started.append(f"a testcontainers container from {FIRESTORE_IMAGE} at {host}")
        yield host


@pytest.fixture(scope="session")
def project_id() -> str:
    # A fresh demo- project per session: the emulator keeps data per project.
    return f"demo-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def firestore_client(firestore_host: str, project_id: str) -> Iterator[Any]:
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    from google.cloud import firestore

    client = firestore.Client(project=project_id)
    yield client
    client.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _how_started:
        terminalreporter.write_line(f"Firestore emulator: {line}")


@pytest.fixture(scope="session")
def auth_host(project_id: str) -> Iterator[str]:
    """host:port of a Firebase Auth emulator (pinned firebase-tools) for the session."""
    port = procs.free_port()
    process = procs.auth_process("127.0.0.1", port, project_id, LOG_DIR)
    process.log_path = LOG_DIR / f"auth-{port}.log"
    process.start()
    try:
        process.wait_ready(120 * UNIT)
        os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = f"127.0.0.1:{port}"
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


class PubSubEmulator:
    """gcloud's Pub/Sub emulator as a local process, which tests may stop and start again on
    the same port (it then starts empty, as after a real restart)."""

    def __init__(self) -> None:
        self.port = procs.free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.process: procs.Process | None = None

    def start(self) -> None:
        process = procs.pubsub_process("127.0.0.1", self.port, LOG_DIR)
        process.log_path = LOG_DIR / f"pubsub-{self.port}.log"
        process.start()
        process.wait_ready(60 * UNIT)
        self.process = process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture(scope="session")
def pubsub() -> Iterator[PubSubEmulator]:
    """The Pub/Sub emulator for the session; ``PUBSUB_EMULATOR_HOST`` is set for this process
    (the gateways under test get it in their environment)."""
    emulator = PubSubEmulator()
    emulator.start()
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def firebase_app(auth_host: str, project_id: str) -> Iterator[Any]:
    import firebase_admin

    app = firebase_admin.initialize_app(
        options={"projectId": project_id}, name=f"tests-{project_id}"
    )
    yield app
    firebase_admin.delete_app(app)


@pytest.fixture(scope="session")
def minter(auth_host: str, firebase_app: Any) -> Any:
    """Mints real ID tokens for any uid from the session's Auth emulator."""
    from tests.support import TokenMinter

    return TokenMinter(auth_host, firebase_app)
