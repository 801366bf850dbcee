"""The emulators as containers, through testcontainers (``EMULATORS=containers``).

The images are this project's own (``scripts/containers.sh images`` builds them from local
bases; nothing is pulled). Each helper fails with the reason when the engine or an image is
missing, so a run that asked for containers never silently gets processes.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.support import UNIT

# Ryuk, testcontainers' reaper, is itself an image pulled from a registry, which this machine
# cannot reach, so it could never start. Every fixture here stops its own containers, and
# `make test-containers` stops the whole engine after the run.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

FIRESTORE_IMAGE = os.environ.get("FIRESTORE_EMULATOR_IMAGE", "presence/firestore-emulator:local")
AUTH_IMAGE = os.environ.get("AUTH_EMULATOR_IMAGE", "presence/auth-emulator:local")
PUBSUB_IMAGE = os.environ.get("PUBSUB_EMULATOR_IMAGE", "presence/pubsub-emulator:local")


class ContainersUnavailable(RuntimeError):
    """EMULATORS=containers was asked for and cannot be had."""


def _require(image: str) -> None:
    """Fail with the reason unless a Docker engine answers and holds the image."""
    try:
        import docker
        from docker.errors import DockerException, ImageNotFound
    except ImportError as exc:  # pragma: no cover - testcontainers depends on docker
        raise ContainersUnavailable(f"the docker package is missing: {exc}") from exc
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "the default socket")
        raise ContainersUnavailable(
            f"EMULATORS=containers, but no Docker engine answers at {where} ({exc}); "
            "`make test-containers` starts one and builds the images"
        ) from exc
    try:
        client.images.get(image)
    except ImageNotFound as exc:
        raise ContainersUnavailable(
            f"EMULATORS=containers, but the image {image} is missing; "
            "build it with `scripts/containers.sh bases images`"
        ) from exc
    finally:
        client.close()


def _http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status < 500)
    except OSError:
        return False


def _wait_http(container: Any, url: str, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not _http_ready(url):
        container.reload()
        if container.status not in ("created", "running"):
            stdout, stderr = container.get_logs()
            raise ContainersUnavailable(
                f"{container.image} exited: {(stdout + stderr).decode(errors='replace')[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise ContainersUnavailable(f"{container.image} not ready at {url} after {timeout}s")
        time.sleep(0.2)


@contextmanager
def firestore() -> Iterator[tuple[str, str]]:
    """The Firestore emulator container; yields (host:port, how it was started)."""
    _require(FIRESTORE_IMAGE)
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(FIRESTORE_IMAGE).with_exposed_ports(8080)
    with container:
        host = f"127.0.0.1:{container.get_exposed_port(8080)}"
        _wait_http(container, f"http://{host}/", 90 * UNIT)
        yield host, f"a testcontainers container from {FIRESTORE_IMAGE} at {host}"


@contextmanager
def auth(project_id: str) -> Iterator[tuple[str, str]]:
    """The Firebase Auth emulator container for ``project_id``."""
    _require(AUTH_IMAGE)
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(AUTH_IMAGE)
        .with_exposed_ports(9099)
        .with_env("GOOGLE_CLOUD_PROJECT", project_id)
    )
    with container:
        host = f"127.0.0.1:{container.get_exposed_port(9099)}"
        _wait_http(container, f"http://{host}/", 120 * UNIT)
        yield host, f"a testcontainers container from {AUTH_IMAGE} at {host}"


class PubSub:
    """testcontainers' PubSubContainer on this project's image, bound to a fixed host port so
    that a test can stop it and start a new (empty) one at the same address."""

    def __init__(self, port: int) -> None:
        _require(PUBSUB_IMAGE)
        from testcontainers.community.google import PubSubContainer

        self.container = PubSubContainer(image=PUBSUB_IMAGE, port=8085).with_bind_ports(8085, port)
        # PubSubContainer runs `gcloud beta emulators pubsub start ...`; the image has the
        # emulator without gcloud, and its own command does the same.
        self.container.with_command(PUBSUB_COMMAND)
        self.container.start()
        _wait_http(self.container, f"http://127.0.0.1:{port}/", 60 * UNIT)

    def stop(self) -> None:
        self.container.stop()


#: The Pub/Sub emulator image's command (see emulator/containers/pubsub.Dockerfile).
PUBSUB_COMMAND = os.environ.get(
    "PUBSUB_EMULATOR_COMMAND", "/opt/pubsub/bin/cloud-pubsub-emulator --host=0.0.0.0 --port=8085"
)


def pubsub(port: int) -> PubSub:
    return PubSub(port)
