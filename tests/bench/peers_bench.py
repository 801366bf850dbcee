"""Cross-instance delivery over internal HTTP: three gateways on one Firestore emulator.

Connects ``SOCKETS_PER_INSTANCE`` users to each of three gateway processes (AUTH_MODE=off), then
measures, from the moment the REST call is made to the moment the client has the frame:

- a send to a user on another instance (member read + instance read + one internal POST),
  against a send to a user on the instance called (no Firestore, no hop);
- forwarded sends with ``CONCURRENCY`` in flight, as sends per second;
- a broadcast to every socket of the three instances (one instance query + two internal POSTs),
  until the last socket has it.

Run alone with ``python -m tests.bench --only peers``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import ClientConnection, connect

from emulator import procs

SOCKETS_PER_INSTANCE = 300
SENDS = 300
CONCURRENT_SENDS = 2_000
CONCURRENCY = 32
BROADCASTS = 20


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50_ms": round(_percentile(values, 0.5) * 1000, 2),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


class _Receivers:
    """Every bench socket, with an event per (user, message id) set on arrival."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, int], float] = {}
        self.waiters: dict[tuple[str, int], asyncio.Event] = {}
        self.sockets: list[ClientConnection] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def add(self, url: str, user: str) -> None:
        ws = await connect(url, max_queue=None)
        self.sockets.append(ws)
        self.tasks.append(asyncio.create_task(self._read(ws, user)))

    async def _read(self, ws: ClientConnection, user: str) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "bench":
                    key = (user, int(frame["n"]))
                    self.arrived[key] = time.perf_counter()
                    waiter = self.waiters.get(key)
                    if waiter is not None:
                        waiter.set()
        except Exception:
            return

    def expect(self, user: str, n: int) -> asyncio.Event:
        return self.waiters.setdefault((user, n), asyncio.Event())

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


