"""Durable delivery against the plain send (``--only durable``).

Three gateway processes (``AUTH_MODE=off``, one ``PUBSUB_TOPIC`` on gcloud's Pub/Sub emulator,
started here and stopped at the end) on the runner's Firestore emulator. ``USERS`` sockets,
opened by this process with ``?recover=true`` and spread over the instances (user k on
instance k mod 3), answer pings (every 60 s: none in the windows) and acknowledge durable
messages as the clients do (one ``stream_ack`` per ``ACK_INTERVAL``).

1. **plain** and then **durable**: ``SENDS`` sends each, ``CONCURRENCY`` in flight, each to a
   random user through a random instance (so two in three go through Pub/Sub); each sender has
   users of its own, so no two sends to one user are in flight at once. Latency: the
   REST call's start to the socket's receipt of the frame (same clock). Throughput: sends over
   the time until the last frame arrived.
2. **Firestore writes per durable message**: each append is one transaction (1 read, 2 writes:
   the head, the entry); the acknowledgements are what the instances' write-behind buffers
   committed during the durable window (``gateway_firestore_writes_total``, no pongs in it),
   per message.
3. **recovery**: ``RECOVERIES`` times, a user's socket closes, ``MISSED`` durable messages
   are sent to it, and it reconnects to another instance with its epoch and offset; the time
   from opening the socket to the ``recovery`` frame, all ``MISSED`` replayed before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import time
from typing import TYPE_CHECKING, Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

if TYPE_CHECKING:
    from tests.bench.runner import Gateway

INSTANCES = 3
USERS = 60
SENDS = 1_000
CONCURRENCY = 16
MISSED = 300
RECOVERIES = 5
ACK_INTERVAL = 0.5
PING_INTERVAL = 60.0
TOPIC = "bench-durable"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


class Socket:
    """One user's socket: stamps each frame's arrival, acknowledges stream frames."""

    def __init__(self, user: str, ws: ClientConnection) -> None:
        self.user = user
        self.ws = ws
        self.arrived: dict[str, float] = {}
        self.position: tuple[str, int] = ("", 0)
        self.recovery: dict[str, Any] | None = None
        self.recovered_at = 0.0
        self.replayed = 0
        self._acked = 0
        self.reader = asyncio.create_task(self._read())
        self.acker = asyncio.create_task(self._ack())

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "ping":
                await self.ws.send('{"type":"pong"}')
            elif kind == "stream":
                epoch, offset = frame["epoch"], frame["offset"]
                if epoch == self.position[0] and offset <= self.position[1]:
                    continue  # a duplicate, dropped by offset as the clients do
                self.position = (epoch, max(offset, self.position[1]))
                if self.recovery is None:
                    self.replayed += 1
                self.arrived[frame["data"]["id"]] = time.monotonic()
            elif kind == "recovery":
                self.recovery = frame
                self.recovered_at = time.monotonic()
                if not frame["recovered"] or frame["offset"] > self.position[1]:
                    self.position = (frame["epoch"], frame["offset"])
            elif kind == "bench":
                self.arrived[frame["id"]] = time.monotonic()

    async def _ack(self) -> None:
        while True:
            await asyncio.sleep(ACK_INTERVAL)
            epoch, offset = self.position
            if offset != self._acked:
                self._acked = offset
                ack = {"type": "stream_ack", "epoch": epoch, "offset": offset}
                await self.ws.send(json.dumps(ack))

    async def close(self) -> None:
        self.acker.cancel()
        await self.ws.close()
        await asyncio.gather(self.reader, self.acker, return_exceptions=True)


async def _open(gateway: Gateway, user: str, position: tuple[str, int] | None) -> Socket:
    query = "recover=true"
    if position is not None:
        query += f"&epoch={position[0]}&offset={position[1]}"
    ws = await connect(f"ws://127.0.0.1:{gateway.port}/ws/connect/{user}?{query}")
    socket = Socket(user, ws)
    if position is not None:
        socket.position = position
    return socket


async def _sends(
    gateways: list[Gateway],
    sockets: list[Socket],
    admin: str,
    durable: bool,
    count: int,
) -> dict[str, Any]:
    """``count`` sends, CONCURRENCY at a time; latency to receipt, throughput to the last."""
    kind = "durable" if durable else "plain"
    started: dict[str, tuple[float, Socket]] = {}
    clients = [
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gw.port}",
            headers={"Authorization": f"Bearer {admin}"},
            timeout=30,
        )
        for gw in gateways
    ]
    queue = list(range(count))
    params = {"durable": "true"} if durable else {}
    failures = 0

    async def worker(mine: list[Socket]) -> None:
        nonlocal failures
        while queue:
            n = queue.pop()
            socket = random.choice(mine)
            key = f"{kind}-{n}"
            started[key] = (time.monotonic(), socket)
            body = {"type": "bench", "id": key}
            response = await random.choice(clients).post(
                f"/ws/send/{socket.user}", params=params, json=body
            )
            if response.status_code != 200:
                failures += 1

    t0 = time.monotonic()
    # Each worker sends to users of its own: no two sends to one user are in flight at once.
    # (Concurrent appends to one stream take turns on its head document; the emulator's
    # pessimistic locks make that far slower than Firestore, see docs/benchmarks.md.)
    await asyncio.gather(*(worker(sockets[i::CONCURRENCY]) for i in range(CONCURRENCY)))
    deadline = time.monotonic() + 60
    while any(key not in s.arrived for key, (_, s) in started.items()):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    arrivals = [s.arrived[k] for k, (_, s) in started.items() if k in s.arrived]
    latencies = [s.arrived[k] - t for k, (t, s) in started.items() if k in s.arrived]
    for client in clients:
        await client.aclose()
    elapsed = max(arrivals) - t0 if arrivals else float("nan")
    return {
        "sends": count,
        "delivered": len(latencies),
        "failed": failures,
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": _pct(latencies, 0.99),
    }


async def _recovery(gateways: list[Gateway], admin: str, round_: int) -> dict[str, Any]:
    """A socket misses MISSED durable messages and reconnects to the next instance."""
    user = f"bench-recover-{round_}-{secrets.token_hex(3)}"
    first = gateways[round_ % INSTANCES]
    socket = await _open(first, user, None)
    while socket.recovery is None:
        await asyncio.sleep(0.01)
    await socket.close()
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{first.port}", headers=headers, timeout=30
    ) as http:
        for n in range(MISSED):
            response = await http.post(
                f"/ws/send/{user}", params={"durable": "true"}, json={"type": "bench", "id": n}
            )
            response.raise_for_status()
    other = gateways[(round_ + 1) % INSTANCES]
    t0 = time.monotonic()
    again = await _open(other, user, socket.position)
    while again.recovery is None:
        await asyncio.sleep(0.005)
    seconds = again.recovered_at - t0
    await again.close()
    assert again.recovery is not None
    return {
        "seconds": round(seconds, 3),
        "recovered": again.recovery["recovered"],
        "missed": again.recovery["missed"],
        "replayed": again.replayed,
    }


def run(fs_host: str, args: argparse.Namespace, stack: list[Any]) -> dict[str, Any]:
    """The durable scenario: Pub/Sub emulator, three gateways, sockets in this process."""
    from tests.bench.fanout_bench import _metrics, start_fanout_gateways
    from tests.bench.runner import Owned, clear_firestore, log, start_pubsub

    log(f"D: durable against plain sends, {USERS} sockets on {INSTANCES} instances")
    clear_firestore(fs_host)
    with Owned(stack) as own:
        pubsub, pubsub_host = start_pubsub(own, "durable")
        pubsub.wait_ready(60)
        admin = secrets.token_urlsafe(24)
        env = {
            "GATEWAY_ADMIN_TOKEN": admin,
            "PUBSUB_TOPIC": TOPIC,
            "PUBSUB_EMULATOR_HOST": pubsub_host,
            "WS_MAX_MESSAGES_PER_SECOND": "0",
        }
        gateways = start_fanout_gateways(
            own, fs_host, args, "durable", admin, env, count=INSTANCES, ping_interval=PING_INTERVAL
        )
        return asyncio.run(_measure(gateways, admin, _metrics, log))


def _writes(metrics: dict[str, dict[str, float]], name: str) -> float:
    return sum(m.get(name, 0.0) for m in metrics.values())


async def _measure(gateways: list[Gateway], admin: str, metrics: Any, log: Any) -> dict[str, Any]:
    sockets = [
        await _open(gateways[k % INSTANCES], f"bench-durable-{k}", None) for k in range(USERS)
    ]
    while any(s.recovery is None for s in sockets):
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the connect writes flushed, Firestore's directory up to date
    log("D: plain sends")
    plain = await _sends(gateways, sockets, admin, False, SENDS)
    await asyncio.sleep(1.0)
    before = await asyncio.to_thread(metrics, gateways)
    log("D: durable sends")
    durable = await _sends(gateways, sockets, admin, True, SENDS)
    await asyncio.sleep(2 * ACK_INTERVAL + 1.0)  # the last acks sent and flushed
    after = await asyncio.to_thread(metrics, gateways)
    appends = _writes(after, "gateway_stream_appends_total") - _writes(
        before, "gateway_stream_appends_total"
    )
    ack_writes = _writes(after, "gateway_firestore_writes_total") - _writes(
        before, "gateway_firestore_writes_total"
    )
    acks = _writes(after, "gateway_stream_acks_total") - _writes(
        before, "gateway_stream_acks_total"
    )
    for socket in sockets:
        await socket.close()
    log(f"D: recovery of {MISSED} missed messages, {RECOVERIES} times")
    recoveries = [await _recovery(gateways, admin, r) for r in range(RECOVERIES)]
    seconds = [r["seconds"] for r in recoveries]
    return {
        "users": USERS,
        "instances": INSTANCES,
        "concurrency": CONCURRENCY,
        "plain": plain,
        "durable": durable,
        "firestore": {
            "appends": int(appends),
            "append_writes_per_message": 2,
            "append_reads_per_message": 1,
            "acks_received": int(acks),
            "ack_writes": int(ack_writes),
            "ack_writes_per_message": round(ack_writes / appends, 3) if appends else None,
            "writes_per_message": round(2 + ack_writes / appends, 3) if appends else None,
        },
        "recovery": {
            "missed": MISSED,
            "rounds": recoveries,
            "p50_s": round(statistics.median(seconds), 3),
            "max_s": round(max(seconds), 3),
            "all_recovered": all(
                r["recovered"] and r["replayed"] == MISSED == r["missed"] for r in recoveries
            ),
        },
    }


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    if not result:
        return []
    plain, durable, fs, rec = (
        result["plain"],
        result["durable"],
        result["firestore"],
        result["recovery"],
    )
    where = f"{result['users']} sockets, 3 instances, {result['concurrency']} in flight"
    return [
        {
            "figure": f"durable: plain send throughput / p50 / p99 ({where})",
            "value": f"{plain['per_second']}/s, {plain['p50_ms']} / {plain['p99_ms']} ms "
            f"({plain['delivered']}/{plain['sends']} delivered)",
            "target": "-",
            "ok": None,
        },
        {
            "figure": "durable: durable send throughput / p50 / p99 (same)",
            "value": f"{durable['per_second']}/s, {durable['p50_ms']} / {durable['p99_ms']} ms "
            f"({durable['delivered']}/{durable['sends']} delivered)",
            "target": "every one delivered",
            "ok": durable["delivered"] == durable["sends"] and not durable["failed"],
        },
        {
            "figure": "durable: Firestore writes per durable message",
            "value": f"{fs['writes_per_message']} (2 in the append transaction + "
            f"{fs['ack_writes_per_message']} acknowledgement; 1 read)",
            "target": "-",
            "ok": None,
        },
        {
            "figure": f"durable: recovery of {rec['missed']} missed messages, p50 / max",
            "value": f"{rec['p50_s']} / {rec['max_s']} s over {len(rec['rounds'])} reconnects",
            "target": "all recovered",
            "ok": rec["all_recovered"],
        },
    ]
