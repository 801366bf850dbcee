"""Memory per idle socket at several socket counts, the gateway beside Node ``ws`` (the
memory chart of ``tests/bench/charts.py``).

Scenario A and the load scenario each measure one point: the RSS growth from a baseline to
``--memory-connections`` idle sockets opened at once. This series is measured apart from them,
on a fresh server of each kind, so their figures keep their meaning. Both servers get the
same baseline: ``--warmup-sockets`` opened and closed (one-off costs land in it), then RSS read
until two readings a second apart differ by less than ``SETTLED_KB`` (Node's RSS shrinks for
several seconds after its start, which made the first steps' growth negative). Node's readings
each follow a full V8 collection: its heap otherwise moved RSS by about 2 MB between readings.
Then idle sockets are added in ``--memory-steps`` equal steps up to ``--memory-connections``,
each step by its own load-client process (its own user ids); once the server holds them all
and ``--settle-after`` has passed, its RSS is read. A point is the RSS growth over the
baseline divided by the sockets held.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any, Protocol

#: Steps from zero to ``--memory-connections`` (``--memory-steps``; 0 skips the series).
DEFAULT_STEPS = 5
#: The baseline is read once RSS moves less than this between two readings a second apart.
SETTLED_KB = 256.0
#: A full garbage collection before each RSS reading, where the server offers one (Node's
#: ``gc`` command; CPython frees a closed socket's objects by reference counting at once).
Collect = Callable[[], None] | None


class Server(Protocol):
    """What a step needs of a server: its RSS and a wait for its socket count."""

    def rss_kb(self) -> float: ...

    def wait_connections(self, want: int, timeout: float) -> Any: ...


def step_counts(total: int, steps: int) -> list[int]:
    """The socket counts at which RSS is read: ``steps`` equal steps up to ``total``."""
    if steps <= 0 or total <= 0:
        return []
    counts = sorted({round(total * k / steps) for k in range(1, steps + 1)} - {0})
    return counts


def settled_rss(server: Server, collect: Collect, timeout: float = 30.0) -> float:
    """The server's RSS once two readings a second apart differ by less than SETTLED_KB (the
    last reading after ``timeout``)."""
    deadline = time.monotonic() + timeout
    last = read_rss(server, collect)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = read_rss(server, collect)
        if abs(now - last) < SETTLED_KB:
            return now
        last = now
    return last


def read_rss(server: Server, collect: Collect) -> float:
    """The server's RSS, after a full garbage collection where the server offers one."""
    if collect is not None:
        collect()
    return server.rss_kb()


def warm_up(server: Server, port: int, args: argparse.Namespace, stack: list[Any]) -> None:
    """``--warmup-sockets`` idle sockets opened and closed, then ``--settle``."""
    from tests.bench.runner import LoadClients

    warm = LoadClients(port=port, count=args.warmup_sockets, mode="idle", prefix="warm", args=args)
    stack.append(warm)
    warm.wait_ready(60)
    server.wait_connections(args.warmup_sockets, 30)
    warm.stop()
    stack.remove(warm)
    server.wait_connections(0, 30)
    time.sleep(args.settle)


def measure_steps(
    server: Server,
    port: int,
    counts: list[int],
    args: argparse.Namespace,
    stack: list[Any],
    collect: Collect = None,
) -> list[dict[str, Any]]:
    """RSS at each count of idle sockets on ``server`` (warmed up), from a settled baseline;
    every load client is stopped before returning."""
    from tests.bench.runner import LoadClients, log

    warm_up(server, port, args, stack)
    base = settled_rss(server, collect)
    points: list[dict[str, Any]] = [{"sockets": 0, "rss_kb": round(base), "per_socket_kb": None}]
    opened = 0
    held: list[LoadClients] = []
    try:
        for step, count in enumerate(counts):
            clients = LoadClients(
                port=port, count=count - opened, mode="idle", prefix=f"step{step}", args=args
            )
            stack.append(clients)
            held.append(clients)
            ready = clients.wait_ready(max(120, (count - opened) / 50))
            if ready["failed"]:
                raise RuntimeError(f"memory series: {ready['failed']} sockets failed at {count}")
            server.wait_connections(count, 120)
            opened = count
            time.sleep(args.settle_after)
            rss = read_rss(server, collect)
            per_socket = (rss - base) / count
            points.append(
                {"sockets": count, "rss_kb": round(rss), "per_socket_kb": round(per_socket, 2)}
            )
            log(f"memory series: {count:,} sockets, RSS {rss / 1024:.1f} MB, {per_socket:.2f} KB")
    finally:
        for clients in reversed(held):
            clients.stop()
            stack.remove(clients)
    server.wait_connections(0, 60)
    return points


def gateway_series(fs_host: str, args: argparse.Namespace, stack: list[Any]) -> dict[str, Any]:
    """The gateway's series, on a fresh gateway with scenario A's settings."""
    from tests.bench.runner import Gateway, log

    counts = step_counts(args.memory_connections, args.memory_steps)
    if not counts:
        return {}
    log(f"A: memory series, gateway, idle sockets at {', '.join(f'{c:,}' for c in counts)}")
    gw = Gateway(fs_host, 30.0, args, "memory-series")
    stack.append(gw)
    gw.start()
    try:
        points = measure_steps(gw, gw.port, counts, args, stack)
    finally:
        gw.stop()
        stack.remove(gw)
    return {"ws_implementation": args.ws_impl, "points": points}


def node_series(args: argparse.Namespace, stack: list[Any]) -> dict[str, Any]:
    """Node ``ws``'s series, on a fresh server as the load scenario starts it."""
    from tests.bench.load_bench import NodeServer
    from tests.bench.runner import RUN_DIR, log

    counts = step_counts(args.memory_connections, args.memory_steps)
    if not counts:
        return {}
    log(f"L: memory series, Node ws, idle sockets at {', '.join(f'{c:,}' for c in counts)}")
    node = NodeServer(30.0, RUN_DIR / "node-ws.log")
    stack.append(node)
    try:
        points = measure_steps(node, node.port, counts, args, stack, node.collect_garbage)
    finally:
        node.stop()
        stack.remove(node)
    return {"points": points}
