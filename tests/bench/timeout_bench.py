"""Timeout delivery across gateway instances (part of ``make bench``; ``--only timeout``).

Issue 5's target: "from the sweep's commit to the client's timeout message: p99 under 1 s,
across instances". Three gateway processes (``AUTH_MODE=off``, ``PING_INTERVAL=3600`` so no pong
refreshes a member, ``SWEEP_INTERVAL=600`` so their reconcile pass, the fallback for lost
callbacks, never runs inside the measurement) share the Firestore emulator. One load-client
process opens a socket per user on the user's instance (user ``i`` on instance ``i % 3``) and a
second socket on the next instance for one user in ten, and stamps (wall clock) the timeout frame
and the close frame of every socket. Once every socket is recorded on its member, the members'
``last_pong_at`` is moved 4 hours back and the real sweep runs in this process:
``FirestoreMembers``, ``FirebaseAuth`` against the Auth emulator (the users are imported first,
so each revoke is a real call) and ``HttpNotifier`` with the gateways' callback token.

Latency of a socket = its receipt of the timeout frame minus the commit time of its member's
sign-out: the ``update_time`` of the member document read after the sweep. The disconnect write
a gateway makes after closing the socket (deleting ``active_sessions.<id>``, already deleted by
the sweep) changes nothing, and Firestore keeps ``update_time`` for a write that changes nothing,
so that is the finalize transaction's commit time (a negative latency, or a commit time before
the sweep started, would show otherwise and fails the check). The emulator and the client read
the same machine clock.

The notifier is wrapped to record when each callback was sent and answered, which splits the
latency into commit -> callback sent (finalize's return, the page's sessions batch, the page's
earlier callbacks) and callback sent -> frame received (the gateway's handling and delivery).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from emulator import procs
from gateway.storage.schema import ACTIVE_SESSIONS, IS_SIGNED_IN, LAST_PONG_AT, MEMBERS

if TYPE_CHECKING:
    from tests.bench.runner import ClientProc

TARGET_P99_MS = 1000.0
INSTANCES = 3
DEFAULT_USERS = 1_500
#: One user in this many also holds a socket on a second instance (a second device).
SHARED_EVERY = 10
PREFIX = "tmo"
CALLBACK_TOKEN_ENV = "GATEWAY_CALLBACK_TOKEN"
#: Far beyond the scenario's length: no ping (so no pong), no reconcile pass inside it.
PING_INTERVAL = 3600.0
SWEEP_INTERVAL = 600.0
EXPIRED_BY = timedelta(hours=4)
PONG_TIMEOUT = 3 * 3600.0


@dataclass(frozen=True, slots=True)
class Call:
    """One callback the sweep made: to which instance, for which users, when (wall clock)."""

    url: str
    users: tuple[str, ...]
    sent_at: float
    answered_at: float
    closed: int | None  # None when it raised


class TimedNotifier:
    """The real notifier, with each callback's wall-clock span recorded.

    Anything but ``notify`` goes to the wrapped notifier unchanged."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.calls: list[Call] = []

    def notify(self, internal_url: str, sessions: Sequence[Any], now: datetime) -> int:
        sent = time.time()
        closed: int | None = None
        try:
            closed = int(self._inner.notify(internal_url, sessions, now))
            return closed
        finally:
            call = Call(internal_url, tuple(s.user_id for s in sessions), sent, time.time(), closed)
            with self._lock:  # pages call back from several threads
                self.calls.append(call)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def plan_sockets(ports: Sequence[int], users: int) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """[(port, user id)] for every socket, interleaved over the instances, and sockets per user."""
    plan: list[tuple[int, str]] = []
    per_user: dict[str, int] = {}
    for i in range(users):
        user = f"{PREFIX}-{i:06d}"
        plan.append((ports[i % len(ports)], user))
        per_user[user] = 1
        if i % SHARED_EVERY == 0:
            plan.append((ports[(i + 1) % len(ports)], user))
            per_user[user] = 2
    return plan, per_user


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (an observed value, never interpolated)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 1)


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50_ms": _ms(percentile(values, 0.50)),
        "p99_ms": _ms(percentile(values, 0.99)),
        "max_ms": _ms(max(values) if values else None),
    }


