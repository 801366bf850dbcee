"""The whole stack in containers (emulator/compose.yaml): the emulators, the gateway, the sweep
function and the scheduler container, as ``make up-containers`` runs them.

The test knows only the published host ports, as a developer would. A user signs in at the
Auth emulator (its REST API, as a client SDK does), opens a socket, never answers a ping, and
gets the timeout message and the close; Firestore and Auth then hold the sign-out.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import pytest

from emulator import compose, procs
from gateway.storage.schema import (
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_SIGN_OUT_AT,
    MEMBERS,
    SESSIONS,
    SIGNED_OUT_AT,
    UPDATED_AT,
    USER_ID,
)
from tests.support import LOG_DIR, UNIT, Client

pytestmark = pytest.mark.e2e

SHORT = {"PING_INTERVAL": "0.5", "PONG_TIMEOUT": "3", "SWEEP_INTERVAL": "1"}


@dataclass
class Stack:
    project: str
    env: dict[str, str]

    def port(self, name: str) -> int:
        return int(self.env[f"{name.upper()}_PORT"])

    def host(self, name: str) -> str:
        return f"127.0.0.1:{self.port(name)}"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    name = f"presence-test-{secrets.token_hex(3)}"
    knobs = {
        "GOOGLE_CLOUD_PROJECT": f"demo-compose-{secrets.token_hex(3)}",
        "GATEWAY_ADMIN_TOKEN": secrets.token_urlsafe(24),
        "GATEWAY_CALLBACK_TOKEN": secrets.token_urlsafe(24),
        "PUBSUB_TOPIC": "gateway-fanout",
        **SHORT,
    }
    ports = {n: procs.free_port() for n in ("firestore", "auth", "pubsub", "functions", "gateway")}
    env = compose.compose_env(knobs, ports)
    try:
        compose.compose_up(name, env, timeout=180 * UNIT)
        yield Stack(name, env)
    finally:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        (LOG_DIR / f"{name}.log").write_text(compose.compose_logs(name, env))
        compose.compose_down(name, env)


def sign_up(stack: Stack) -> tuple[str, str]:
    """A new anonymous user at the Auth emulator: (uid, ID token)."""
    request = urllib.request.Request(
        f"http://{stack.host('auth')}/identitytoolkit.googleapis.com/v1/accounts:signUp"
        "?key=fake-api-key",
        data=json.dumps({"returnSecureToken": True}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.loads(response.read())
    return body["localId"], body["idToken"]


async def test_a_silent_client_is_timed_out_signed_out_and_revoked(stack: Stack) -> None:
    """Connect with a real ID token, stop answering pings: the timeout message and 4408
    arrive, the member and session record the sign-out, and Auth revoked the tokens."""
    uid, token = sign_up(stack)
    issued = time.time()
    client = await Client.open(
        f"ws://{stack.host('gateway')}/ws/connect/{uid}?token={token}", silent=True
    )
    try:
        frame = await client.next(timeout=60)
        assert frame["type"] == "timeout"
        assert frame["message"] == (
            "Your session has expired due to inactivity (3 seconds). Please sign in again."
        )
        assert await client.closed() == 4408
    finally:
        await client.close()
    import firebase_admin
    from firebase_admin import auth
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    project = stack.env["GOOGLE_CLOUD_PROJECT"]
    # Both libraries find the emulators through these variables: point them at the stack's
    # published ports for this check only.
    hosts = {
        "FIRESTORE_EMULATOR_HOST": stack.host("firestore"),
        "FIREBASE_AUTH_EMULATOR_HOST": stack.host("auth"),
    }
    with mock.patch.dict("os.environ", hosts):
        db = firestore.Client(project=project)
        app = firebase_admin.initialize_app(options={"projectId": project}, name=stack.project)
        try:
            member = db.collection(MEMBERS).document(uid).get().to_dict()
            assert member[IS_SIGNED_IN] is False
            assert member[LAST_SIGN_OUT_AT] <= member[UPDATED_AT]
            query = db.collection(SESSIONS).where(filter=FieldFilter(USER_ID, "==", uid))
            sessions = [s.to_dict() for s in query.get()]
            assert sessions and all(s[IS_ACTIVE] is False for s in sessions)
            assert any(SIGNED_OUT_AT in s for s in sessions)
            user = auth.get_user(uid, app=app)
            assert user.tokens_valid_after_timestamp / 1000 >= int(issued)
        finally:
            db.close()
            firebase_admin.delete_app(app)


def test_the_stacks_firestore_enforces_the_repositorys_rules(stack: Stack) -> None:
    """The Firestore container runs with firestore.rules mounted (as make up's emulator does):
    a client without a token is denied a member document, which an admin may read."""
    import httpx

    project = stack.env["GOOGLE_CLOUD_PROJECT"]
    url = (
        f"http://{stack.host('firestore')}/v1/projects/{project}/databases/(default)/documents/"
        f"{MEMBERS}/nobody"
    )
    denied = httpx.get(url, timeout=10 * UNIT)
    assert denied.status_code == 403, denied.text
    # Missing, but readable: the admin bypass (what the gateway and the sweep use) passes.
    admin = httpx.get(url, headers={"Authorization": "Bearer owner"}, timeout=10 * UNIT)
    assert admin.status_code == 404, admin.text
