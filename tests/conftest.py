"""Session fixtures: the emulators (local processes or containers) and their clients.

``EMULATORS=processes`` (the default) starts gcloud's Firestore and Pub/Sub emulators and the
pinned firebase-tools' Auth emulator as local processes; ``EMULATORS=containers`` starts the
same emulators from this project's images through testcontainers (``make test-containers``
builds them and starts a Docker engine). A run that asks for containers and cannot have them
fails, saying why: it never falls back to processes. pytest's summary says how each emulator
was started.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from emulator import procs
from tests import emulator_containers as containers
from tests.support import LOG_DIR, UNIT

MODES = ("processes", "containers")
_how_started: list[str] = []


def emulator_mode() -> str:
    mode = os.environ.get("EMULATORS", "processes").strip() or "processes"
    if mode not in MODES:
        raise pytest.UsageError(f"EMULATORS={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def pytest_report_header() -> str:
    return f"emulators: {emulator_mode()} (EMULATORS)"


@pytest.fixture(scope="session")
def firestore_host() -> Iterator[str]:
    """host:port of a Firestore emulator for the whole session."""
    if os.environ.get("FIRESTORE_EMULATOR_HOST_FOR_TESTS"):
        _how_started.append("Firestore: already running (FIRESTORE_EMULATOR_HOST_FOR_TESTS)")
        yield os.environ["FIRESTORE_EMULATOR_HOST_FOR_TESTS"]
        return
    if emulator_mode() == "containers":
        with containers.firestore() as (host, how):
            _how_started.append(f"Firestore: {how}")
            yield host
        return
    port = procs.free_port()
    process = procs.firestore_process("127.0.0.1", port, LOG_DIR)
    process.log_path = LOG_DIR / f"firestore-{port}.log"
    _how_started.append(f"Firestore: a local process ({process.argv[0]}) on 127.0.0.1:{port}")
    process.start()
    try:
        process.wait_ready(60 * UNIT)
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


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
    terminalreporter.write_line(f"emulators: {emulator_mode()} (EMULATORS)")
    for line in _how_started:
        terminalreporter.write_line(f"  {line}")


@pytest.fixture(scope="session")
def auth_host(project_id: str) -> Iterator[str]:
    """host:port of a Firebase Auth emulator (pinned firebase-tools) for the session."""
    if emulator_mode() == "containers":
        with containers.auth(project_id) as (host, how):
            _how_started.append(f"Auth: {how}")
            os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = host
            yield host
        return
    port = procs.free_port()
    process = procs.auth_process("127.0.0.1", port, project_id, LOG_DIR)
    process.log_path = LOG_DIR / f"auth-{port}.log"
    _how_started.append(f"Auth: a local process (firebase-tools) on 127.0.0.1:{port}")
    process.start()
    try:
        process.wait_ready(120 * UNIT)
        os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = f"127.0.0.1:{port}"
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


class PubSubEmulator:
    """gcloud's Pub/Sub emulator, which tests may stop and start again on the same port (it
    then starts empty, as after a real restart): a local process, or a container whose host
    port stays the same across restarts."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = procs.free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.process: procs.Process | None = None
        self.container: Any = None

    def start(self) -> None:
        if self.mode == "containers":
            self.container = containers.pubsub(self.port)
            return
        process = procs.pubsub_process("127.0.0.1", self.port, LOG_DIR)
        process.log_path = LOG_DIR / f"pubsub-{self.port}.log"
        process.start()
        process.wait_ready(60 * UNIT)
        self.process = process

    def stop(self) -> None:
        if self.container is not None:
            self.container.stop()
            self.container = None
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture(scope="session")
def pubsub() -> Iterator[PubSubEmulator]:
    """The Pub/Sub emulator for the session; ``PUBSUB_EMULATOR_HOST`` is set for this process
    (the gateways under test get it in their environment)."""
    emulator = PubSubEmulator(emulator_mode())
    emulator.start()
    how = (
        f"a container from {containers.PUBSUB_IMAGE} (testcontainers' PubSubContainer)"
        if emulator.mode == "containers"
        else "a local process (gcloud's pubsub-emulator)"
    )
    _how_started.append(f"Pub/Sub: {how} on {emulator.host}")
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
