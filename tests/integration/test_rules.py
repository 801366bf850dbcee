"""firestore.rules against gcloud's Firestore emulator, over its REST API.

The module starts its own emulator (the session one runs without rules, open to everything),
loads ``firestore.rules`` for a fresh ``demo-rules-*`` project through the emulator's
``:securityRules`` endpoint (and each narrower presence rule the file shows, commented out, in
place of the default, for a project of its own), and then plays a client: emulator-style
unsigned ID tokens as ``Authorization: Bearer``. The Admin path is ``Bearer owner`` (the
emulator's admin bypass) and the google-cloud-firestore client, which the emulator treats as
admin too.

Nothing here skips: without gcloud's emulator, or when the rules do not load or are not
enforced, the fixture fails with the reason.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from emulator import procs
from emulator.exceptions import EmulatorError
from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    DEVICES,
    HOLDERS,
    INSTANCE_ID,
    INSTANCES,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_SEEN_AT,
    MEMBERS,
    OFFLINE,
    ONLINE,
    PRESENCE,
    PRESENCE_HOLDERS,
    SEQ,
    SESSIONS,
    STATE,
    STREAM_ACKS,
    STREAM_ENTRIES,
    STREAMS,
    TOP_OFFSET,
    UPDATED_AT,
)
from gateway.storage.store import DELETE_FIELD, connect_writes, instance_write
from tests.support import LOG_DIR, UNIT, unsigned_token

pytestmark = pytest.mark.integration

RULES = procs.ROOT / "firestore.rules"
ALICE, BOB = "alice", "bob"
SESSION_ID = f"{ALICE}-s1"
INSTANCE, INSTANCE_URL = "inst-1", "http://gateway.invalid"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ADMIN = {"Authorization": "Bearer owner"}


@dataclass
class RulesEmulator:
    process: procs.Process
    host: str
    project: str
    http: httpx.Client
    db: Any  # google.cloud.firestore.Client: admin

    @property
    def root(self) -> str:
        return f"projects/{self.project}/databases/(default)/documents"

    def url(self, path: str) -> str:
        return f"http://{self.host}/v1/{self.root}/{path}"

    def name(self, path: str) -> str:
        return f"{self.root}/{path}"

    def as_user(self, uid: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {unsigned_token(self.project, uid, **claims)}"}

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\nemulator log {self.process.log_path}:\n{self.process.log_tail()}")


def _start_emulator(host: str, port: int) -> procs.Process:
    # Only gcloud's emulator enforces rules: never the Node fallback, whatever the environment
    # asks for (FIRESTORE_EMULATOR_IMPL=gcloud makes a missing SDK an error, not a fallback).
    with pytest.MonkeyPatch.context() as env:
        env.setenv(procs.FIRESTORE_IMPL_ENV, "gcloud")
        try:
            process = procs.firestore_process(host, port, LOG_DIR)
        except EmulatorError as exc:
            pytest.fail(f"firestore.rules need gcloud's Firestore emulator: {exc}")
    process.log_path = LOG_DIR / f"firestore-rules-{port}.log"
    process.start()
    try:
        process.wait_ready(60 * UNIT)
    except EmulatorError as exc:
        process.stop()
        pytest.fail(f"the Firestore emulator for the rules tests did not start: {exc}")
    return process


def _load_rules(emu: RulesEmulator, content: str | None = None) -> None:
    """Load ``content`` (by default firestore.rules) for the emulator's project."""
    content = RULES.read_text() if content is None else content
    response = emu.http.put(
        f"http://{emu.host}/emulator/v1/projects/{emu.project}:securityRules",
        json={"rules": {"files": [{"name": RULES.name, "content": content}]}},
    )
    if response.status_code != 200:
        emu.fail(
            f"loading {RULES} into the emulator failed: HTTP {response.status_code} {response.text}"
        )
    # Without rules the emulator allows everything (a missing document reads as 404): a 403
    # here is the proof that these rules, and not the open default, are in force.
    probe = emu.http.get(emu.url(f"{MEMBERS}/rules-probe"))
    if probe.status_code != 403:
        emu.fail(
            f"rules loaded (HTTP 200) but not enforced: an unauthenticated read answered "
            f"HTTP {probe.status_code} {probe.text}"
        )


