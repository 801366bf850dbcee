"""Helpers shared by the tests: one time unit, polling with a deadline, gateway processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from emulator import procs
from gateway.component_settings import (
    AuthSettings,
    CallbackSettings,
    FanoutSettings,
    PresenceSettings,
    SocketSettings,
    WriterSettings,
)
from gateway.settings import Settings

T = TypeVar("T")

COMPONENTS = (
    SocketSettings,
    WriterSettings,
    AuthSettings,
    FanoutSettings,
    CallbackSettings,
    PresenceSettings,
)
COMPONENT_FIELDS = ("sockets", "writer", "auth", "fanout", "callback", "presence")

#: Every deadline in the suite is a multiple of this; raise TEST_TIME_FACTOR on a slow machine.
UNIT = float(os.environ.get("TEST_TIME_FACTOR", "1"))
LOG_DIR = procs.ROOT / ".run" / "tests"


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout * UNIT
    last: T | None = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout * UNIT:.1f}s: {last!r}")
        await asyncio.sleep(interval)


class TokenMinter:
    """Real Firebase ID tokens from the Auth emulator, as a client SDK would get them."""

    def __init__(self, auth_host: str, app: Any) -> None:
        self.auth_host = auth_host
        self.app = app
        self._cache: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        if uid not in self._cache:
            from firebase_admin import auth

            # signInWithCustomToken creates the account on first use, like a real sign-in.
            self._cache[uid] = id_token_for(
                self.auth_host, auth.create_custom_token(uid, app=self.app)
            )
        return self._cache[uid]


def unsigned_token(project: str, uid: str, **claims: Any) -> str:
    """An emulator-style (alg "none") ID token with chosen claims: expired, foreign, ..."""
    import base64

    now = int(time.time())
    payload = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "auth_time": now,
        "user_id": uid,
        "sub": uid,
        "iat": now,
        "exp": now + 3600,
        "firebase": {"identities": {}, "sign_in_provider": "custom"},
        **claims,
    }

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


@dataclass
class GatewayProc:
    """A gateway running as its own process (real uvicorn, real sockets)."""

    process: procs.Process
    port: int
    token: str
    env: dict[str, str]
    minter: TokenMinter | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, user_id: str, token: str | None = None) -> str:
        """The socket URL for a user, with a fresh ID token for that user unless given."""
        url = f"ws://127.0.0.1:{self.port}/ws/connect/{user_id}"
        if token is None and self.minter is not None:
            token = self.minter(user_id)
        return url if token is None else f"{url}?token={token}"

    def bare_ws(self, user_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/connect/{user_id}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.stop()


def start_gateway(
    firestore_host: str,
    project: str,
    minter: TokenMinter | None,
    *,
    command: list[str] | None = None,
    **overrides: str,
) -> GatewayProc:
    """A gateway process checking ID tokens against the minter's Auth emulator
    (``minter=None``: AUTH_MODE=off, which only the tests of auth-off behaviour want);
    ``command`` runs an application embedding it instead of ``python -m gateway``."""
    port = int(overrides.pop("GATEWAY_PORT", 0)) or procs.free_port()
    token = secrets.token_urlsafe(24)
    env = {
        "FIRESTORE_EMULATOR_HOST": firestore_host,
        "GOOGLE_CLOUD_PROJECT": project,
        "GATEWAY_ADMIN_TOKEN": token,
        "GATEWAY_PORT": str(port),
        "GATEWAY_INSTANCE_ID": f"test-{port}",
        "PING_INTERVAL": "0.2",
        "LOG_LEVEL": "INFO",
        **(
            {"FIREBASE_AUTH_EMULATOR_HOST": minter.auth_host, "AUTH_MODE": "firebase"}
            if minter
            else {"AUTH_MODE": "off"}
        ),
        **overrides,
    }
    log_path = LOG_DIR / f"gateway-{port}.log"
    process = procs.gateway_process(env, "127.0.0.1", port, LOG_DIR)
    process.log_path = log_path
    if command is not None:
        process.argv = command
    process.start()
    process.wait_ready(30 * UNIT)
    return GatewayProc(process, port, token, env, minter)


def loads(frame: str | bytes) -> dict[str, Any]:
    value = json.loads(frame)
    assert isinstance(value, dict)
    return value


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def id_token_for(auth_host: str, custom_token: bytes) -> str:
    """Exchange a custom token for an ID token at the Auth emulator (what a client SDK does)."""
    import urllib.request

    request = urllib.request.Request(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/accounts:signInWithCustomToken"
        "?key=fake-api-key",
        data=json.dumps({"token": custom_token.decode(), "returnSecureToken": True}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token: str = json.loads(response.read())["idToken"]
    return token


@dataclass
class SweepStack:
    """The sweep function under functions-framework plus the local scheduler ticking it."""

    function: procs.Process
    scheduler: procs.Process

    def stop(self) -> None:
        self.scheduler.stop()
        self.function.stop()

    def log(self) -> str:
        return log_text(self.function.log_path) + log_text(self.scheduler.log_path)


def start_short_sweep(
    firestore_host: str, auth_host: str, project: str, callback_token: str, short: dict[str, str]
) -> SweepStack:
    """The sweep function and its scheduler on the emulators, with the gateways' short
    PONG_TIMEOUT and SWEEP_INTERVAL (``short``) so stale instances are judged alike."""
    return start_sweep(
        {
            "FIRESTORE_EMULATOR_HOST": firestore_host,
            "FIREBASE_AUTH_EMULATOR_HOST": auth_host,
            "GOOGLE_CLOUD_PROJECT": project,
            "GATEWAY_CALLBACK_TOKEN": callback_token,
            "PONG_TIMEOUT": short["PONG_TIMEOUT"],
            "SWEEP_INTERVAL": short["SWEEP_INTERVAL"],
        },
        interval=float(short["SWEEP_INTERVAL"]),
    )


def start_sweep(env: dict[str, str], interval: float) -> SweepStack:
    port = procs.free_port()
    function = procs.function_process(env, "127.0.0.1", port, LOG_DIR)
    function.log_path = LOG_DIR / f"sweep-function-{port}.log"
    function.start()
    function.wait_ready(60 * UNIT)
    scheduler = procs.scheduler_process(f"http://127.0.0.1:{port}/", interval, LOG_DIR)
    scheduler.log_path = LOG_DIR / f"scheduler-{port}.log"
    scheduler.start()
    return SweepStack(function, scheduler)


def start_proxy(backends: list[int]) -> tuple[procs.Process, int]:
    """The round-robin proxy (tests/proxy.py) in front of these gateway ports; its port."""
    import sys

    port = procs.free_port()
    process = procs.Process(
        "proxy",
        [sys.executable, "-m", "tests.proxy", str(port), *map(str, backends)],
        f"tcp://127.0.0.1:{port}",
        LOG_DIR / f"proxy-{port}.log",
    )
    process.start()
    process.wait_ready(30 * UNIT)
    return process, port


class Client:
    """A test client on one socket: answers pings with pongs (unless ``silent``) and queues
    every other frame; records the close code when the server closes."""

    def __init__(self, ws: Any, *, silent: bool = False) -> None:
        self.ws = ws
        self.silent = silent
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pings = 0
        self.close_code: int | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, *, silent: bool = False) -> Client:
        from websockets.asyncio.client import connect

        return cls(await connect(url), silent=silent)

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.ws:
                frame = loads(raw)
                if frame.get("type") == "ping":
                    self.pings += 1
                    if not self.silent:
                        with contextlib.suppress(ConnectionClosed):
                            # The server may have sent its last frames and closed since this
                            # ping: the pong is refused, but those frames are still to be read.
                            await self.ws.send(json.dumps({"type": "pong"}))
                else:
                    self.frames.put_nowait(frame)
        except ConnectionClosed:
            pass
        # 1006 when the connection dropped without a close frame.
        self.close_code = self.ws.close_code

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame other than a ping."""
        async with asyncio.timeout(timeout * UNIT):
            return await self.frames.get()

    async def closed(self, timeout: float = 10.0) -> int:
        """Wait for the server to close the socket; return its close code."""
        async with asyncio.timeout(timeout * UNIT):
            await asyncio.shield(self._reader)
        assert self.close_code is not None
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


