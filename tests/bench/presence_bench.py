"""Presence across three instances behind the round-robin proxy (``--only presence``).

Three gateways on one Pub/Sub topic (gcloud's emulator) behind ``tests/proxy.py``, with
``PRESENCE_GRACE=0`` (a close counts at once: the grace, 5 s by default, adds exactly its
value to every close figure), the default ``PRESENCE_DIFF_INTERVAL`` (1 s) and
``SWEEP_INTERVAL=1`` (a heartbeat a second; an instance is lost after 3 s without one). The
clients are asyncio sockets in this process (``presence_probe.Member``), a Firestore
``on_snapshot`` watch stamps every version of the users' presence documents.

1. **Join**: three observers (one per instance: consecutive connects through the proxy) and
   ``USERS`` members connect (a third on each instance) and join one presence room, the
   members one at a time ``SPACING`` s apart (plus up to ``JITTER``, so joins fall anywhere in
   the diff interval): join sent -> the ``presence_diff`` naming the member at each observer
   on another instance. Also socket opened -> ``presence/{uid}`` online.
2. **Close**, one member at a time, as far apart: close started -> ``presence/{uid}`` reads
   ``offline`` (its commit time, and the watch's delivery), and -> the diff with the leave at
   each observer on another instance.
3. **Crash**: ``CRASH_USERS`` members connected straight to the third instance and two
   observers on the others join a second room; the sweep function runs every second under the
   local scheduler; the third instance is SIGKILLed: kill -> every observer has seen all the
   leaves, and -> every one of those users' presence documents reads offline.

Cost: Firestore writes per session are counted from the watch (versions of ``presence`` and
``presence_holders``) and transactions from their distinct commit times (one transaction
writes the holders record of each user in it); reads are the code's (1 per user per
transaction attempt: the gateway exports no presence counters). Pub/Sub from the gateways'
``/metrics``: ``presence`` notices published and pulled, ``presence_digest`` notices per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from emulator import procs
from tests.bench.fanout_bench import _firestore, start_fanout_gateways
from tests.bench.presence_phases import (
    COUNT,
    CRASH_USERS,
    DIFF_INTERVAL,
    PING_INTERVAL,
    SWEEP_INTERVAL,
    TOPIC,
    USERS,
    drive,
)
from tests.bench.presence_probe import Watch

__all__ = ["USERS", "rows", "run"]

#: The sweep's PONG_TIMEOUT (its default, 3 h, spelt out: a run's start is read back from its
#: report's cutoff). Nobody expires meanwhile, so the sweep never reaches Auth.
SWEEP_PONG_TIMEOUT = 10_800.0


def run(fs_host: str, args: argparse.Namespace, stack: list[Any]) -> dict[str, Any]:
    from tests.bench.runner import PROJECT, RUN_DIR, Owned, clear_firestore, log, start_pubsub

    users = min(USERS, args.presence_users)
    crash_users = min(CRASH_USERS, args.presence_users)
    log(f"presence: {users} users in a room on {COUNT} instances, then {crash_users} lost")
    clear_firestore(fs_host)
    started = time.monotonic()
    callback = f"bench-callback-{secrets.token_hex(12)}"
    with Owned(stack) as own:
        pubsub, pubsub_host = start_pubsub(own, "presence")
        pubsub.wait_ready(60)
        admin = secrets.token_urlsafe(24)
        env = {
            "GATEWAY_ADMIN_TOKEN": admin,
            "PUBSUB_TOPIC": TOPIC,
            "PUBSUB_EMULATOR_HOST": pubsub_host,
            "GATEWAY_CALLBACK_TOKEN": callback,
            "SWEEP_INTERVAL": f"{SWEEP_INTERVAL:g}",
            "PRESENCE_GRACE": "0",
            "PRESENCE_ROOM_PREFIXES": "doc:",
            "WS_PUBLIC_ROOM_PREFIXES": "doc:",
        }
        gateways = start_fanout_gateways(
            own, fs_host, args, "presence", admin, env, count=COUNT, ping_interval=PING_INTERVAL
        )
        proxy_port = procs.free_port()
        proxy = own(
            procs.Process(
                "proxy",
                [sys.executable, "-m", "tests.proxy", str(proxy_port)]
                + [str(gw.port) for gw in gateways],
                f"tcp://127.0.0.1:{proxy_port}",
                RUN_DIR / "presence-proxy.log",
            )
        )
        proxy.start()
        proxy.wait_ready(30)
        function_port = procs.free_port()
        function = own(
            procs.function_process(
                {
                    "FIRESTORE_EMULATOR_HOST": fs_host,
                    # An address nobody listens on: no one expires, so nothing is revoked, and
                    # a mistake could never reach a real Auth.
                    "FIREBASE_AUTH_EMULATOR_HOST": f"127.0.0.1:{procs.free_port()}",
                    "GOOGLE_CLOUD_PROJECT": PROJECT,
                    "GATEWAY_CALLBACK_TOKEN": callback,
                    "GATEWAY_URL": f"http://127.0.0.1:{proxy_port}",
                    "SWEEP_INTERVAL": f"{SWEEP_INTERVAL:g}",
                    "PONG_TIMEOUT": f"{SWEEP_PONG_TIMEOUT:g}",
                },
                "127.0.0.1",
                function_port,
                RUN_DIR,
            )
        )
        function.log_path = RUN_DIR / "presence-sweep.log"
        function.start()
        function.wait_ready(60)

        def schedule() -> None:
            url = f"http://127.0.0.1:{function_port}/"
            scheduler = own(procs.scheduler_process(url, SWEEP_INTERVAL, RUN_DIR))
            scheduler.log_path = RUN_DIR / "presence-scheduler.log"
            scheduler.start()

        with _firestore(fs_host, PROJECT) as db:
            watch = Watch(db)
            ctx = {
                "gateways": gateways,
                "watch": watch,
                "db": db,
                "proxy_ws": f"ws://127.0.0.1:{proxy_port}",
                "rng": random.Random(22),
                "users": users,
                "crash_users": crash_users,
                "schedule": schedule,
            }
            try:
                result = asyncio.run(drive(ctx))
            finally:
                watch.stop()
    # After the function stopped: its report lines are flushed on exit.
    crash = result["crash"]
    crash["sweep"] = _sweep_runs(RUN_DIR / "presence-sweep.log", crash["killed_at"])
    result |= {
        "instances": COUNT,
        "presence_grace": 0,
        "diff_interval": DIFF_INTERVAL,
        "sweep_interval": SWEEP_INTERVAL,
        "seconds": round(time.monotonic() - started, 1),
    }
    rooms, crash = result["rooms"], result["crash"]
    log(
        f"presence: close -> offline p50/p99 {rooms['offline_commit']['p50_ms']}/"
        f"{rooms['offline_commit']['p99_ms']} ms; leave across {rooms['leave_other']['p50_ms']}/"
        f"{rooms['leave_other']['p99_ms']} ms; crash: leaves {crash['leaves_all_seen_s']} s, "
        f"offline {crash['offline_all_committed_s']} s"
    )
    return result


def _sweep_runs(path: Path, killed: float) -> dict[str, Any]:
    """The sweep's reports (one JSON line per run): how long a run took, and when the run
    that reaped the instance started (its ``cutoff`` is its start less PONG_TIMEOUT) and
    ended, in seconds after the kill."""
    reports = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if '"sweep report"' in line:
                with contextlib.suppress(ValueError):
                    reports.append(json.loads(line[line.index("{") :]))
    reaping = [r for r in reports if r.get("instances_reaped")]
    durations = [float(r["duration_seconds"]) for r in reports if "duration_seconds" in r]
    out: dict[str, Any] = {
        "runs": len(reports),
        "run_seconds_p50": round(statistics.median(durations), 2) if durations else None,
        "reaping_runs": len(reaping),
        "users_offline": sum(r.get("users_offline", 0) for r in reaping),
        "sessions_reaped": sum(r.get("sessions_reaped", 0) for r in reaping),
    }
    if reaping:
        first = reaping[0]
        start = datetime.fromisoformat(first["cutoff"]).timestamp() + SWEEP_PONG_TIMEOUT
        out["reaping_run_started_s"] = round(start - killed, 2)
        out["reaping_run_seconds"] = first["duration_seconds"]
    return out


def _pq(s: dict[str, Any]) -> str:
    return f"{s['p50_ms']:.0f} / {s['p99_ms']:.0f} / {s['max_ms']:.0f} ms" if s["count"] else "-"


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    if not result:
        return []
    r, c = result["rooms"], result["crash"]
    sw = c["sweep"]
    where = f"{r['users']} users, {result['instances']} instances via the proxy"
    ps_j, ps_l = r["pubsub_joins"], r["pubsub_leaves"]
    return [
        {
            "figure": f"presence: close -> presence/{{uid}} offline, commit / watch p50/p99/max "
            f"({where}, PRESENCE_GRACE=0: the grace adds its value)",
            "value": f"{_pq(r['offline_commit'])}; {_pq(r['offline_watch'])}",
            "target": "-",
            "ok": None,
        },
        {
            "figure": "presence: socket open -> presence/{uid} online, commit / watch p50/p99/max",
            "value": f"{_pq(r['online_commit'])}; {_pq(r['online_watch'])}",
            "target": "-",
            "ok": None,
        },
        {
            "figure": "presence: close -> leave in a diff at a member on another instance "
            f"(same instance), p50/p99/max, PRESENCE_DIFF_INTERVAL={DIFF_INTERVAL:g} s",
            "value": f"{_pq(r['leave_other'])} ({_pq(r['leave_same'])}) over "
            f"{r['leave_other']['count']} pairs",
            "target": f"p99 < {DIFF_INTERVAL:g} s + 0.5 s",
            "ok": r["leave_other"]["count"] == 2 * r["users"]
            and r["leave_other"]["p99_ms"] < 1000 * DIFF_INTERVAL + 500,
        },
        {
            "figure": "presence: join -> diff naming it at a member on another instance "
            "(same instance), p50/p99/max",
            "value": f"{_pq(r['join_other'])} ({_pq(r['join_same'])}) over "
            f"{r['join_other']['count']} pairs; {r['refused']} joins refused",
            "target": "all seen",
            "ok": r["join_other"]["count"] == 2 * r["users"] and not r["refused"],
        },
        {
            "figure": f"presence: SIGKILL of the instance holding {c['users']} members "
            "-> every other member saw every leave / every presence doc offline (commit, watch)",
            "value": f"{c['leaves_all_seen_s']} s (each observer: {c['leaves_by_observer_s']}) / "
            f"{c['offline_all_committed_s']} s, "
            f"{c['offline_all_watched_s']} s (last heartbeat {c['last_heartbeat_before_kill_s']} "
            f"s before the kill; room users after {c['room_users_after']}; the sweep's reaping "
            f"run started {sw.get('reaping_run_started_s')} s after the kill, took "
            f"{sw.get('reaping_run_seconds')} s, turned {sw['users_offline']} users offline; "
            f"a run takes {sw['run_seconds_p50']} s, p50)",
            "target": f"offline <= {c['bound_firestore_s']:g} s (INSTANCE_STALE_AFTER + "
            f"SWEEP_INTERVAL); leaves ~{c['bound_room_s']:g} s",
            "ok": c["offline_all_committed_s"] <= c["bound_firestore_s"]
            and all(n == 2 for n in c["room_users_after"]),
        },
        {
            "figure": "presence: Firestore per user session (connect + disconnect): writes "
            "(presence + holders, watched), transactions (commit times), transitions",
            "value": f"{r['writes_per_session']} ({r['presence_writes_per_session']} + "
            f"{r['holders_writes_per_session']}), {r['transactions_per_session']}, "
            f"{r['transitions_per_session']}; reads 2 (1 per user per transaction, from the code)",
            "target": "-",
            "ok": None,
        },
        {
            "figure": "presence: Pub/Sub `presence` notices published per join / leave, "
            "pulled per notice; digests/s (all instances)",
            "value": f"{ps_j['published_per_change']} / {ps_l['published_per_change']}, "
            f"{ps_j['pulled_per_published']} / {ps_l['pulled_per_published']}; "
            f"{statistics.mean([ps_j['digests_per_second'], ps_l['digests_per_second']]):.2f}",
            "target": "-",
            "ok": None,
        },
    ]
