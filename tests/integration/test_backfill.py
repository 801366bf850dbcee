"""``python -m presence_sweep.backfill`` against the Firestore emulator: members written before
the shard field get theirs, nothing else changes, and the sweep then finds them.

Each test runs in a Firestore project of its own: the backfill pages through every member of
its project, which must hold only what the test wrote.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from presence_sweep import backfill
from presence_sweep.adapters import FirebaseAuth, FirestoreMembers
from presence_sweep.backfill import BackfillReport, backfill_shards
from presence_sweep.core import sweep
from presence_sweep.schema import (
    ACTIVE_SESSIONS,
    INSTANCE_ID,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    MEMBERS,
    SHARD,
    UPDATED_AT,
    member_shard,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(firestore_client: Any) -> Iterator[Any]:
    """A client of a fresh project on the session's emulator."""
    from google.cloud import firestore

    client = firestore.Client(project=f"demo-backfill-{uuid.uuid4().hex[:10]}")
    yield client
    client.close()


def old_member(n: int) -> dict[str, Any]:
    """A member as a gateway older than the shard field wrote it."""
    return {
        IS_SIGNED_IN: True,
        LAST_PONG_AT: T0 + timedelta(seconds=n),
        UPDATED_AT: T0,
        INSTANCE_ID: "gw",
        ACTIVE_SESSIONS: {f"s{n}": {INSTANCE_ID: "gw"}},
    }


def stored(db: Any) -> dict[str, dict[str, Any]]:
    return {s.id: s.to_dict() for s in db.collection(MEMBERS).stream()}


def test_every_member_gets_its_shard_and_nothing_else_changes(db: Any) -> None:
    """Pages of 5 over 23 members: those without a shard, or with one no query finds (another
    number, a string, a boolean), get member_shard's; their other fields and the members that
    were right stay as they were; a second run writes nothing."""
    before: dict[str, dict[str, Any]] = {f"old-{n}": old_member(n) for n in range(17)}
    before["right"] = {**old_member(17), SHARD: member_shard("right")}
    before["wrong"] = {**old_member(18), SHARD: (member_shard("wrong") + 1) % 100}
    before["text"] = {**old_member(19), SHARD: str(member_shard("text"))}
    before["flag"] = {**old_member(20), SHARD: True}
    before["only-a-pong"] = {LAST_PONG_AT: T0}
    before["empty"] = {}
    for user_id, doc in before.items():
        db.collection(MEMBERS).document(user_id).set(doc)
    untouched = db.collection(MEMBERS).document("right").get().update_time

    report = backfill_shards(db, page_size=5)

    assert report == BackfillReport(examined=23, updated=22)
    assert stored(db) == {u: {**doc, SHARD: member_shard(u)} for u, doc in before.items()}
    assert db.collection(MEMBERS).document("right").get().update_time == untouched
    assert backfill_shards(db, page_size=5) == BackfillReport(examined=23, updated=0)


def test_a_dry_run_counts_and_writes_nothing(db: Any) -> None:
    """With dry_run the members without a shard are counted, not written."""
    for n in range(3):
        db.collection(MEMBERS).document(f"old-{n}").set(old_member(n))
    db.collection(MEMBERS).document("new").set({**old_member(3), SHARD: member_shard("new")})

    assert backfill_shards(db, dry_run=True) == BackfillReport(examined=4, updated=3)
    assert all(SHARD not in stored(db)[f"old-{n}"] for n in range(3))


def test_a_member_deleted_meanwhile_is_not_created_again(db: Any) -> None:
    """A member deleted between the read and the commit fails the batch; the others are then
    written one by one and the deleted one stays deleted."""
    for user_id in ("kept", "deleted"):
        db.collection(MEMBERS).document(user_id).set(old_member(0))
    snapshots = list(db.collection(MEMBERS).stream())
    db.collection(MEMBERS).document("deleted").delete()
    report = BackfillReport()

    backfill._set_shards(db, snapshots, report)

    assert report == BackfillReport(updated=1, deleted_meanwhile=1)
    assert stored(db) == {"kept": {**old_member(0), SHARD: member_shard("kept")}}


def test_the_sweep_finds_an_old_member_once_it_has_its_shard(db: Any, firebase_app: Any) -> None:
    """An expired member without a shard is in no shard's query: the sweep misses it until the
    backfill has run, then signs it out."""
    now = datetime.now(UTC)
    db.collection(MEMBERS).document("silent").set(
        {IS_SIGNED_IN: True, LAST_PONG_AT: now - timedelta(hours=4)}
    )

    def run() -> list[str]:
        members, auth = FirestoreMembers(db), FirebaseAuth(firebase_app)
        report = sweep(members, auth, NoCallbacks(), now, pong_timeout=3 * 3600)
        return report.signed_out_users

    assert run() == []
    backfill_shards(db)
    assert run() == ["silent"]
    assert db.collection(MEMBERS).document("silent").get().get(IS_SIGNED_IN) is False


class NoCallbacks:
    def notify(self, internal_url: str, sessions: Any, now: datetime) -> int:
        return 0  # the member has no session: nothing to call


def test_the_command_runs_with_the_functions_environment(
    db: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m presence_sweep.backfill`` takes its project from GOOGLE_CLOUD_PROJECT and
    prints one JSON line; it refuses an emulator for a production project, as the sweep does."""
    db.collection(MEMBERS).document("old").set(old_member(0))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", db.project)

    assert backfill.main([]) == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["project"], line["examined"], line["updated"]) == (db.project, 1, 1)
    assert stored(db)["old"][SHARD] == member_shard("old")

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "presence-production")
    assert backfill.main(["--dry-run"]) == 2
    refused = capsys.readouterr().err
    assert "EMULATOR_HOST: is set" in refused and "'presence-production'" in refused
