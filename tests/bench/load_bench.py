"""Scenario L (``--only load``): the gateway under load, measured against Node's ``ws``.

Printed as rows of the summary table:

* **CPU and memory against Node ``ws``.** The same load client drives the gateway (pongs
  persisted to the Firestore emulator, ``AUTH_MODE=off``) and then the reference server
  ``tests/bench/node/ws_server.mjs`` (the same JSON ping/pong, nothing persisted), one after the
  other in this run: ``--pong-connections`` sockets pinged every second for ``--window``
  seconds, and ``--memory-connections`` idle sockets. CPU per ping/pong cycle is the process's
  CPU time over the window divided by the pongs it took; memory per socket is the RSS growth
  divided by the sockets held. The goals are ratios: CPU at most 2 x Node's, memory at most
  Node's. For the charts, the CPU window is also sampled every ``SAMPLE_SECONDS`` and Node's
  memory measured in steps (``memory_series``).

The reconnect storm (real ID tokens, every socket at once) is its own scenario, ``storm_bench``
(``--only storm``); half-open handshakes are held by ``tests/e2e/test_handshakes.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from pathlib import Path
from queue import Empty, Queue
from typing import TYPE_CHECKING, Any

import psutil

from emulator.procs import free_port
from tests.bench import memory_series

if TYPE_CHECKING:
    from tests.bench.runner import Gateway, LoadClients

NODE_DIR = Path(__file__).resolve().parent / "node"
#: Issue 12's goals, as ratios against Node ``ws`` under the same load in the same run.
TARGET_CPU_RATIO = 2.0
TARGET_MEMORY_RATIO = 1.0
#: The CPU window's sampling period for the chart's series (the window's figure is whole).
SAMPLE_SECONDS = 2.0


class NodeServer:
    """The reference ``ws`` server, talking JSON lines on stdin/stdout."""

    def __init__(self, interval: float, log_path: Path) -> None:
        self.port = free_port("0.0.0.0")
        self.events: Queue[dict[str, Any]] = Queue()
        with log_path.open("ab") as err:
            self.popen = subprocess.Popen(
                [
                    "node",
                    # Only makes global.gc() callable (the "gc" command of the memory series).
                    "--expose-gc",
                    str(NODE_DIR / "ws_server.mjs"),
                    f"--port={self.port}",
                    f"--interval={interval}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
        threading.Thread(target=self._read, daemon=True).start()
        self.ps = psutil.Process(self.popen.pid)
        self._wait("ready", 30)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.events.put(json.loads(line))

    def _wait(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.events.get(timeout=0.5)
            except Empty:
                if self.popen.poll() is not None:
                    break
                continue
            if message.get("event") == event:
                return message
        raise RuntimeError(f"node ws server: no {event!r} (exit {self.popen.poll()})")

    def stats(self) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write("stats\n")
        self.popen.stdin.flush()
        return self._wait("stats", 20)

    def collect_garbage(self) -> None:
        """A full V8 collection (the memory series reads RSS after one)."""
        assert self.popen.stdin is not None
        self.popen.stdin.write("gc\n")
        self.popen.stdin.flush()
        self._wait("gc", 20)

    def wait_connections(self, want: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.stats()["connections"] != want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node ws server holds {self.stats()['connections']}/{want}")
            time.sleep(0.25)

    def rss_kb(self) -> float:
        samples = []
        for _ in range(3):
            samples.append(self.ps.memory_info().rss / 1024)
            time.sleep(0.5)
        return sorted(samples)[1]

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _cpu_window(
    server: Gateway | NodeServer, pongs: Any, window: float, label: str, clients: LoadClients
) -> dict[str, Any]:
    """CPU time of ``server`` over ``window`` seconds, per pong it took (``pongs()``); and the
    same every ``SAMPLE_SECONDS`` (the chart's series), per pong the clients sent, so that
    sampling costs the server nothing: its CPU comes from /proc, the count from the clients."""
    from tests.bench.runner import log

    c0, p0, t0 = server.cpu_seconds(), pongs(), time.monotonic()
    samples: list[dict[str, Any]] = []
    last_cpu, last_sent = c0, clients.stats()["pongs_sent"]
    while (left := t0 + window - time.monotonic()) > 0:
        time.sleep(min(SAMPLE_SECONDS, left))
        cpu_now, sent, now = server.cpu_seconds(), clients.stats()["pongs_sent"], time.monotonic()
        if sent > last_sent:
            samples.append(
                {
                    "t": round(now - t0, 2),
                    "cpu_us_per_cycle": round(1e6 * (cpu_now - last_cpu) / (sent - last_sent), 2),
                }
            )
        last_cpu, last_sent = cpu_now, sent
    c1, p1, t1 = server.cpu_seconds(), pongs(), time.monotonic()
    cycles = p1 - p0
    cpu = c1 - c0
    per_cycle_us = 1e6 * cpu / max(cycles, 1)
    log(
        f"L: {label}: {cycles / (t1 - t0):.0f} pongs/s, CPU {100 * cpu / (t1 - t0):.1f} % of a "
        f"core, {per_cycle_us:.1f} µs per ping/pong cycle"
    )
    return {
        "pongs_per_s": round(cycles / (t1 - t0), 1),
        "cpu_percent": round(100 * cpu / (t1 - t0), 1),
        "cpu_us_per_cycle": round(per_cycle_us, 2),
        "samples": samples,
    }


def node_reference(fs_host: str, args: argparse.Namespace, stack: list[Any]) -> dict[str, Any]:
    """CPU per ping/pong cycle and memory per idle socket: the gateway, then Node ``ws``."""
    from tests.bench.runner import RUN_DIR, Gateway, LoadClients, clear_firestore, log

    n, idle, window = args.pong_connections, args.memory_connections, args.window
    result: dict[str, Any] = {"connections": n, "idle_connections": idle, "window_seconds": window}

    log(f"L: CPU per cycle, gateway, {n} sockets pinged every 1 s, pongs persisted")
    clear_firestore(fs_host)
    gw = Gateway(fs_host, 1.0, args, "load-cpu")
    stack.append(gw)
    gw.start()
    clients = LoadClients(port=gw.port, count=n, mode="pong", prefix="cpu", args=args)
    stack.append(clients)
    clients.wait_ready(max(120, n / 50))
    gw.wait_connections(n, 120)
    time.sleep(args.warmup)

    def received() -> int:
        return int(gw.stats()["pong_writer"]["pongs_received"])

    from tests.bench.runner import start_profiler, stop_profiler

    profiler = start_profiler(args, gw.pid, "load-cpu", window)
    result["gateway"] = _cpu_window(gw, received, window, "gateway", clients)
    stop_profiler(profiler)
    clients.stop()
    stack.remove(clients)
    gw.wait_connections(0, 60)
    gw.stop()
    stack.remove(gw)

    log(f"L: CPU per cycle, Node ws, {n} sockets pinged every 1 s")
    node = NodeServer(1.0, RUN_DIR / "node-ws.log")
    stack.append(node)
    clients = LoadClients(port=node.port, count=n, mode="pong", prefix="cpu", args=args)
    stack.append(clients)
    clients.wait_ready(max(120, n / 50))
    node.wait_connections(n, 120)
    time.sleep(args.warmup)
    result["node"] = _cpu_window(node, lambda: node.stats()["pongs"], window, "node ws", clients)
    clients.stop()
    stack.remove(clients)
    node.stop()
    stack.remove(node)

    log(f"L: memory per idle socket, Node ws, {idle} sockets")
    node = NodeServer(30.0, RUN_DIR / "node-ws.log")
    stack.append(node)
    time.sleep(args.settle)
    before = node.rss_kb()
    clients = LoadClients(port=node.port, count=idle, mode="idle", prefix="mem", args=args)
    stack.append(clients)
    clients.wait_ready(max(120, idle / 50))
    node.wait_connections(idle, 120)
    time.sleep(args.settle_after)
    after = node.rss_kb()
    result["node_memory_kb_per_socket"] = round((after - before) / idle, 2)
    log(f"L: Node ws RSS {before / 1024:.1f} -> {after / 1024:.1f} MB with {idle} sockets")
    clients.stop()
    stack.remove(clients)
    node.stop()
    stack.remove(node)
    result["node_memory_series"] = memory_series.node_series(args, stack)
    result["cpu_ratio"] = round(
        result["gateway"]["cpu_us_per_cycle"] / max(result["node"]["cpu_us_per_cycle"], 1e-9), 2
    )
    return result


def rows(result: dict[str, Any], gateway_memory_kb: float | None) -> list[dict[str, Any]]:
    """Summary rows for the Node comparison (the gateway's memory comes from scenario A)."""
    if not result or "cpu_ratio" not in result:
        return []
    gw, node = result["gateway"], result["node"]
    out = [
        {
            "figure": f"L: CPU per ping/pong cycle, {result['connections']} sockets at 1 s, "
            "gateway (pongs persisted) / Node ws",
            "value": f"{gw['cpu_us_per_cycle']:.1f} / {node['cpu_us_per_cycle']:.1f} µs "
            f"= {result['cpu_ratio']:.2f} x ({gw['cpu_percent']:.0f} % / "
            f"{node['cpu_percent']:.0f} % of a core)",
            "target": f"≤ {TARGET_CPU_RATIO:g} x",
            "ok": result["cpu_ratio"] <= TARGET_CPU_RATIO,
        }
    ]
    node_kb = result["node_memory_kb_per_socket"]
    if gateway_memory_kb is not None:
        ratio = gateway_memory_kb / max(node_kb, 1e-9)
        out.append(
            {
                "figure": f"L: memory per idle socket at {result['idle_connections']} sockets, "
                "gateway (scenario A) / Node ws",
                "value": f"{gateway_memory_kb:.1f} / {node_kb:.1f} KB = {ratio:.2f} x",
                "target": f"≤ {TARGET_MEMORY_RATIO:g} x",
                "ok": ratio <= TARGET_MEMORY_RATIO,
            }
        )
    else:
        out.append(
            {
                "figure": "L: Node ws memory per idle socket",
                "value": f"{node_kb:.1f} KB",
                "target": "reported",
                "ok": None,
            }
        )
    return out
