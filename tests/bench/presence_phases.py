"""The presence scenario's phases (``presence_bench`` has the setup and the report): one
room across the three instances (joins, then closes, one member at a time) and the SIGKILL of
the instance holding a second room's members.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from gateway.storage.schema import HEARTBEAT_AT, INSTANCES, OFFLINE, ONLINE, PRESENCE_HOLDERS, SEQ
from tests.bench.fanout_bench import _instance_id, _metrics, _summary
from tests.bench.presence_probe import Member, until

if TYPE_CHECKING:
    from tests.bench.runner import Gateway

COUNT = 3
#: Members of the first room: with the three observers, under PRESENCE_ROOM_CAP (100).
USERS = 96
#: Members held by the instance that is killed.
CRASH_USERS = 50
#: Seconds between two members' joins (or closes): longer than the presence writer's 0.1 s
#: batch, so most transitions are timed alone and the watch sees every version.
SPACING = 0.25
#: Up to this much more, at random, so the changes fall anywhere in the diff interval.
JITTER = 0.1
#: Gateways beat every second and the sweep runs every second: a lost instance counts as
#: lost 3 s after its last heartbeat (INSTANCE_STALE_AFTER), not 3 minutes.
SWEEP_INTERVAL = 1.0
STALE_AFTER = 3 * SWEEP_INTERVAL
#: The gateway's default PRESENCE_DIFF_INTERVAL (not set): the figures are the default's.
DIFF_INTERVAL = 1.0
PING_INTERVAL = 10.0
TOPIC = "bench-presence"
WAIT = 60.0


def _sum_kind(metrics: dict[str, dict[str, float]], family: str, kind: str) -> float:
    head = f'{family}{{kind="{kind}",'
    return sum(v for samples in metrics.values() for k, v in samples.items() if k.startswith(head))


def _pubsub(m0: dict[str, Any], m1: dict[str, Any], changes: int, seconds: float) -> dict[str, Any]:
    published = _sum_kind(m1, "gateway_fanout_published_total", "presence") - _sum_kind(
        m0, "gateway_fanout_published_total", "presence"
    )
    pulled = _sum_kind(m1, "gateway_fanout_received_total", "presence") - _sum_kind(
        m0, "gateway_fanout_received_total", "presence"
    )
    digests = _sum_kind(m1, "gateway_fanout_published_total", "presence_digest") - _sum_kind(
        m0, "gateway_fanout_published_total", "presence_digest"
    )
    return {
        "changes": changes,
        "published": round(published),
        "pulled": round(pulled),
        "published_per_change": round(published / max(changes, 1), 2),
        "pulled_per_published": round(pulled / max(published, 1), 2),
        "digests_per_second": round(digests / max(seconds, 1e-9), 2),
    }


def _where(gateways: list[Gateway]) -> dict[str, str]:
    """user -> the instance holding their socket, asked of each instance."""
    out: dict[str, str] = {}
    for gw in gateways:
        body = gw.http.get("/ws/stats", params={"scope": "instance"}).json()
        out.update(dict.fromkeys(body["connected_users"], body["instance_id"]))
    return out


def _across(
    observers: list[Member], where: dict[str, str], stamps: dict[str, float], seen: str
) -> tuple[list[float], list[float]]:
    """Latencies from each member's stamp to each observer's receipt (``seen``: joins or
    leaves): to observers on other instances, and to the one on the member's own."""
    other: list[float] = []
    same: list[float] = []
    for observer in observers:
        got = getattr(observer, seen)
        for user, at in stamps.items():
            if user in got:
                near = where[observer.user] == where[user]
                (same if near else other).append(got[user] - at)
    return other, same