def _cpu(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        out.append(times.user + times.system)
    return out


async def _measure(
    urls: list[str], pids: list[int], admin: str, log: Callable[[str], None]
) -> dict[str, Any]:
    receivers = _Receivers()
    users: dict[int, list[str]] = {i: [] for i in range(len(urls))}
    for i, base in enumerate(urls):
        ws_base = base.replace("http://", "ws://")
        for k in range(SOCKETS_PER_INSTANCE):
            user = f"p{i}-{k}"
            users[i].append(user)
            await receivers.add(f"{ws_base}/ws/connect/{user}", user)
    log(f"peers: {len(receivers.sockets)} sockets on {len(urls)} instances")
    headers = {"Authorization": f"Bearer {admin}"}
    counter = iter(range(1, 10**9))
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        # The member records (active_sessions) are written a flush after connecting.
        target = users[0][-1]
        deadline = time.monotonic() + 30
        while True:
            body = (await http.get(f"{urls[2]}/ws/status/{target}")).json()
            if body["is_connected"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)

        async def send(via: str, user: str) -> float:
            n = next(counter)
            arrived = receivers.expect(user, n)
            started = time.perf_counter()
            response = await http.post(f"{via}/ws/send/{user}", json={"type": "bench", "n": n})
            response.raise_for_status()
            await asyncio.wait_for(arrived.wait(), 10)
            return receivers.arrived[(user, n)] - started

        local = [await send(urls[0], users[0][k % SOCKETS_PER_INSTANCE]) for k in range(SENDS)]
        remote = [await send(urls[2], users[0][k % SOCKETS_PER_INSTANCE]) for k in range(SENDS)]
        log(
            f"peers: send p50 local {_percentile(local, 0.5) * 1000:.1f} ms, "
            f"forwarded {_percentile(remote, 0.5) * 1000:.1f} ms"
        )

        gate = asyncio.Semaphore(CONCURRENCY)

        async def bounded(k: int) -> float:
            async with gate:
                return await send(urls[2], users[k % 2][k % SOCKETS_PER_INSTANCE])

        cpu_before = _cpu(pids)
        started = time.perf_counter()
        await asyncio.gather(*(bounded(k) for k in range(CONCURRENT_SENDS)))
        rate = CONCURRENT_SENDS / (time.perf_counter() - started)
        spent = [after - before for before, after in zip(cpu_before, _cpu(pids), strict=True)]
        # Instance 2 took every REST call; instances 0 and 1 delivered half the sends each.
        entry_ms = spent[2] / CONCURRENT_SENDS * 1000
        delivery_ms = (spent[0] + spent[1]) / CONCURRENT_SENDS * 1000
        log(
            f"peers: {rate:,.0f} forwarded sends/s with {CONCURRENCY} in flight; CPU per send "
            f"{entry_ms:.2f} ms on the instance called, {delivery_ms:.2f} ms on the one holding "
            "the socket"
        )

        everyone = [u for group in users.values() for u in group]
        broadcast: list[float] = []
        answered: list[float] = []
        for _ in range(BROADCASTS):
            n = next(counter)
            events = [receivers.expect(u, n) for u in everyone]
            started = time.perf_counter()
            response = await http.post(f"{urls[1]}/ws/broadcast", json={"type": "bench", "n": n})
            response.raise_for_status()
            answered.append(time.perf_counter() - started)
            assert response.json()["recipients"] == len(everyone), response.text
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
            broadcast.append(max(receivers.arrived[(u, n)] for u in everyone) - started)
        log(f"peers: broadcast to {len(everyone)} sockets p50 {_percentile(broadcast, 0.5):.3f} s")
    await receivers.close()
    return {
        "instances": len(urls),
        "sockets": len(everyone),
        "send_local": _summary(local),
        "send_forwarded": _summary(remote),
        "forwarded_sends_per_second": round(rate),
        "cpu_ms_per_forwarded_send_entry": round(entry_ms, 2),
        "cpu_ms_per_forwarded_send_delivery": round(delivery_ms, 2),
        "concurrency": CONCURRENCY,
        "broadcast_last_socket": _summary(broadcast),
        "broadcast_answered": _summary(answered),
    }


def run(fs_host: str, run_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    admin, callback = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    gateways: list[procs.Process] = []
    urls: list[str] = []
    try:
        for i in range(3):
            port = procs.free_port()
            env = {
                "FIRESTORE_EMULATOR_HOST": fs_host,
                "GOOGLE_CLOUD_PROJECT": "demo-bench-peers",
                "GATEWAY_ADMIN_TOKEN": admin,
                "GATEWAY_CALLBACK_TOKEN": callback,
                "GATEWAY_PORT": str(port),
                "GATEWAY_INSTANCE_ID": f"peer-{i}",
                "AUTH_MODE": "off",
                "WS_MAX_CONNECTS_PER_MINUTE": "0",
                "LOG_LEVEL": "WARNING",
            }
            proc = procs.gateway_process(env, "127.0.0.1", port, run_dir)
            proc.log_path = run_dir / f"gateway-peer-{i}.log"
            proc.start()
            gateways.append(proc)
            urls.append(f"http://127.0.0.1:{port}")
        for proc in gateways:
            proc.wait_ready(60)
        pids = [p.popen.pid for p in gateways if p.popen is not None]
        return asyncio.run(_measure(urls, pids, admin, log))
    finally:
        for proc in gateways:
            proc.stop()


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Summary rows (figures, no pass/fail target: the issue sets none for these)."""
    if not result:
        return []
    local, remote = result["send_local"], result["send_forwarded"]
    cast = result["broadcast_last_socket"]
    return [
        {
            "figure": "send to a user on the instance called, p50 / p99",
            "value": f"{local['p50_ms']:.1f} / {local['p99_ms']:.1f} ms",
            "target": "-",
            "ok": None,
        },
        {
            "figure": "send forwarded to another instance, p50 / p99",
            "value": f"{remote['p50_ms']:.1f} / {remote['p99_ms']:.1f} ms",
            "target": "-",
            "ok": None,
        },
        {
            "figure": f"forwarded sends per second, {result['concurrency']} in flight",
            "value": f"{result['forwarded_sends_per_second']:,}",
            "target": "-",
            "ok": None,
        },
        {
            "figure": "gateway CPU per forwarded send: instance called / instance delivering",
            "value": f"{result['cpu_ms_per_forwarded_send_entry']:.2f} / "
            f"{result['cpu_ms_per_forwarded_send_delivery']:.2f} ms",
            "target": "-",
            "ok": None,
        },
        {
            "figure": f"broadcast to {result['sockets']:,} sockets on "
            f"{result['instances']} instances, last socket p50 / p99",
            "value": f"{cast['p50_ms']:.0f} / {cast['p99_ms']:.0f} ms",
            "target": "-",
            "ok": None,
        },
    ]
