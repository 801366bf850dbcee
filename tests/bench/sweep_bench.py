"""Sweep throughput against the Firestore and Auth emulators (part of ``make bench``).

Seeds N members of which E have a last pong 4 hours old (each with one active session and an
Auth account; every member with its shard, as the gateway writes it), runs the real sweep
(FirestoreMembers, FirebaseAuth, HttpNotifier against a local callback server) and times it.
Three populations with the same 10,000 expired users show whether the cost follows the
expired users or the members.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from emulator import procs
from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    HEARTBEAT_AT,
    INSTANCE_ID,
    INSTANCES,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    MEMBERS,
    SESSIONS,
    SHARD,
    USER_ID,
    member_shard,
)

PROJECT = "demo-bench-sweep"
SCENARIOS = ((10_000, 50_000), (10_000, 10_000), (10_000, 100_000))
TARGET_SECONDS = 60.0
TARGET_RATIO = 1.5


class _Callback(BaseHTTPRequestHandler):
    closed = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with _Callback.lock:
            _Callback.closed += len(body["sessions"])
        answer = json.dumps({"status": "success", "closed": len(body["sessions"])}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        return None


def _seed(db: Any, auth: Any, app: Any, expired: int, total: int, url: str) -> float:
    started = time.monotonic()
    now = datetime.now(UTC)
    old = now - timedelta(hours=4)
    for start in range(0, expired, 1000):
        users = [
            auth.ImportUserRecord(uid=f"x{i}") for i in range(start, min(expired, start + 1000))
        ]
        result = auth.import_users(users, app=app)
        assert result.failure_count == 0, result.errors
    # The sessions name their instance, as the gateway records them; the sweep finds its
    # callback URL in the instance's registry entry.
    db.collection(INSTANCES).document("bench").set({INTERNAL_URL: url, HEARTBEAT_AT: now})
    batch, count = db.batch(), 0
    where = {INSTANCE_ID: "bench"}
    for i in range(total):
        if i < expired:
            batch.set(
                db.collection(MEMBERS).document(f"x{i}"),
                {
                    IS_SIGNED_IN: True,
                    LAST_PONG_AT: old,
                    ACTIVE_SESSIONS: {f"s{i}": where},
                    SHARD: member_shard(f"x{i}"),
                },
            )
            batch.set(
                db.collection(SESSIONS).document(f"s{i}"),
                {USER_ID: f"x{i}", IS_ACTIVE: True, **where},
            )
            count += 2
        else:
            batch.set(
                db.collection(MEMBERS).document(f"m{i}"),
                {IS_SIGNED_IN: True, LAST_PONG_AT: now, SHARD: member_shard(f"m{i}")},
            )
            count += 1
        if count >= 498:
            batch.commit()
            batch, count = db.batch(), 0
    if count:
        batch.commit()
    return time.monotonic() - started


def _clear(fs_host: str, auth_host: str) -> None:
    httpx.delete(
        f"http://{fs_host}/emulator/v1/projects/{PROJECT}/databases/(default)/documents",
        timeout=60,
    ).raise_for_status()
    httpx.delete(
        f"http://{auth_host}/emulator/v1/projects/{PROJECT}/accounts", timeout=60
    ).raise_for_status()


def run(run_dir: Path, log: Any) -> dict[str, Any]:
    """Start the emulators, run the three scenarios, return their figures."""
    import sys

    sys.path.insert(0, str(procs.ROOT / "functions"))
    fs_port, auth_port = procs.free_port(), procs.free_port()
    fs_host, auth_host = f"127.0.0.1:{fs_port}", f"127.0.0.1:{auth_port}"
    firestore = procs.firestore_process("127.0.0.1", fs_port, run_dir)
    firestore.log_path = run_dir / "sweep-firestore.log"
    auth_emulator = procs.auth_process("127.0.0.1", auth_port, PROJECT, run_dir)
    auth_emulator.log_path = run_dir / "sweep-auth.log"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Callback)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    callback_url = f"http://127.0.0.1:{server.server_address[1]}"
    saved = {
        k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST")
    }
    results: dict[str, Any] = {"scenarios": []}
    try:
        firestore.start()
        auth_emulator.start()
        firestore.wait_ready(60)
        auth_emulator.wait_ready(120)
        os.environ["FIRESTORE_EMULATOR_HOST"] = fs_host
        os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = auth_host
        import firebase_admin
        from firebase_admin import auth
        from google.cloud import firestore as gfs

        from presence_sweep.adapters import HttpNotifier, sweep_firestore
        from presence_sweep.settings import SweepSettings

        app = firebase_admin.initialize_app(options={"projectId": PROJECT}, name="bench-sweep")
        db = gfs.Client(project=PROJECT)
        # The deployed defaults, with the pong timeout the seeded members were expired by.
        defaults = SweepSettings(project_id=PROJECT, pong_timeout=3 * 3600)
        for expired, total in SCENARIOS:
            _clear(fs_host, auth_host)
            _Callback.closed = 0
            seeded = _seed(db, auth, app, expired, total, callback_url)
            log(f"sweep: seeded {total:,} members ({expired:,} expired) in {seeded:.1f}s")
            report = sweep_firestore(
                defaults, db, app, HttpNotifier("bench-callback-token", 10), datetime.now(UTC)
            )
            row = {
                "expired": expired,
                "members": total,
                "seconds": round(report.duration_seconds, 1),
                "signed_out": report.signed_out,
                "sessions_closed": _Callback.closed,
                "users_per_second": round(report.signed_out / report.duration_seconds, 1),
                "ok": report.ok,
            }
            results["scenarios"].append(row)
            log(f"sweep: {row}")
        db.close()
        firebase_admin.delete_app(app)
    finally:
        server.shutdown()
        auth_emulator.stop()
        firestore.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    by = {(r["expired"], r["members"]): r for r in results["scenarios"]}
    small, large = by.get((10_000, 10_000)), by.get((10_000, 100_000))
    if small and large and small["seconds"]:
        results["ratio_100k_to_10k"] = round(large["seconds"] / small["seconds"], 2)
    return results


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Summary rows for the benchmark table."""
    out: list[dict[str, Any]] = []
    for r in results.get("scenarios", []):
        complete = r["signed_out"] == r["expired"] == r["sessions_closed"]
        out.append(
            {
                "figure": f"sweep {r['expired']:,} expired among {r['members']:,} members",
                "value": f"{r['seconds']} s ({r['users_per_second']:.0f} users/s, "
                f"{r['signed_out']:,} signed out, {r['sessions_closed']:,} sockets called back)",
                "target": f"< {TARGET_SECONDS:g} s, all signed out"
                if r["members"] == 50_000
                else "all signed out",
                "ok": complete and (r["members"] != 50_000 or r["seconds"] < TARGET_SECONDS),
            }
        )
    if "ratio_100k_to_10k" in results:
        out.append(
            {
                "figure": "sweep time 100k members / 10k members (10k expired each)",
                "value": f"{results['ratio_100k_to_10k']}",
                "target": f"< {TARGET_RATIO}",
                "ok": results["ratio_100k_to_10k"] < TARGET_RATIO,
            }
        )
    return out
