"""The local stack in containers: ``python -m emulator up --containers`` (``make up-containers``).

Runs ``emulator/compose.yaml`` with docker-compose against the engine that
``scripts/containers.sh engine-start`` starts, with the same knobs and host ports as the
process stack (``emulator.stack``), waits until every service answers, prints the same banner,
and takes the stack down on Ctrl-C or SIGTERM. The tests (tests/containers) use the same
``compose_up`` and ``compose_down``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from emulator import procs
from emulator.exceptions import StartupError, ToolMissingError

COMPOSE_FILE = Path(__file__).resolve().parent / "compose.yaml"
#: The engine scripts/containers.sh starts (its own socket and data root).
DEFAULT_DOCKER_HOST = "unix:///run/presence-docker.sock"
SERVICES = ("firestore", "auth", "pubsub", "gateway", "function", "scheduler")
#: How long docker-compose waits for one answer from the engine (its own default is 60 s). On a
#: loaded 2-core machine, removing a stopped container has taken longer than 60 s, and compose
#: then reported a failed teardown for one the engine went on to finish.
COMPOSE_HTTP_TIMEOUT = "300"
#: ``down`` is idempotent, so a teardown the engine was slow to answer is simply asked again.
DOWN_ATTEMPTS = 3


def compose_command() -> list[str]:
    """docker-compose (Debian's, v1) or the docker CLI's compose plugin, whichever exists."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    raise ToolMissingError(
        "docker-compose is not installed: `apt-get install docker-compose` "
        "(scripts/containers.sh engine-start installs it)"
    )


def compose_env(env: Mapping[str, str], ports: Mapping[str, int]) -> dict[str, str]:
    """What compose.yaml reads: the stack's knobs plus each service's host port."""
    return {
        **os.environ,
        "DOCKER_HOST": os.environ.get("DOCKER_HOST", DEFAULT_DOCKER_HOST),
        "COMPOSE_HTTP_TIMEOUT": os.environ.get("COMPOSE_HTTP_TIMEOUT", COMPOSE_HTTP_TIMEOUT),
        **env,
        "FIRESTORE_PORT": str(ports["firestore"]),
        "AUTH_PORT": str(ports["auth"]),
        "PUBSUB_PORT": str(ports["pubsub"]),
        "FUNCTIONS_PORT": str(ports["functions"]),
        "GATEWAY_PORT": str(ports["gateway"]),
    }


def compose_argv(project: str, *args: str) -> list[str]:
    """docker-compose on this project's compose file, as project ``project``."""
    return [*compose_command(), "-f", str(COMPOSE_FILE), "-p", project, *args]


def compose(project: str, environment: Mapping[str, str], *args: str) -> None:
    command = compose_argv(project, *args)
    result = subprocess.run(command, env=dict(environment), capture_output=True, text=True)
    if result.returncode != 0:
        raise StartupError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def compose_up(project: str, environment: Mapping[str, str], timeout: float = 120) -> None:
    """Start the stack and wait until the emulators, the gateway and the function answer."""
    compose(project, environment, "up", "-d", "--no-build")
    checks = {
        "firestore": f"http://127.0.0.1:{environment['FIRESTORE_PORT']}/",
        "auth": f"http://127.0.0.1:{environment['AUTH_PORT']}/",
        "pubsub": f"http://127.0.0.1:{environment['PUBSUB_PORT']}/",
        "gateway": f"http://127.0.0.1:{environment['GATEWAY_PORT']}/healthz",
        "function": f"tcp://127.0.0.1:{environment['FUNCTIONS_PORT']}",
    }
    deadline = time.monotonic() + timeout
    waiting = dict(checks)
    while waiting:
        waiting = {name: url for name, url in waiting.items() if not procs.probe(url)}
        if not waiting:
            return
        if time.monotonic() > deadline:
            logs = compose_logs(project, environment)
            raise StartupError(
                f"not ready after {timeout:.0f}s: {', '.join(sorted(waiting))}\n{logs[-4000:]}"
            )
        time.sleep(0.5)


def compose_logs(project: str, environment: Mapping[str, str]) -> str:
    command = compose_argv(project, "logs", "--no-color")
    result = subprocess.run(command, env=dict(environment), capture_output=True, text=True)
    return result.stdout + result.stderr


def running_services(project: str, environment: Mapping[str, str]) -> set[str]:
    command = compose_argv(project, "ps", "--services", "--filter", "status=running")
    result = subprocess.run(command, env=dict(environment), capture_output=True, text=True)
    return set(result.stdout.split())


def compose_down(project: str, environment: Mapping[str, str]) -> None:
    """Remove the project's containers, network and volumes, asking again if the engine was slow."""
    for attempt in range(1, DOWN_ATTEMPTS + 1):
        try:
            compose(project, environment, "down", "--volumes", "--timeout", "15")
            return
        except StartupError:
            if attempt == DOWN_ATTEMPTS:
                raise
            time.sleep(2)


def up(env: Mapping[str, str], ports: Mapping[str, int], banner: str) -> int:
    """Run the stack until Ctrl-C; ``banner`` is printed once it is ready."""
    environment = compose_env(env, ports)
    project = "presence"

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        print(f"starting {', '.join(SERVICES)} with docker-compose ...", file=sys.stderr)
        compose_up(project, environment)
        print(banner, flush=True)
        while True:
            time.sleep(2)
            stopped = set(SERVICES) - running_services(project, environment)
            if stopped:
                logs = compose_logs(project, environment)
                raise StartupError(f"{', '.join(sorted(stopped))} stopped:\n{logs[-4000:]}")
    except KeyboardInterrupt:
        print("stopping ...", file=sys.stderr)
        return 0
    except (StartupError, ToolMissingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        try:
            compose_down(project, environment)
        except (StartupError, ToolMissingError) as exc:
            print(f"error: {exc}", file=sys.stderr)
        print("stopped the containers", file=sys.stderr)