def _seed(db: Any) -> None:
    """What the gateway writes when it starts and when Alice and Bob connect to it."""
    from google.cloud import firestore

    writes = [instance_write(INSTANCE, INSTANCE_URL, T0)]
    for uid in (ALICE, BOB):
        writes += connect_writes(uid, f"{uid}-s1", INSTANCE, T0)
    batch = db.batch()
    for write in writes:
        fields = {
            key: firestore.DELETE_FIELD if value is DELETE_FIELD else value
            for key, value in write.fields.items()
        }
        batch.set(db.collection(write.collection).document(write.doc_id), fields, merge=True)
    batch.commit()


@pytest.fixture(scope="module")
def emu() -> Iterator[RulesEmulator]:
    host, port = "127.0.0.1", procs.free_port()
    process = _start_emulator(host, port)
    http = httpx.Client(timeout=10 * UNIT)
    db: Any = None
    try:
        project = f"demo-rules-{uuid.uuid4().hex[:8]}"
        # The client reads FIRESTORE_EMULATOR_HOST once, when built: set it only for that, so
        # the session's own emulator settings are left as they were.
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FIRESTORE_EMULATOR_HOST", f"{host}:{port}")
            from google.cloud import firestore

            db = firestore.Client(project=project)
        rules = RulesEmulator(process, f"{host}:{port}", project, http, db)
        _load_rules(rules)
        _seed(db)
        yield rules
    finally:
        if db is not None:
            db.close()
        http.close()
        process.stop()


def fields(value: dict[str, Any]) -> dict[str, Any]:
    """A REST ``fields`` map from plain strings/bools (all the writes below need)."""
    return {
        key: {"booleanValue": v} if isinstance(v, bool) else {"stringValue": v}
        for key, v in value.items()
    }


def assert_denied(response: httpx.Response) -> None:
    assert response.status_code == 403, (response.status_code, response.text)
    assert response.json()["error"]["status"] == "PERMISSION_DENIED", response.text


# (1) -------------------------------------------------------------------------------------------


def test_signed_in_user_reads_own_member_document(emu: RulesEmulator) -> None:
    response = emu.http.get(emu.url(f"{MEMBERS}/{ALICE}"), headers=emu.as_user(ALICE))

    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["name"] == emu.name(f"{MEMBERS}/{ALICE}")
    assert doc["fields"][IS_SIGNED_IN] == {"booleanValue": True}
    assert doc["fields"][INSTANCE_ID] == {"stringValue": INSTANCE}


def test_a_user_reads_no_internal_url_of_their_own(emu: RulesEmulator) -> None:
    """Alice's member document, as the rules let her read it, names her session's instance but
    not its internal URL; her session document and the instance registry, where the URL is,
    are closed to her, and her session holds no URL either should the rules ever open it."""
    me = emu.as_user(ALICE)
    member = emu.http.get(emu.url(f"{MEMBERS}/{ALICE}"), headers=me)
    assert member.status_code == 200, member.text
    entry = member.json()["fields"][ACTIVE_SESSIONS]["mapValue"]["fields"][SESSION_ID]
    assert entry == {"mapValue": {"fields": {INSTANCE_ID: {"stringValue": INSTANCE}}}}
    assert INTERNAL_URL not in member.text and INSTANCE_URL not in member.text

    assert_denied(emu.http.get(emu.url(f"{SESSIONS}/{SESSION_ID}"), headers=me))
    session = emu.http.get(emu.url(f"{SESSIONS}/{SESSION_ID}"), headers=ADMIN)
    assert session.status_code == 200, session.text
    assert INTERNAL_URL not in session.text and INSTANCE_URL not in session.text

    assert_denied(emu.http.get(emu.url(f"{INSTANCES}/{INSTANCE}"), headers=me))
    registry = emu.http.get(emu.url(f"{INSTANCES}/{INSTANCE}"), headers=ADMIN)
    assert registry.json()["fields"][INTERNAL_URL] == {"stringValue": INSTANCE_URL}