def unit_settings(**overrides: Any) -> Settings:
    """Settings for in-process tests: each keyword is a field of ``Settings`` or of one of its
    components (``ping_interval=0.1`` lands in ``settings.sockets``)."""
    top = {spec.name for spec in fields(Settings)}
    parts: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {"admin_tokens": ("a" * 20,), "project_id": "demo-unit"}
    for name, value in overrides.items():
        if name in top:
            direct[name] = value
            continue
        for component in COMPONENTS:
            if name in {spec.name for spec in fields(component)}:
                parts.setdefault(component.__name__, {})[name] = value
                break
        else:
            raise TypeError(f"no setting named {name!r}")
    return Settings(
        **direct,
        **{
            field_name: component(**parts.get(component.__name__, {}))
            for field_name, component in zip(COMPONENT_FIELDS, COMPONENTS, strict=True)
        },
    )


def pubsub_rest(host: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One call of the Pub/Sub emulator's REST API (``path`` after ``/v1/``)."""
    request = urllib.request.Request(
        f"http://{host}/v1/{path}",
        data=json.dumps(body or {}).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


def pull_all(host: str, subscription: str, quiet: float = 2.0) -> list[dict[str, Any]]:
    """Every message on the subscription, acknowledged: pulls until none came for ``quiet``
    seconds."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + quiet
    while time.monotonic() < deadline:
        answer = pubsub_rest(
            host, "POST", f"{subscription}:pull", {"maxMessages": 100, "returnImmediately": True}
        )
        received = answer.get("receivedMessages", [])
        if not received:
            time.sleep(0.2)
            continue
        got.extend(r["message"] for r in received)
        pubsub_rest(
            host, "POST", f"{subscription}:acknowledge", {"ackIds": [r["ackId"] for r in received]}
        )
        deadline = time.monotonic() + quiet
    return got
