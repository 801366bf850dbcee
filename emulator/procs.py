"""Start, probe and stop the local stack's processes.

Each child runs in its own process group so that stopping it also stops what it spawned (the
Firestore launcher script execs Java; ``npx firebase`` spawns node). Output goes to a log file
per process, named in every error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from emulator.exceptions import EmulatorError, StartupError, ToolMissingError
from emulator.npm import (
    EMULATOR_DIR,
    FIRESTORE_FALLBACK_PACKAGE,
    ensure_firebase_tools,
    ensure_firestore_fallback,
)

ROOT = Path(__file__).resolve().parent.parent
FIRESTORE_LAUNCHERS = (
    Path("/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator"),
    Path("/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator"),
)
PUBSUB_LAUNCHERS = (
    Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"),
    Path("/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"),
)
#: "gcloud", "node" or unset (auto): which Firestore emulator ``firestore_process`` starts.
FIRESTORE_IMPL_ENV = "FIRESTORE_EMULATOR_IMPL"
FIRESTORE_FALLBACK_SCRIPT = EMULATOR_DIR / "firestore_fallback.mjs"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def firestore_rules(path: Path = ROOT / "firebase.json") -> Path:
    """The Firestore rules file firebase.json names: the one `firebase deploy` puts in force in
    production, and so the one the local stack's emulator enforces."""
    rules: str = json.loads(path.read_text())["firestore"]["rules"]
    return path.parent / rules


def firebase_ports(path: Path = ROOT / "firebase.json") -> dict[str, int]:
    """Emulator ports declared in firebase.json, by emulator name."""
    emulators = json.loads(path.read_text())["emulators"]
    return {
        name: int(spec["port"])
        for name, spec in emulators.items()
        if isinstance(spec, dict) and "port" in spec
    }