# (2) -------------------------------------------------------------------------------------------


def test_signed_in_user_cannot_read_another_member(emu: RulesEmulator) -> None:
    assert_denied(emu.http.get(emu.url(f"{MEMBERS}/{BOB}"), headers=emu.as_user(ALICE)))
    # Not even one that does not exist (no probing for ids).
    assert_denied(emu.http.get(emu.url(f"{MEMBERS}/nobody"), headers=emu.as_user(ALICE)))


def test_signed_in_user_cannot_list_or_query_members(emu: RulesEmulator) -> None:
    assert_denied(emu.http.get(emu.url(MEMBERS), headers=emu.as_user(ALICE)))
    query = {"structuredQuery": {"from": [{"collectionId": MEMBERS}]}}
    response = emu.http.post(
        f"http://{emu.host}/v1/{emu.root}:runQuery", json=query, headers=emu.as_user(ALICE)
    )
    assert response.status_code == 403, (response.status_code, response.text)
    assert "PERMISSION_DENIED" in response.text


# (3) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [f"{MEMBERS}/{ALICE}", f"{SESSIONS}/{SESSION_ID}", f"{INSTANCES}/{INSTANCE}"]
)
def test_unauthenticated_reads_are_denied(emu: RulesEmulator, path: str) -> None:
    assert_denied(emu.http.get(emu.url(path)))


# (4) -------------------------------------------------------------------------------------------


def test_client_writes_to_own_member_document_are_denied(emu: RulesEmulator) -> None:
    me = emu.as_user(ALICE)
    own = emu.url(f"{MEMBERS}/{ALICE}")
    tampered = fields({IS_SIGNED_IN: False, INSTANCE_ID: "evil"})

    # update (PATCH of an existing document, whole and field-masked)
    assert_denied(emu.http.patch(own, json={"fields": tampered}, headers=me))
    assert_denied(
        emu.http.patch(
            own,
            params={"updateMask.fieldPaths": INSTANCE_ID},
            json={"fields": fields({INSTANCE_ID: "evil"})},
            headers=me,
        )
    )
    # delete
    assert_denied(emu.http.delete(own, headers=me))
    # a batched write through :commit
    commit = {"writes": [{"update": {"name": emu.name(f"{MEMBERS}/{ALICE}"), "fields": tampered}}]}
    response = emu.http.post(f"http://{emu.host}/v1/{emu.root}:commit", json=commit, headers=me)
    assert_denied(response)
    # create: a member document of one's own that does not exist yet
    fresh = f"new-{uuid.uuid4().hex[:8]}"
    assert_denied(
        emu.http.patch(
            emu.url(f"{MEMBERS}/{fresh}"), json={"fields": tampered}, headers=emu.as_user(fresh)
        )
    )
    # ...and unauthenticated, which the emulator's open default would have allowed.
    assert_denied(emu.http.patch(own, json={"fields": tampered}))

    # None of it landed.
    doc = emu.db.collection(MEMBERS).document(ALICE).get()
    assert doc.exists
    assert doc.get(IS_SIGNED_IN) is True
    assert doc.get(INSTANCE_ID) == INSTANCE
    assert not emu.db.collection(MEMBERS).document(fresh).get().exists


# (5) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"{SESSIONS}/{SESSION_ID}", f"{INSTANCES}/{INSTANCE}"])
def test_sessions_and_instances_are_closed_to_clients(emu: RulesEmulator, path: str) -> None:
    # Alice's own session document (user_id == alice) included: only members/{uid} is readable.
    me = emu.as_user(ALICE)
    assert_denied(emu.http.get(emu.url(path), headers=me))
    assert_denied(emu.http.get(emu.url(path.split("/")[0]), headers=me))  # list
    assert_denied(
        emu.http.patch(emu.url(path), json={"fields": fields({INTERNAL_URL: "x"})}, headers=me)
    )


