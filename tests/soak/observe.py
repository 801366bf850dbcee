"""Reading the stores at the end of a run: Firestore's sessions and members, Firebase Auth's
revocations, each instance's socket gauge and the fan-out topic's subscriptions. Blocking
calls, run in a thread by the harness."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    CONNECTED_AT,
    DISCONNECTED_AT,
    INSTANCE_ID,
    IS_ACTIVE,
    IS_SIGNED_IN,
    MEMBERS,
    SESSIONS,
    USER_ID,
)
from tests.soak.invariants import Account, StoreSnapshot
from tests.soak.stack import Stack


def valid_after(app: Any, users: Iterable[str]) -> dict[str, int]:
    """Each user's ``tokens_valid_after_timestamp`` (ms) in the Auth emulator: it moves when
    the user's tokens are revoked."""
    from firebase_admin import auth

    users = list(users)
    out: dict[str, int] = {}
    for n in range(0, len(users), 100):
        found = auth.get_users([auth.UidIdentifier(u) for u in users[n : n + 100]], app=app)
        for record in found.users:
            out[record.uid] = int(record.tokens_valid_after_timestamp or 0)
    return out


def accounts(db: Any, app: Any, baseline: dict[str, int]) -> dict[str, Account]:
    """Every user's revocation (against ``baseline``) and member sign-in state."""
    now = valid_after(app, baseline)
    signed_in = {
        doc.id: (doc.to_dict() or {}).get(IS_SIGNED_IN) for doc in db.collection(MEMBERS).stream()
    }
    return {
        user: Account(now.get(user, 0) > base, signed_in.get(user))
        for user, base in baseline.items()
    }


def gauge(port: int) -> int | None:
    """An instance's ``gateway_connections`` gauge, None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("gateway_connections "):
            return int(float(line.split()[1]))
    return None


def _pubsub(host: str, path: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://{host}/v1/{path}", timeout=10) as answer:
            value: dict[str, Any] = json.loads(answer.read() or b"{}")
            return value
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise


def subscriptions(stack: Stack) -> dict[str, float | None]:
    """The fan-out topic's subscriptions and each one's expiration TTL (seconds)."""
    topic = f"projects/{stack.project}/topics/{stack.topic}"
    names = _pubsub(stack.pubsub_host, f"{topic}/subscriptions").get("subscriptions", [])
    out: dict[str, float | None] = {}
    for name in names:
        ttl = _pubsub(stack.pubsub_host, name).get("expirationPolicy", {}).get("ttl")
        out[name] = float(ttl.rstrip("s")) if isinstance(ttl, str) and ttl else None
    return out


def snapshot(db: Any, stack: Stack, open_by_user: dict[str, int]) -> StoreSnapshot:
    """The stores as they stand, next to the sockets the population holds open."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    by_user: Counter[str] = Counter()
    by_instance: Counter[str] = Counter()
    active_ids: dict[str, list[str]] = {}
    for doc in db.collection(SESSIONS).where(filter=FieldFilter(IS_ACTIVE, "==", True)).stream():
        data = doc.to_dict() or {}
        by_user[str(data.get(USER_ID))] += 1
        by_instance[str(data.get(INSTANCE_ID))] += 1
        active_ids.setdefault(str(data.get(USER_ID)), []).append(doc.id)
    members, listed = {}, {}
    for doc in db.collection(MEMBERS).stream():
        entries = (doc.to_dict() or {}).get(ACTIVE_SESSIONS) or {}
        if entries:
            members[doc.id] = len(entries)
            listed[doc.id] = entries
    odd = {
        user
        for user in set(open_by_user) | set(by_user) | set(members)
        if not open_by_user.get(user, 0) == by_user.get(user, 0) == members.get(user, 0)
    }
    records = {
        user: records_of(db, stack, listed.get(user, {}), active_ids.get(user, []))
        for user in sorted(odd)[:MAX_RECORDS]
    }
    gauges = {}
    for instance in stack.instances:
        if instance.alive and (value := gauge(instance.port)) is not None:
            gauges[instance.instance_id] = value
    return StoreSnapshot(
        open_by_user=dict(open_by_user),
        active_by_user=dict(by_user),
        active_by_instance=dict(by_instance),
        member_sessions=members,
        gauges=gauges,
        subscriptions=subscriptions(stack),
        topic=stack.topic,
        live=stack.live_ids,
        killed=set(stack.killed),
        drained=set(stack.drained),
        records=records,
    )


#: Users whose records are read in full and printed, at most.
MAX_RECORDS = 20


def records_of(db: Any, stack: Stack, listed: dict[str, Any], active: list[str]) -> str:
    """The member's entries and the user's active sessions, each with its session record
    and its instance's fate: what tells a write lost from one reordered or left unreaped."""
    ids = list(dict.fromkeys([*listed, *active]))
    docs = {d.id: d for d in db.get_all([db.collection(SESSIONS).document(i) for i in ids])}
    parts = []
    for session_id in ids:
        entry = listed.get(session_id)
        doc = docs.get(session_id)
        data = (doc.to_dict() or {}) if doc is not None and doc.exists else None
        where = str((entry or {}).get(INSTANCE_ID) or (data or {}).get(INSTANCE_ID))
        fate = (
            "live"
            if where in stack.live_ids
            else "killed"
            if where in stack.killed
            else "drained"
            if where in stack.drained
            else "?"
        )
        record = (
            "no record"
            if data is None
            else ", ".join(
                f"{k}={_short(data[k])}"
                for k in (IS_ACTIVE, CONNECTED_AT, DISCONNECTED_AT, CLOSE_CODE)
                if k in data
            )
        )
        parts.append(
            f"{session_id} {'listed' if entry is not None else 'unlisted'} on {where} "
            f"({fate}): {record}"
        )
    return " | ".join(parts)


def _short(value: Any) -> str:
    """A timestamp as the gateways' logs show it (UTC, to the millisecond); else as it is."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
    return str(value)
