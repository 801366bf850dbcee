"""One-off, when upgrading to sharded members: give every member its ``shard``.

    cd functions && GOOGLE_CLOUD_PROJECT=PROJECT python -m presence_sweep.backfill [--dry-run]

With the function's environment (its project; the emulator variables are refused for a
production project as the sweep refuses them). The sweep finds expired members one shard at a
time (``presence_sweep.shards``), so a member written by a gateway older than the field is in
no query and would never be signed out. A connected user gets a shard with their next connect
(Cloud Run ends every socket within the hour), but a user who went silent before the upgrade
never connects again, and those are the members the sweep is for. Run it once no gateway of an
older revision serves traffic, and before deploying the sweep that queries shards
(docs/deployment.md).

It pages through every member by document id (Firestore's built-in index on document names: no
index of ours), reading the shard only, and sets it where it is missing or not the one
``member_shard`` gives, in commits of at most 500 writes (Firestore's limit). A member deleted
meanwhile is not created again. Safe to run twice, and while gateways write: both write the same
value. Cost: one read per member, one write per member set.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from presence_sweep.exceptions import SweepConfigError
from presence_sweep.schema import MEMBERS, SHARD, member_shard
from presence_sweep.settings import SweepSettings

#: Members read per query, and so the most one commit writes (Firestore allows 500).
PAGE_SIZE = 500
#: A progress line on stderr every this many pages (100,000 members at the default).
PROGRESS_EVERY = 200


@dataclass
class BackfillReport:
    examined: int = 0
    updated: int = 0
    #: Members that needed a shard but were deleted between the read and the write.
    deleted_meanwhile: int = 0


def backfill_shards(
    db: Any,
    page_size: int = PAGE_SIZE,
    *,
    dry_run: bool = False,
    on_page: Callable[[BackfillReport], None] | None = None,
) -> BackfillReport:
    """Set ``shard`` on every member that lacks it (or holds another value) and report what was
    done; with ``dry_run``, count those members and write nothing."""
    from google.cloud.firestore_v1.field_path import FieldPath

    if not 1 <= page_size <= 500:
        raise ValueError(f"page_size must be 1..500 (one commit per page), got {page_size}")
    report = BackfillReport()
    query = (
        db.collection(MEMBERS).order_by(FieldPath.document_id()).select([SHARD]).limit(page_size)
    )
    last: Any | None = None
    while True:
        page = list((query.start_after(last) if last is not None else query).stream())
        report.examined += len(page)
        # Exactly an int: a stored true or "7" is in no shard's query (true == 1 in Python).
        unsharded = [s for s in page if _stored_shard(s.to_dict() or {}) != member_shard(str(s.id))]
        if dry_run:
            report.updated += len(unsharded)
        elif unsharded:
            _set_shards(db, unsharded, report)
        if on_page is not None:
            on_page(report)
        if len(page) < page_size:
            return report
        last = page[-1]


def _stored_shard(member: dict[str, Any]) -> int | None:
    value = member.get(SHARD)
    return value if value.__class__ is int else None


def _set_shards(db: Any, snapshots: Sequence[Any], report: BackfillReport) -> None:
    from google.api_core.exceptions import NotFound

    batch = db.batch()
    for snapshot in snapshots:
        # update, not set: it fails on a member deleted since the read instead of creating one.
        batch.update(snapshot.reference, {SHARD: member_shard(str(snapshot.id))})
    try:
        batch.commit()
    except NotFound:
        pass  # the commit is atomic: nothing was written; one by one, skipping the deleted
    else:
        report.updated += len(snapshots)
        return
    for snapshot in snapshots:
        try:
            snapshot.reference.update({SHARD: member_shard(str(snapshot.id))})
        except NotFound:
            report.deleted_meanwhile += 1
        else:
            report.updated += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m presence_sweep.backfill",
        description="Set members/{uid}.shard where it is missing (once, when upgrading).",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count the members without a shard, write nothing"
    )
    args = parser.parse_args(argv)
    try:
        settings = SweepSettings.from_env()
    except SweepConfigError as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 2
    from google.cloud import firestore

    def progress(report: BackfillReport) -> None:
        if report.examined and report.examined % (PAGE_SIZE * PROGRESS_EVERY) == 0:
            print(f"backfill: {report.examined:,} members examined", file=sys.stderr, flush=True)

    db = firestore.Client(project=settings.project_id)
    try:
        report = backfill_shards(db, dry_run=args.dry_run, on_page=progress)
    finally:
        db.close()  # type: ignore[no-untyped-call]
    summary = {"message": "shard backfill", "project": settings.project_id, **asdict(report)}
    print(json.dumps({**summary, "dry_run": args.dry_run}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