@dataclass
class Process:
    name: str
    argv: list[str]
    ready_url: str
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    popen: subprocess.Popen[bytes] | None = None
    #: Where this run's lines start in the log, which earlier runs appended to.
    log_offset: int = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.log_offset = log.seek(0, os.SEEK_END)
        self.popen = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float) -> None:
        if not self.ready_url:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise StartupError(
                    f"{self.name} exited with code {self.popen.returncode}; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            if probe(self.ready_url):
                return
            time.sleep(0.2)
        raise StartupError(
            f"{self.name} not ready at {self.ready_url} after {timeout:.0f}s; "
            f"see {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        """The last lines this run wrote to the log (not an earlier run's)."""
        return tail(self.log_path, lines, self.log_offset)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        except ProcessLookupError:
            pass
        # Children that outlived their leader (Java under the launcher script) go too.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def probe(url: str) -> bool:
    """True when the URL answers (any status below 500), or for tcp://host:port, accepts."""
    if url.startswith("tcp://"):
        host, _, port = url[len("tcp://") :].rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return True
        except OSError:
            return False
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(200 <= response.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def tail(path: Path, lines: int = 20, start: int = 0) -> str:
    """The last ``lines`` of the file from byte ``start`` on."""
    try:
        with path.open("rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(nothing logged)"
    except OSError:
        return "(no log)"


def firestore_process(host: str, port: int, log_dir: Path, rules: Path | None = None) -> Process:
    """The Firestore emulator: gcloud's official one, or the Node fallback without the SDK.

    ``FIRESTORE_EMULATOR_IMPL`` chooses: ``gcloud`` (the official emulator, its launcher script
    directly or through ``gcloud``; an error when absent), ``node`` (the
    ``@firestore-emulator/server`` fallback) or unset/``auto`` (gcloud's when installed, else
    the fallback, with a line on stderr saying so).

    ``rules``: a security rules file gcloud's emulator enforces for every project (admin
    requests, the server client libraries' included, pass whatever they say). Without it the
    emulator lets every client read and write everything. The fallback enforces none.
    """
    impl = os.environ.get(FIRESTORE_IMPL_ENV, "").strip().lower() or "auto"
    if impl not in ("auto", "gcloud", "node"):
        raise EmulatorError(
            f"{FIRESTORE_IMPL_ENV}={os.environ[FIRESTORE_IMPL_ENV]!r}: "
            "expected 'gcloud', 'node' or unset (auto)"
        )
    log_path = log_dir / "firestore.log"
    if impl != "node":
        launcher = next((p for p in FIRESTORE_LAUNCHERS if p.exists()), None)
        # Relative to the process's working directory (the repository): the launcher script
        # passes its arguments on unquoted ($*), so a space in the checkout's path would split
        # an absolute one.
        with_rules = [f"--rules={rules.relative_to(ROOT)}"] if rules is not None else []
        if launcher is not None:
            argv = [str(launcher), "start", f"--host={host}", f"--port={port}", *with_rules]
            return Process("firestore", argv, f"http://{host}:{port}/", log_path)
        if shutil.which("gcloud"):
            argv = [
                "gcloud",
                "emulators",
                "firestore",
                "start",
                f"--host-port={host}:{port}",
                *with_rules,
            ]
            return Process("firestore", argv, f"http://{host}:{port}/", log_path)
        if impl == "gcloud":
            raise ToolMissingError(
                "the Firestore emulator is not installed: install the Google Cloud SDK with "
                "`apt-get install google-cloud-cli-firestore-emulator` (needs Java 17+)"
            )
        reason = "gcloud's Firestore emulator not found"
    else:
        reason = f"{FIRESTORE_IMPL_ENV}=node"
    node = ensure_firestore_fallback()
    print(
        f"Firestore emulator: {reason}; using the {FIRESTORE_FALLBACK_PACKAGE} fallback (MIT, "
        "an independent in-memory reimplementation, not Google's emulator). It does not "
        "enforce security rules or indexes, runs transactions optimistically (a conflicting "
        "commit is ABORTED and retried) rather than with locks, and rejects queries on "
        "null/NaN, document ids or nested fields and collection-group queries. For the "
        "official one: `apt-get install google-cloud-cli-firestore-emulator` (needs Java 17+)."
        + (
            f" {rules.name} is therefore not in force: any client may read and write anything."
            if rules is not None
            else ""
        ),
        file=sys.stderr,
    )
    argv = [node, str(FIRESTORE_FALLBACK_SCRIPT), "--host", host, "--port", str(port)]
    return Process("firestore", argv, f"http://{host}:{port}/", log_path)


def pubsub_process(host: str, port: int, log_dir: Path) -> Process:
    """gcloud's Pub/Sub emulator (the SDK's ``pubsub-emulator`` component), its launcher
    directly or through ``gcloud beta emulators pubsub start``. It keeps topics and
    subscriptions in memory: a restart starts empty, which the gateway copes with."""
    log_path = log_dir / "pubsub.log"
    launcher = next((p for p in PUBSUB_LAUNCHERS if p.exists()), None)
    if launcher is not None:
        argv = [str(launcher), f"--host={host}", f"--port={port}"]
    elif shutil.which("gcloud"):
        argv = ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port={host}:{port}"]
    else:
        raise ToolMissingError(
            "the Pub/Sub emulator is not installed: install the Google Cloud SDK's "
            "`google-cloud-cli-pubsub-emulator` (needs Java 17+)"
        )
    # The emulator answers plain HTTP on its gRPC port ("Ok" at /).
    return Process("pubsub", argv, f"http://{host}:{port}/", log_path)


def auth_process(host: str, port: int, project_id: str, log_dir: Path) -> Process:
    """The Firebase Auth emulator from the pinned firebase-tools."""
    binary = ensure_firebase_tools()
    config = log_dir / f"firebase-auth-{port}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    # A config of our own per run, so tests can use free ports without touching firebase.json.
    config.write_text(
        json.dumps(
            {
                "emulators": {
                    "auth": {"host": host, "port": port},
                    "ui": {"enabled": False},
                    "logging": {"host": host, "port": free_port(host)},
                    "hub": {"host": host, "port": free_port(host)},
                    "singleProjectMode": True,
                }
            }
        )
    )
    return Process(
        "auth",
        [
            str(binary),
            "emulators:start",
            "--only",
            "auth",
            "--project",
            project_id,
            "--config",
            str(config),
        ],
        f"http://{host}:{port}/",
        log_dir / "auth.log",
        env={"NO_UPDATE_NOTIFIER": "1", "FIREBASE_CLI_DISABLE_UPDATE_CHECK": "true"},
    )


def gateway_process(env: Mapping[str, str], host: str, port: int, log_dir: Path) -> Process:
    return Process(
        "gateway",
        [sys.executable, "-m", "gateway"],
        f"http://{host}:{port}/healthz",
        log_dir / "gateway.log",
        env=env,
    )


def function_process(env: Mapping[str, str], host: str, port: int, log_dir: Path) -> Process:
    """The sweep function served by functions-framework, as Cloud Functions would."""
    binary = Path(sys.executable).parent / "functions-framework"
    return Process(
        "sweep-function",
        [
            str(binary),
            "--target=sweep_expired_sessions",
            f"--source={ROOT / 'functions' / 'main.py'}",
            f"--host={host}",
            f"--port={port}",
        ],
        # Any request to functions-framework runs the function: probe the socket only.
        f"tcp://{host}:{port}",
        log_dir / "sweep-function.log",
        env=env,
    )


def scheduler_process(url: str, interval: float, log_dir: Path) -> Process:
    return Process(
        "scheduler",
        [sys.executable, "-m", "emulator.scheduler", url, f"{interval:g}"],
        "",
        log_dir / "scheduler.log",
    )
