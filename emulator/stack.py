"""``python -m emulator up``: the whole local stack in one command.

Starts the Firestore and Pub/Sub emulators (gcloud's) and the Firebase Auth emulator (pinned
firebase-tools) on the ports in firebase.json, then the gateway against them, the sweep function
under functions-framework and a local scheduler that POSTs to it every ``SWEEP_INTERVAL`` with
Cloud Scheduler's headers. It prints where everything is and
the environment a developer needs, and stops every child on Ctrl-C or SIGTERM (or when one of
them dies, saying which).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from emulator import compose, procs
from emulator.exceptions import EmulatorError, StartupError

HOST = "127.0.0.1"
DEFAULT_PROJECT = "demo-presence"
DEFAULT_TOPIC = "gateway-fanout"
RUN_DIR = procs.ROOT / ".run"
ENV_FILE = RUN_DIR / "stack.env"
#: The demo page's build (`make demo`; `make up` builds it first).
DEMO_DIR = procs.ROOT / "clients" / "js" / "dist" / "demo"


def firestore_process(host: str, port: int, log_dir: Path) -> procs.Process:
    """The stack's Firestore emulator, enforcing the rules firebase.json names, as production
    does: without them every local client could read and write everything, and a client that
    works here could fail in production. The gateway and the sweep are admins and pass."""
    return procs.firestore_process(host, port, log_dir, rules=procs.firestore_rules())


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def stack_env(env: Mapping[str, str], ports: Mapping[str, int]) -> dict[str, str]:
    """The environment the stack's children share; unset knobs get their local defaults."""
    return {
        "GOOGLE_CLOUD_PROJECT": env.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT,
        "GATEWAY_ADMIN_TOKEN": env.get("GATEWAY_ADMIN_TOKEN") or secrets.token_urlsafe(24),
        "GATEWAY_CALLBACK_TOKEN": env.get("GATEWAY_CALLBACK_TOKEN") or secrets.token_urlsafe(24),
        "GATEWAY_PORT": env.get("GATEWAY_PORT") or "8000",
        "PING_INTERVAL": env.get("PING_INTERVAL") or "30",
        "PONG_TIMEOUT": env.get("PONG_TIMEOUT") or "10800",
        "SWEEP_INTERVAL": env.get("SWEEP_INTERVAL") or "60",
        "FIRESTORE_EMULATOR_HOST": f"{HOST}:{ports['firestore']}",
        "FIREBASE_AUTH_EMULATOR_HOST": f"{HOST}:{ports['auth']}",
        "PUBSUB_EMULATOR_HOST": f"{HOST}:{ports['pubsub']}",
        "PUBSUB_TOPIC": env.get("PUBSUB_TOPIC") or DEFAULT_TOPIC,
    }


def check_settings(environ: Mapping[str, str], env: Mapping[str, str]) -> str | None:
    """The first configuration error of the gateway's or the sweep function's settings, as
    each would see its environment in the stack; None when both are valid."""
    from gateway.exceptions import ConfigError
    from gateway.settings import Settings

    seen = {**environ, **env}
    try:
        Settings.from_env({**seen, "GATEWAY_HOST": HOST})
    except ConfigError as exc:
        return f"gateway: {exc}"
    functions = str(procs.ROOT / "functions")
    if functions not in sys.path:
        sys.path.insert(0, functions)
    from presence_sweep.exceptions import SweepConfigError
    from presence_sweep.settings import SweepSettings

    try:
        SweepSettings.from_env({**seen, "GATEWAY_URL": f"http://{HOST}:{env['GATEWAY_PORT']}"})
    except SweepConfigError as exc:
        return f"sweep function: {exc}"
    return None


def write_env_file(env: Mapping[str, str]) -> None:
    """The stack's environment for a developer's shell (`source .run/stack.env`)."""
    ENV_FILE.parent.mkdir(parents=True, exist_ok=True)
    ENV_FILE.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))


def banner(env: Mapping[str, str], logs: str, function_url: str, *, demo: bool = True) -> str:
    gw = f"{HOST}:{env['GATEWAY_PORT']}"
    exports = "\n".join(f"  export {k}={v}" for k, v in env.items())
    demo_line = (
        f"  demo page        http://{gw}/demo   (sign in, watch pings, stop answering them)\n"
        f"  console          http://{gw}/console   (sign in with the admin token below)\n"
        if demo
        else ""
    )
    return f"""
Local stack is up (project {env["GOOGLE_CLOUD_PROJECT"]}):
  gateway          http://{gw}   (WebSocket ws://{gw}/ws/connect/USER_ID)
  OpenAPI          http://{gw}/schema
{demo_line}  JS client        http://{gw}/client.js
  Firestore        http://{env["FIRESTORE_EMULATOR_HOST"]}
  Auth emulator    http://{env["FIREBASE_AUTH_EMULATOR_HOST"]}
  Pub/Sub emulator {env["PUBSUB_EMULATOR_HOST"]}   (fan-out topic {env["PUBSUB_TOPIC"]})
  sweep function   {function_url}   (POSTed every {env["SWEEP_INTERVAL"]}s by the local scheduler)
  logs             {logs}
Intervals: ping {env["PING_INTERVAL"]}s, pong timeout {env["PONG_TIMEOUT"]}s, \
sweep {env["SWEEP_INTERVAL"]}s

Environment for your shell (also written to {ENV_FILE}):
{exports}

Try:
  curl -H "Authorization: Bearer {env["GATEWAY_ADMIN_TOKEN"]}" http://{gw}/ws/stats
  TOKEN=$(make -s token USER=user123)
  .venv/bin/python -m websockets "ws://{gw}/ws/connect/user123?token=$TOKEN"

Ctrl-C stops everything.
"""