@pytest.mark.parametrize(
    "path",
    [
        f"{STREAMS}/{ALICE}",
        f"{STREAMS}/{ALICE}/{STREAM_ENTRIES}/00000000000000000001",
        f"{STREAM_ACKS}/{ALICE}",
    ],
)
def test_a_users_own_durable_stream_is_closed_to_the_client(emu: RulesEmulator, path: str) -> None:
    """Messages reach a client over its socket only: its stream's head, entries and
    acknowledged position can be neither read, listed nor written."""
    me = emu.as_user(ALICE)
    assert_denied(emu.http.get(emu.url(path), headers=me))
    assert_denied(emu.http.get(emu.url(path.rsplit("/", 1)[0]), headers=me))  # list
    assert_denied(
        emu.http.patch(emu.url(path), json={"fields": fields({TOP_OFFSET: 1})}, headers=me)
    )


# (6) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"{MEMBERS}/{ALICE}",
        f"{MEMBERS}/{BOB}",
        f"{SESSIONS}/{SESSION_ID}",
        f"{INSTANCES}/{INSTANCE}",
    ],
)
def test_admin_bypass_reads_everything(emu: RulesEmulator, path: str) -> None:
    response = emu.http.get(emu.url(path), headers=ADMIN)

    assert response.status_code == 200, response.text
    assert response.json()["name"] == emu.name(path)


