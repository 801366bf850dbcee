"""The local stack's Firestore emulator (what ``make up`` starts) enforces the repository's
firestore.rules, as production does, while the gateway's and the sweep's admin access passes.

tests/integration/test_rules.py holds the rules themselves to account (it loads them into an
emulator of its own); this module checks that the stack's launcher puts them in force.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from emulator import procs, stack
from emulator.exceptions import EmulatorError
from gateway.storage.schema import INSTANCES, IS_SIGNED_IN, MEMBERS
from tests.support import LOG_DIR, UNIT, Client, eventually, start_gateway, unsigned_token

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer owner"}
ALICE, BOB = "alice", "bob"


@dataclass
class StackFirestore:
    host: str
    project: str
    http: httpx.Client

    def url(self, path: str) -> str:
        return f"http://{self.host}/v1/projects/{self.project}/databases/(default)/documents/{path}"

    def as_user(self, uid: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {unsigned_token(self.project, uid)}"}


@pytest.fixture(scope="module")
def firestore() -> Iterator[StackFirestore]:
    """The stack's Firestore launcher on a free port, two members written as the gateway
    would (admin), in a fresh demo- project."""
    host, port = "127.0.0.1", procs.free_port()
    # Only gcloud's emulator enforces rules; the stack falls back to the Node one without the
    # SDK (and says so): this test needs the real one, and fails without it.
    with pytest.MonkeyPatch.context() as env:
        env.setenv(procs.FIRESTORE_IMPL_ENV, "gcloud")
        try:
            process = stack.firestore_process(host, port, LOG_DIR)
        except EmulatorError as exc:
            pytest.fail(f"the stack's rules need gcloud's Firestore emulator: {exc}")
    process.log_path = LOG_DIR / f"firestore-stack-{port}.log"
    process.start()
    http = httpx.Client(timeout=10 * UNIT)
    try:
        process.wait_ready(60 * UNIT)
        emulator = StackFirestore(f"{host}:{port}", f"demo-stack-{uuid.uuid4().hex[:8]}", http)
        for uid in (ALICE, BOB):
            written = http.patch(
                emulator.url(f"{MEMBERS}/{uid}"),
                json={"fields": {IS_SIGNED_IN: {"booleanValue": True}}},
                headers=ADMIN,
            )
            assert written.status_code == 200, written.text
        yield emulator
    finally:
        http.close()
        process.stop()


def assert_denied(response: httpx.Response) -> None:
    assert response.status_code == 403, (response.status_code, response.text)
    assert response.json()["error"]["status"] == "PERMISSION_DENIED", response.text


def test_the_stack_loads_the_rules_file_firebase_json_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stack's launcher hands gcloud's emulator the file firebase.json names (what
    firebase deploy uploads): the repository's firestore.rules."""
    monkeypatch.setenv(procs.FIRESTORE_IMPL_ENV, "gcloud")
    process = stack.firestore_process("127.0.0.1", procs.free_port(), LOG_DIR)
    assert procs.firestore_rules() == procs.ROOT / "firestore.rules"
    assert "--rules=firestore.rules" in process.argv
    assert process.cwd == procs.ROOT


def test_an_unauthenticated_client_reads_nothing(firestore: StackFirestore) -> None:
    """Without a token, a member document can be neither read nor listed nor written."""
    assert_denied(firestore.http.get(firestore.url(f"{MEMBERS}/{ALICE}")))
    assert_denied(firestore.http.get(firestore.url(MEMBERS)))
    assert_denied(
        firestore.http.patch(
            firestore.url(f"{MEMBERS}/{ALICE}"),
            json={"fields": {IS_SIGNED_IN: {"booleanValue": False}}},
        )
    )


def test_a_signed_in_client_reads_its_own_member_and_no_one_elses(
    firestore: StackFirestore,
) -> None:
    """Alice reads members/alice (the rules allow it) and is denied members/bob and the
    gateway's other collections."""
    own = firestore.http.get(firestore.url(f"{MEMBERS}/{ALICE}"), headers=firestore.as_user(ALICE))
    assert own.status_code == 200, own.text
    assert_denied(
        firestore.http.get(firestore.url(f"{MEMBERS}/{BOB}"), headers=firestore.as_user(ALICE))
    )
    assert_denied(
        firestore.http.get(firestore.url(f"{INSTANCES}/any"), headers=firestore.as_user(ALICE))
    )


def test_the_server_client_library_still_reads_and_writes_everything(
    firestore: StackFirestore,
) -> None:
    """google-cloud-firestore, which the gateway and the sweep use, is an admin on the
    emulator: the rules do not stop the stack's own services."""
    from google.cloud import firestore as gfs

    with pytest.MonkeyPatch.context() as env:
        env.setenv("FIRESTORE_EMULATOR_HOST", firestore.host)
        db = gfs.Client(project=firestore.project)
    try:
        db.collection(MEMBERS).document(BOB).set({IS_SIGNED_IN: False}, merge=True)
        assert db.collection(MEMBERS).document(BOB).get().get(IS_SIGNED_IN) is False
    finally:
        db.close()


async def test_a_gateways_writes_pass_the_rules(firestore: StackFirestore) -> None:
    """A gateway process on the stack's Firestore records a socket's connect and pongs (its
    commits go through the client's channel as wire bytes, with the client's credentials):
    the rules hold clients, not the gateway."""
    from gateway.storage.schema import LAST_PONG_AT

    gateway = start_gateway(firestore.host, firestore.project, None)
    carol = f"carol-{uuid.uuid4().hex[:8]}"
    try:
        client = await Client.open(gateway.ws(carol))

        async def recorded() -> bool:
            member = firestore.http.get(firestore.url(f"{MEMBERS}/{carol}"), headers=ADMIN)
            return member.status_code == 200 and LAST_PONG_AT in member.json()["fields"]

        await eventually(recorded)
        await client.close()
    finally:
        gateway.stop()
    assert "PERMISSION_DENIED" not in gateway.log()