def up(environ: Mapping[str, str] | None = None, *, in_containers: bool = False) -> int:
    environ = os.environ if environ is None else environ
    ports = procs.firebase_ports()
    env = stack_env(environ, ports)
    # Every component's settings before anything starts: a bad value is named at once, not
    # after the emulators' start-up, and never as a traceback.
    problem = check_settings(environ, env)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    gateway_port = int(env["GATEWAY_PORT"])
    if in_containers:
        write_env_file(env)
        text = banner(
            env,
            "docker-compose -p presence -f emulator/compose.yaml logs",
            f"http://{HOST}:{ports['functions']}/",
            demo=False,
        )
        try:
            return compose.up(env, {**ports, "gateway": gateway_port}, text)
        finally:
            ENV_FILE.unlink(missing_ok=True)
    for name, port in (
        ("firestore", ports["firestore"]),
        ("auth", ports["auth"]),
        ("pubsub", ports["pubsub"]),
        ("gateway", gateway_port),
    ):
        if port_in_use(HOST, port):
            print(
                f"error: port {port} for {name} is already in use "
                "(is another stack running? stop it or change firebase.json/GATEWAY_PORT)",
                file=sys.stderr,
            )
            return 1
    log_dir = RUN_DIR / "logs"
    children: list[procs.Process] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        # Interrupt whatever is running (a readiness wait included); `finally` stops children.
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        firestore = firestore_process(HOST, ports["firestore"], log_dir)
        auth = procs.auth_process(HOST, ports["auth"], env["GOOGLE_CLOUD_PROJECT"], log_dir)
        pubsub = procs.pubsub_process(HOST, ports["pubsub"], log_dir)
        for child in (firestore, auth, pubsub):
            print(f"starting {child.name} ... (log: {child.log_path})", file=sys.stderr)
            child.start()
            children.append(child)
        firestore.wait_ready(90)
        auth.wait_ready(120)
        pubsub.wait_ready(60)
        gateway_env = {
            **env,
            "GATEWAY_HOST": HOST,
            "DEMO_DIR": str(DEMO_DIR),
            # The operator console at /console (docs/console.md); CONSOLE_ENABLED=0 turns it off.
            "CONSOLE_ENABLED": environ.get("CONSOLE_ENABLED") or "1",
        }
        gateway = procs.gateway_process(gateway_env, HOST, gateway_port, log_dir)
        print(f"starting gateway ... (log: {gateway.log_path})", file=sys.stderr)
        gateway.start()
        children.append(gateway)
        gateway.wait_ready(60)
        function_url = f"http://{HOST}:{ports['functions']}/"
        # The sweep calls the gateway's service URL, as on Cloud Run: any instance answers.
        function_env = {**env, "GATEWAY_URL": f"http://{HOST}:{gateway_port}"}
        function = procs.function_process(function_env, HOST, ports["functions"], log_dir)
        print(f"starting sweep function ... (log: {function.log_path})", file=sys.stderr)
        function.start()
        children.append(function)
        function.wait_ready(60)
        scheduler = procs.scheduler_process(function_url, float(env["SWEEP_INTERVAL"]), log_dir)
        scheduler.start()
        children.append(scheduler)
        write_env_file(env)
        print(banner(env, f"{log_dir}/", function_url), flush=True)
        parent = os.getppid()
        while True:
            if os.getppid() != parent:
                # Whoever started us (make, a terminal) is gone: do not leave emulators behind.
                print("parent process exited", file=sys.stderr)
                return 1
            for child in children:
                if child.popen is not None and child.popen.poll() is not None:
                    raise StartupError(
                        f"{child.name} exited with code {child.popen.returncode}; "
                        f"see {child.log_path}:\n{child.log_tail()}"
                    )
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping ...", file=sys.stderr)
        return 0
    except EmulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        # Its tokens and addresses describe this stack only: once it is down, `make token`
        # must not read them (it says to run make up instead).
        ENV_FILE.unlink(missing_ok=True)
        print("stopped: " + ", ".join(c.name for c in children), file=sys.stderr)