def _metric(text: str, name: str) -> float | None:
    """A sample of one Prometheus metric (``name`` or ``name_total``) from /metrics text."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head in (name, f"{name}_total"):
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _wait_recorded(db: Any, per_user: dict[str, int], timeout: float) -> None:
    """Until every member is signed in with all its sockets in ``active_sessions``: the
    gateways' connect writes go through their write-behind buffers, and one landing after the
    expiry below would put ``last_pong_at`` back to now."""
    deadline = time.monotonic() + timeout
    refs = [db.collection(MEMBERS).document(u) for u in per_user]
    while True:
        short = 0
        for snap in db.get_all(refs):
            member = snap.to_dict() if snap.exists else None
            sessions = (member or {}).get(ACTIVE_SESSIONS) or {}
            if not member or member.get(IS_SIGNED_IN) is not True:
                short += 1
            elif len(sessions) != per_user[snap.id]:
                short += 1
        if not short:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timeout: {short} members not recorded after {timeout:.0f}s")
        time.sleep(0.5)


def _expire(db: Any, users: Sequence[str], when: datetime) -> None:
    for start in range(0, len(users), 500):
        batch = db.batch()
        for user in users[start : start + 500]:
            batch.update(db.collection(MEMBERS).document(user), {LAST_PONG_AT: when})
        batch.commit()


def _import_auth_users(auth: Any, app: Any, users: Sequence[str]) -> None:
    for start in range(0, len(users), 1000):
        records = [auth.ImportUserRecord(uid=u) for u in users[start : start + 1000]]
        result = auth.import_users(records, app=app)
        if result.failure_count:
            raise RuntimeError(f"Auth import failed: {result.errors[:3]}")


def _wait_client(client: ClientProc, want: int, timeout: float) -> dict[str, Any]:
    """Ask the client for its records until every socket has its close frame (or time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        client.command("report")
        report = client.wait_for("report", 30)
        closed = sum(1 for r in report["sockets"] if r[4] is not None)
        if closed >= want or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def run(fs_host: str, args: argparse.Namespace, stack: list[Any]) -> dict[str, Any]:
    """Three gateways, one client, the real sweep; the figures of the timeout scenario."""
    # Imported here: the runner imports this module at its top.
    from tests.bench.runner import PROJECT, RUN_DIR, ClientProc, Gateway, clear_firestore, log

    users = args.timeout_users
    log(f"T: timeout delivery, {users:,} users over {INSTANCES} gateway instances")
    clear_firestore(fs_host)
    sys.path.insert(0, str(procs.ROOT / "functions"))
    auth_port = procs.free_port()
    auth_host = f"127.0.0.1:{auth_port}"
    auth_emulator = procs.auth_process("127.0.0.1", auth_port, PROJECT, RUN_DIR)
    auth_emulator.log_path = RUN_DIR / "timeout-auth.log"
    saved = {
        k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST")
    }
    callback_token = f"bench-callback-{os.urandom(12).hex()}"
    cleanup: list[Callable[[], Any]] = []
    try:
        # The Auth emulator (node) takes a while to come up: start it first, wait for it later.
        auth_emulator.start()
        cleanup.append(auth_emulator.stop)
        gateways: list[Gateway] = []
        for k in range(INSTANCES):
            gw = Gateway(
                fs_host,
                PING_INTERVAL,
                args,
                f"timeout-{k}",
                extra_env={
                    CALLBACK_TOKEN_ENV: callback_token,
                    "SWEEP_INTERVAL": str(SWEEP_INTERVAL),
                    "PONG_TIMEOUT": str(PONG_TIMEOUT),
                },
            )
            stack.append(gw)
            gw.start()
            gateways.append(gw)
        by_port = {gw.port: gw for gw in gateways}

        plan, per_user = plan_sockets([gw.port for gw in gateways], users)
        plan_path = RUN_DIR / "timeout-plan.json"
        plan_path.write_text(json.dumps(plan))
        client = ClientProc(
            "client-timeout",
            [
                sys.executable,
                "-m",
                "tests.bench.load_client",
                f"--plan={plan_path}",
                "--mode=timeout",
                "--impl=raw",
                f"--hosts={args.hosts}",
                f"--concurrency={args.client_concurrency}",
            ],
            RUN_DIR / "client.log",
        )
        stack.append(client)
        ready = client.wait_for("ready", max(120, len(plan) / 50))
        if ready["failed"]:
            raise RuntimeError(f"timeout: {ready['failed']} sockets failed: {ready['last_error']}")
        expected = {gw.port: sum(1 for port, _ in plan if port == gw.port) for gw in gateways}
        for gw in gateways:
            gw.wait_connections(expected[gw.port], 60)
        log(
            f"T: {len(plan):,} sockets ({len(plan) - users} second sockets) open after "
            f"{ready['seconds']:.1f}s: "
            + ", ".join(f"{gw.label} {expected[gw.port]}" for gw in gateways)
        )

        auth_emulator.wait_ready(120)
        os.environ["FIRESTORE_EMULATOR_HOST"] = fs_host
        os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = auth_host
        import firebase_admin
        from firebase_admin import auth
        from google.cloud import firestore as gfs

        from presence_sweep.adapters import HttpNotifier, sweep_firestore
        from presence_sweep.settings import SweepSettings

        app = firebase_admin.initialize_app(options={"projectId": PROJECT}, name="bench-timeout")
        cleanup.append(lambda: firebase_admin.delete_app(app))
        db = gfs.Client(project=PROJECT)
        cleanup.append(db.close)
        user_ids = list(per_user)
        _import_auth_users(auth, app, user_ids)
        _wait_recorded(db, per_user, 60)
        _expire(db, user_ids, datetime.now(UTC) - EXPIRED_BY)
        log(f"T: {users:,} members recorded and expired; {users:,} Auth users; sweeping")

        defaults = SweepSettings(project_id=PROJECT, pong_timeout=PONG_TIMEOUT)
        notifier = TimedNotifier(HttpNotifier(callback_token, defaults.callback_timeout))
        sweep_started = time.time()
        report = sweep_firestore(defaults, db, app, notifier, datetime.now(UTC))
        log(f"T: sweep done in {report.duration_seconds:.1f}s: {report.summary()}")
        final = _wait_client(client, len(plan), 30)
        commits: dict[str, float] = {}
        signed_out = 0
        for snap in db.get_all([db.collection(MEMBERS).document(u) for u in user_ids]):
            commits[snap.id] = snap.update_time.timestamp()
            signed_out += (snap.to_dict() or {}).get(IS_SIGNED_IN) is False
        metrics = {}
        for gw in gateways:
            text = gw.http.get("/metrics").text
            metrics[gw.label] = {
                "timeouts_sent": _metric(text, "gateway_timeouts_sent"),
                "callbacks_received": _metric(text, "gateway_callbacks_received"),
            }
        client.command("stop")
        client.wait_for("stopped", 30)
        stack.remove(client)
        client.kill()
        for gw in gateways:
            gw.stop()
            stack.remove(gw)
    finally:
        for step in reversed(cleanup):
            try:
                step()
            except Exception as exc:
                log(f"T: cleanup step failed: {exc!r}")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return analyse(
        plan=plan,
        per_user=per_user,
        records=final["sockets"],
        commits=commits,
        calls=notifier.calls,
        labels={port: gw.label for port, gw in by_port.items()},
        urls={port: gw.internal_url for port, gw in by_port.items()},
        sweep_started_at=sweep_started,
        extra={
            "users": users,
            "signed_out_members": signed_out,
            "sweep_seconds": round(report.duration_seconds, 2),
            "sweep_report": report.summary(),
            "gateway_metrics": metrics,
            "client_lost": final["lost"],
        },
    )


def analyse(
    *,
    plan: Sequence[tuple[int, str]],
    per_user: dict[str, int],
    records: Sequence[Sequence[Any]],
    commits: dict[str, float],
    calls: Sequence[Call],
    labels: dict[int, str],
    urls: dict[int, str],
    sweep_started_at: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Latencies, their split, and the delivery counts from the raw records."""
    call_of: dict[tuple[str, str], Call] = {}
    for call in calls:
        for user in call.users:
            call_of[(user, call.url.rstrip("/"))] = call
    latencies: list[float] = []
    per_instance: dict[str, list[float]] = {label: [] for label in labels.values()}
    to_callback: list[float] = []
    in_gateway: list[float] = []
    worst_of_user: dict[str, float] = {}
    once = none = twice = code_4408 = implausible = 0
    for user, port, timeouts, timeout_at, close_code, _close_at in records:
        once += timeouts == 1
        none += timeouts == 0
        twice += timeouts > 1
        code_4408 += close_code == 4408
        if not timeout_at or user not in commits:
            continue
        latency = timeout_at - commits[user]
        # Either would mean update_time is not the sign-out's commit (see the docstring).
        implausible += latency < 0 or commits[user] < sweep_started_at
        latencies.append(latency)
        per_instance[labels[port]].append(latency)
        worst_of_user[user] = max(worst_of_user.get(user, latency), latency)
        found = call_of.get((user, urls[port]))
        if found is not None:
            to_callback.append(found.sent_at - commits[user])
            in_gateway.append(timeout_at - found.sent_at)
    pages = sorted({commits[u] for u in per_user if u in commits})
    durations = [c.answered_at - c.sent_at for c in calls]
    # A page's users share one commit: its first callback goes out after finalize returns and
    # the page's sessions batch commits; the others wait for the callbacks before them.
    first_call: dict[float, float] = {}
    for call in calls:
        if call.users and call.users[0] in commits:
            page = commits[call.users[0]]
            first_call[page] = min(first_call.get(page, call.sent_at), call.sent_at)
    return {
        "sockets": len(plan),
        "sockets_recorded": len(records),
        "second_sockets": len(plan) - len(per_user),
        "sockets_per_instance": {
            labels[port]: sum(1 for p, _ in plan if p == port) for port in labels
        },
        "exactly_one_timeout": once,
        "no_timeout": none,
        "more_than_one_timeout": twice,
        "closed_4408": code_4408,
        #: Sockets whose member's update_time is after their timeout frame or before the sweep.
        "implausible_commit_times": implausible,
        "latency": _spread(latencies),
        "latency_worst_socket_per_user": _spread(list(worst_of_user.values())),
        "latency_per_instance": {k: _spread(v) for k, v in per_instance.items()},
        "commit_to_first_callback_of_page": _spread([t - p for p, t in first_call.items()]),
        "commit_to_callback_sent": _spread(to_callback),
        "callback_sent_to_frame": _spread(in_gateway),
        "callback_duration": _spread(durations),
        "callbacks": len(calls),
        "callbacks_failed": sum(1 for c in calls if c.closed is None),
        "sockets_closed_by_callbacks": sum(c.closed or 0 for c in calls),
        "pages_committed": len(pages),
        **extra,
    }


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Summary rows for the benchmark table."""
    if not results:
        return []
    lat = results["latency"]
    per = results["sockets_per_instance"]
    complete = (
        results["exactly_one_timeout"] == results["sockets"] == results["sockets_recorded"]
        and results["closed_4408"] == results["sockets"]
    )
    sent, frame = results["commit_to_callback_sent"], results["callback_sent_to_frame"]
    first, took = results["commit_to_first_callback_of_page"], results["callback_duration"]
    metrics = results.get("gateway_metrics", {})
    # Timeouts the gateways sent beyond what the callbacks closed: a reconcile pass's.
    reconciled = int(
        sum((m.get("timeouts_sent") or 0) for m in metrics.values())
        - results["sockets_closed_by_callbacks"]
    )
    return [
        {
            "figure": f"timeout: sweep commit -> timeout frame, {results['users']:,} users "
            f"on {len(per)} instances",
            "value": f"p50 {lat['p50_ms']} / p99 {lat['p99_ms']} / max {lat['max_ms']} ms "
            f"({lat['count']:,} sockets"
            + (
                f", {results['implausible_commit_times']} implausible commit times)"
                if results["implausible_commit_times"]
                else ")"
            ),
            "target": f"p99 < {TARGET_P99_MS:g} ms",
            "ok": lat["p99_ms"] is not None
            and lat["p99_ms"] < TARGET_P99_MS
            and lat["count"] == results["sockets"]
            and results["implausible_commit_times"] == 0,
        },
        {
            "figure": "timeout: every socket one timeout frame, closed 4408",
            "value": f"{results['exactly_one_timeout']:,} of {results['sockets']:,} "
            f"({results['no_timeout']} none, {results['more_than_one_timeout']} twice, "
            f"{results['closed_4408']:,} closed 4408); per instance "
            + "/".join(str(n) for n in per.values()),
            "target": "all, exactly once",
            "ok": complete,
        },
        {
            "figure": "timeout: signed out by the sweep, closed by its callbacks",
            "value": f"{results['signed_out_members']:,} of {results['users']:,} users; "
            f"{results['sockets_closed_by_callbacks']:,} sockets in {results['callbacks']} "
            f"callbacks ({results['callbacks_failed']} failed), {max(reconciled, 0)} otherwise; "
            f"sweep {results['sweep_seconds']} s",
            "target": "all, by callback",
            "ok": results["signed_out_members"] == results["users"]
            and results["sockets_closed_by_callbacks"] == results["sockets"]
            and results["callbacks_failed"] == 0,
        },
        {
            "figure": "timeout: commit -> its callback sent / sent -> frame",
            "value": f"p50/p99 {sent['p50_ms']}/{sent['p99_ms']} ms / "
            f"{frame['p50_ms']}/{frame['p99_ms']} ms",
            "target": "-",
            "ok": None,
        },
        {
            "figure": "timeout: commit -> page's 1st callback; callback round trip",
            "value": f"p50/max {first['p50_ms']}/{first['max_ms']} ms over "
            f"{first['count']} pages; {took['p50_ms']}/{took['max_ms']} ms over "
            f"{took['count']} callbacks",
            "target": "-",
            "ok": None,
        },
    ]


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Per-instance latencies, printed under the table."""
    if not results:
        return []
    per = results["latency_per_instance"]
    worst = results["latency_worst_socket_per_user"]
    return [
        "timeout: per instance p50/p99/max ms: "
        + "; ".join(f"{k} {v['p50_ms']}/{v['p99_ms']}/{v['max_ms']}" for k, v in per.items())
        + f"; per user (worst socket) p99 {worst['p99_ms']} ms; "
        f"{results['pages_committed']} pages committed, {results['callbacks']} callbacks"
    ]