def test_admin_writes_succeed_over_rest_and_the_python_client(emu: RulesEmulator) -> None:
    carol = f"carol-{uuid.uuid4().hex[:8]}"
    # REST with the admin bypass: create, then read back with the Python client.
    response = emu.http.patch(
        emu.url(f"{MEMBERS}/{carol}"),
        json={"fields": fields({IS_SIGNED_IN: True})},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text
    assert emu.db.collection(MEMBERS).document(carol).get().get(IS_SIGNED_IN) is True

    # The Python client (what the gateway and the sweep use) writes where clients may not...
    emu.db.collection(SESSIONS).document(SESSION_ID).set({IS_ACTIVE: False}, merge=True)
    emu.db.collection(MEMBERS).document(carol).set({INSTANCE_ID: INSTANCE}, merge=True)
    session = emu.http.get(emu.url(f"{SESSIONS}/{SESSION_ID}"), headers=ADMIN).json()
    assert session["fields"][IS_ACTIVE] == {"booleanValue": False}

    # ...and the owner then reads what the admin wrote, through the rules.
    own = emu.http.get(emu.url(f"{MEMBERS}/{carol}"), headers=emu.as_user(carol))
    assert own.status_code == 200, own.text
    assert own.json()["fields"][INSTANCE_ID] == {"stringValue": INSTANCE}


# (7) presence ----------------------------------------------------------------------------------

CAROL = "carol"


@pytest.fixture(scope="module")
def presence(emu: RulesEmulator) -> RulesEmulator:
    """Alice and Bob online on one instance, as a connect's transaction leaves their presence
    and its holders."""
    for uid in (ALICE, BOB):
        emu.db.collection(PRESENCE).document(uid).set({STATE: ONLINE, DEVICES: 1, LAST_SEEN_AT: T0})
        emu.db.collection(PRESENCE_HOLDERS).document(uid).set(
            {HOLDERS: {INSTANCE: 1}, STATE: ONLINE, SEQ: 1, LAST_SEEN_AT: T0, UPDATED_AT: T0}
        )
    return emu


def test_a_signed_in_user_reads_anothers_presence(presence: RulesEmulator) -> None:
    """Any signed-in user reads any user's presence by id, and learns that one never
    connected; a query of the collection, which would list every user, is refused."""
    response = presence.http.get(presence.url(f"{PRESENCE}/{BOB}"), headers=presence.as_user(ALICE))
    assert response.status_code == 200, response.text
    assert response.json()["fields"][STATE] == {"stringValue": ONLINE}
    never = presence.http.get(presence.url(f"{PRESENCE}/nobody"), headers=presence.as_user(ALICE))
    assert never.status_code == 404, never.text
    assert_denied(query_presence(presence, presence.as_user(ALICE)))


def test_an_unauthenticated_client_cannot_read_presence(presence: RulesEmulator) -> None:
    """Without a token, a user's presence is refused, as a document and as a list."""
    assert_denied(presence.http.get(presence.url(f"{PRESENCE}/{BOB}")))
    assert_denied(presence.http.get(presence.url(PRESENCE)))


def test_no_client_writes_presence(presence: RulesEmulator) -> None:
    """Neither its owner, another user nor an unauthenticated client creates, updates or deletes
    a presence document; only the Admin SDK (gateway, sweep) writes it."""
    me = presence.as_user(ALICE)
    offline = {"fields": fields({STATE: OFFLINE})}
    for uid in (ALICE, BOB):
        assert_denied(
            presence.http.patch(presence.url(f"{PRESENCE}/{uid}"), json=offline, headers=me)
        )
        assert_denied(presence.http.delete(presence.url(f"{PRESENCE}/{uid}"), headers=me))
    assert_denied(presence.http.patch(presence.url(f"{PRESENCE}/{BOB}"), json=offline))
    fresh = f"new-{uuid.uuid4().hex[:8]}"
    assert_denied(
        presence.http.patch(
            presence.url(f"{PRESENCE}/{fresh}"), json=offline, headers=presence.as_user(fresh)
        )
    )
    commit = {"writes": [{"update": {"name": presence.name(f"{PRESENCE}/{ALICE}"), **offline}}]}
    url = f"http://{presence.host}/v1/{presence.root}:commit"
    assert_denied(presence.http.post(url, json=commit, headers=me))
    assert presence.db.collection(PRESENCE).document(ALICE).get().get(STATE) == ONLINE
    assert not presence.db.collection(PRESENCE).document(fresh).get().exists


@pytest.mark.parametrize("uid", [ALICE, BOB])
def test_presence_holders_are_closed_to_clients(presence: RulesEmulator, uid: str) -> None:
    """A user's own holders and another's can be neither read, listed nor written."""
    me, path = presence.as_user(ALICE), f"{PRESENCE_HOLDERS}/{uid}"
    assert_denied(presence.http.get(presence.url(path), headers=me))
    assert_denied(presence.http.get(presence.url(PRESENCE_HOLDERS), headers=me))
    assert_denied(
        presence.http.patch(
            presence.url(path), json={"fields": fields({STATE: ONLINE})}, headers=me
        )
    )


# (8) the narrower presence rules firestore.rules shows, each loaded in place of the default ----

#: The default presence match, and each alternative commented out after it.
_DEFAULT = re.compile(r"^( *)match /presence/\{userId\} \{\n(?:\1 .*\n)*?\1\}\n", re.M)
_ALTERNATIVE = re.compile(r"^( *)// match /presence/\{userId\} \{\n(?:\1// .*\n)*?\1// \}\n", re.M)
#: What the app's backend writes for them (no gateway name: see the comments in firestore.rules).
ORG, CONTACTS, ALLOWED = "org", "contacts", "allowed"


def alternatives(source: str) -> list[str]:
    """The commented-out presence matches of a rules file, uncommented (indent kept)."""
    return [
        re.sub(rf"(?m)^{block[1]}// ", block[1], block[0])
        for block in _ALTERNATIVE.finditer(source)
    ]


def narrowed(source: str, alternative: str) -> str:
    """The rules file with ``alternative`` in place of its default presence match."""
    default = _DEFAULT.search(source)
    assert default is not None
    return source[: default.start()] + alternative + source[default.end() :]


def test_the_rules_show_two_narrower_presence_rules_and_the_docs_the_same() -> None:
    """firestore.rules holds the default presence match and two alternatives, same organisation
    and contacts only, and docs/presence.md shows each exactly as the file has it."""
    source = RULES.read_text()
    assert len(_DEFAULT.findall(source)) == 1
    same_org, contacts = alternatives(source)
    assert "request.auth.token.org == resource.data.org" in same_org
    assert f"/{CONTACTS}/$(userId)/{ALLOWED}/$(request.auth.uid)" in contacts
    docs = (procs.ROOT / "docs" / "presence.md").read_text()
    for block in (same_org, contacts):
        assert textwrap.dedent(block) in docs
        deployed = re.sub(r"//[^\n]*", "", narrowed(source, block))
        assert deployed.count("match /presence/") == 1 and block in deployed


def variant(emu: RulesEmulator, alternative: str) -> RulesEmulator:
    """The emulator with firestore.rules narrowed by ``alternative``, for a fresh project."""
    fresh = dataclasses.replace(emu, project=f"demo-rules-{uuid.uuid4().hex[:8]}", db=None)
    _load_rules(fresh, narrowed(RULES.read_text(), alternative))
    return fresh


def query_presence(
    emu: RulesEmulator, headers: dict[str, str], org: str | None = None
) -> httpx.Response:
    """A client's query of the presence collection, where org == ``org`` if given."""
    query: dict[str, Any] = {"from": [{"collectionId": PRESENCE}]}
    if org is not None:
        value = {"stringValue": org}
        query["where"] = {
            "fieldFilter": {"field": {"fieldPath": ORG}, "op": "EQUAL", "value": value}
        }
    url = f"http://{emu.host}/v1/{emu.root}:runQuery"
    return emu.http.post(url, json={"structuredQuery": query}, headers=headers)


def admin_put(emu: RulesEmulator, path: str, values: dict[str, Any]) -> None:
    response = emu.http.patch(emu.url(path), json={"fields": fields(values)}, headers=ADMIN)
    assert response.status_code == 200, response.text


def test_same_organisation_rule(emu: RulesEmulator) -> None:
    """Narrowed to the organisation: a reader whose org claim is the org the backend wrote into
    the presence document reads it, and queries it filtered on that org; another org, no claim,
    no org written or an unfiltered query is refused."""
    rules = variant(emu, alternatives(RULES.read_text())[0])
    admin_put(rules, f"{PRESENCE}/{BOB}", {STATE: ONLINE, ORG: "acme"})
    admin_put(rules, f"{PRESENCE}/{CAROL}", {STATE: ONLINE})
    bob, acme = rules.url(f"{PRESENCE}/{BOB}"), rules.as_user(ALICE, org="acme")
    allowed = rules.http.get(bob, headers=acme)
    assert allowed.status_code == 200, allowed.text
    for refused in (rules.as_user(CAROL, org="globex"), rules.as_user(CAROL), {}):
        assert_denied(rules.http.get(bob, headers=refused))
    assert_denied(rules.http.get(rules.url(f"{PRESENCE}/{CAROL}"), headers=acme))

    listed = query_presence(rules, acme, org="acme")
    assert listed.status_code == 200, listed.text
    assert [row["document"]["name"] for row in listed.json() if "document" in row] == [
        rules.name(f"{PRESENCE}/{BOB}")
    ]
    assert_denied(query_presence(rules, acme))
    assert_denied(query_presence(rules, acme, org="globex"))
    offline = {"fields": fields({STATE: OFFLINE})}
    assert_denied(rules.http.patch(bob, json=offline, headers=rules.as_user(BOB, org="acme")))


def test_contacts_only_rule(emu: RulesEmulator) -> None:
    """Narrowed to contacts: a reader Bob lists reads his presence, and Bob his own; a reader
    he does not list, a query and a read of his list are refused."""
    rules = variant(emu, alternatives(RULES.read_text())[1])
    admin_put(rules, f"{PRESENCE}/{BOB}", {STATE: ONLINE})
    admin_put(rules, f"{CONTACTS}/{BOB}/{ALLOWED}/{ALICE}", {})
    bob = rules.url(f"{PRESENCE}/{BOB}")
    for reader in (ALICE, BOB):
        response = rules.http.get(bob, headers=rules.as_user(reader))
        assert response.status_code == 200, (reader, response.text)
    assert_denied(rules.http.get(bob, headers=rules.as_user(CAROL)))
    assert_denied(rules.http.get(bob))
    assert_denied(query_presence(rules, rules.as_user(ALICE)))
    # The list of contacts is the backend's: closed to clients, Bob included.
    allowed = rules.url(f"{CONTACTS}/{BOB}/{ALLOWED}/{ALICE}")
    assert_denied(rules.http.get(allowed, headers=rules.as_user(BOB)))