async def _rooms(ctx: dict[str, Any]) -> dict[str, Any]:
    """Phases 1 and 2: one room across the three instances."""
    gateways, watch, base, rng = ctx["gateways"], ctx["watch"], ctx["proxy_ws"], ctx["rng"]
    n = ctx["users"]
    observers = [await Member.open(base, f"po-{k}") for k in range(COUNT)]
    members: list[Member] = []
    opened: dict[str, float] = {}
    ctx["opened"] = [*observers]
    for i in range(n):
        members.append(await Member.open(base, f"pm-{i:03d}"))
        opened[members[-1].user] = time.time()
        ctx["opened"].append(members[-1])
    where = await asyncio.to_thread(_where, gateways)
    if len({where[o.user] for o in observers}) != COUNT:
        raise RuntimeError(f"presence: observers not one per instance: {where}")
    names = [m.user for m in members]
    await until(lambda: all(watch.first(u, ONLINE) for u in names), WAIT, "all online")
    online = [(watch.first(u, ONLINE), opened[u]) for u in names]
    room = "doc:bench-presence"
    for observer in observers:
        await observer.join(room)
    await asyncio.sleep(1)  # the observers' own notices go out before the count starts
    m0, t0 = await asyncio.to_thread(_metrics, gateways), time.monotonic()
    joined: dict[str, float] = {}
    for member in members:
        joined[member.user] = time.time()
        await member.send_join(room)
        await asyncio.sleep(SPACING + rng.random() * JITTER)
    await until(
        lambda: all(u in o.joins for o in observers for u in names), WAIT, "every join seen"
    )
    m1, t1 = await asyncio.to_thread(_metrics, gateways), time.monotonic()
    closed: dict[str, float] = {}
    for member in members:
        closed[member.user] = time.time()
        await member.close()
        await asyncio.sleep(SPACING + rng.random() * JITTER)
    await until(
        lambda: (
            all(u in o.leaves for o in observers for u in names)
            and all(watch.first(u, OFFLINE, closed[u]) for u in names)
        ),
        WAIT,
        "every leave seen and every user offline",
    )
    m2, t2 = await asyncio.to_thread(_metrics, gateways), time.monotonic()
    offline = [(watch.first(u, OFFLINE, closed[u]), closed[u]) for u in names]
    join_other, join_same = _across(observers, where, joined, "joins")
    leave_other, leave_same = _across(observers, where, closed, "leaves")
    presence_versions, holders_versions, transactions = watch.commits(names)
    db = ctx["db"]
    refs = [db.collection(PRESENCE_HOLDERS).document(u) for u in names]
    seqs = [(s.to_dict() or {}).get(SEQ) for s in await asyncio.to_thread(db.get_all, refs)]
    for observer in observers:
        await observer.close()
    return {
        "users": n,
        "per_instance": {i: sum(1 for u in names if where[u] == i) for i in set(where.values())},
        "online_commit": _summary([v.committed - at for v, at in online if v]),
        "online_watch": _summary([v.received - at for v, at in online if v]),
        "offline_commit": _summary([v.committed - at for v, at in offline if v]),
        "offline_watch": _summary([v.received - at for v, at in offline if v]),
        "join_other": _summary(join_other),
        "join_same": _summary(join_same),
        "leave_other": _summary(leave_other),
        "leave_same": _summary(leave_same),
        "diffs_per_observer": [o.diffs for o in observers],
        "refused": sum(len(m.errors) for m in members),
        "writes_per_session": round((presence_versions + holders_versions) / n, 2),
        "presence_writes_per_session": round(presence_versions / n, 2),
        "holders_writes_per_session": round(holders_versions / n, 2),
        "transactions_per_session": round(transactions / n, 2),
        "transitions_per_session": round(sum(s for s in seqs if isinstance(s, int)) / n, 2),
        "pubsub_joins": _pubsub(m0, m1, n, t1 - t0),
        "pubsub_leaves": _pubsub(m1, m2, n, t2 - t1),
    }


async def _crash(ctx: dict[str, Any]) -> dict[str, Any]:
    """Phase 3: SIGKILL the instance holding CRASH_USERS members of a room."""
    gateways, watch, db = ctx["gateways"], ctx["watch"], ctx["db"]
    victim, survivors = gateways[-1], gateways[:-1]
    watchers = [
        await Member.open(f"ws://127.0.0.1:{gw.port}", f"pw-{k}") for k, gw in enumerate(survivors)
    ]
    doomed = await asyncio.gather(
        *(
            Member.open(f"ws://127.0.0.1:{victim.port}", f"pk-{i:03d}")
            for i in range(ctx["crash_users"])
        )
    )
    ctx["opened"] += [*watchers, *doomed]
    names = [d.user for d in doomed]
    room = "doc:bench-crash"
    for watcher in watchers:
        await watcher.join(room)
    await asyncio.gather(*(d.join(room) for d in doomed))
    await until(
        lambda: (
            all(u in w.joins for w in watchers for u in names)
            and all(watch.first(u, ONLINE) for u in names)
        ),
        WAIT,
        "the doomed members joined and online",
    )
    ctx["schedule"]()
    await asyncio.sleep(3 * SWEEP_INTERVAL)  # the sweep's first runs, before the kill
    killed = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    await until(
        lambda: (
            all(u in w.leaves for w in watchers for u in names)
            and all(watch.first(u, OFFLINE, killed) for u in names)
        ),
        WAIT,
        "every leave of the killed instance's users and every one offline",
    )
    offline = [watch.first(u, OFFLINE, killed) for u in names]
    beat = await asyncio.to_thread(
        lambda: db.collection(INSTANCES).document(_instance_id(victim)).get().to_dict() or {}
    )
    last_beat = beat.get(HEARTBEAT_AT)
    rooms = [
        (await asyncio.to_thread(gw.http.get, f"/ws/rooms/{room}/presence")).json()["users"]
        for gw in survivors
    ]
    return {
        "users": len(names),
        "killed_at": killed,
        "leaves_all_seen_s": round(max(w.leaves[u] for w in watchers for u in names) - killed, 2),
        "leaves": _summary([w.leaves[u] - killed for w in watchers for u in names]),
        "leaves_by_observer_s": [
            round(max(w.leaves[u] for u in names) - killed, 2) for w in watchers
        ],
        "offline_all_committed_s": round(max(v.committed for v in offline if v) - killed, 2),
        "offline_all_watched_s": round(max(v.received for v in offline if v) - killed, 2),
        "last_heartbeat_before_kill_s": round(killed - last_beat.timestamp(), 2)
        if last_beat
        else None,
        "room_users_after": rooms,
        "bound_firestore_s": STALE_AFTER + SWEEP_INTERVAL,
        # An instance's watch pass runs every SWEEP_INTERVAL and drops a lost instance's
        # entries one pass after it first finds it stale; then the next diff.
        "bound_room_s": STALE_AFTER + 2 * SWEEP_INTERVAL + DIFF_INTERVAL,
    }


async def drive(ctx: dict[str, Any]) -> dict[str, Any]:
    ctx["opened"] = []
    try:
        return {"rooms": await _rooms(ctx), "crash": await _crash(ctx)}
    finally:
        await asyncio.gather(*(m.close() for m in ctx["opened"]), return_exceptions=True)
