"""Scenario S (``--only storm``): a reconnect storm, every socket at once with a real ID token.

Issue 12's goal: "10,000 clients with real ID tokens from the Auth emulator reconnect at once,
as after a drain. All of them are admitted and pinged within 10 s, and none is refused
wrongly."

Before the clock starts: the Auth emulator (pinned firebase-tools) comes up, and one real ID
token per user is minted from it the way a client SDK gets one (a custom token exchanged at
``accounts:signInWithCustomToken``), many requests in flight at once so that 10,000 take
seconds. The gateway runs with ``AUTH_MODE=firebase`` against that emulator and the Firestore
emulator, with the production defaults for everything a storm touches (``PING_INTERVAL=30``,
``WS_MAX_CONNECTS_PER_MINUTE=300``, ``WS_MAX_PENDING_HANDSHAKES=4096``). A warm-up of a few
sockets (their own users) is opened and closed first, so one-off costs (the first
verification, the Firestore channel) are not part of the storm.

Then one load-client process (``load_client --mode storm``) opens every socket at once: no
concurrency limit (connects start 100 per loop iteration, so each sends its upgrade request as
soon as it is connected, as independent clients would), no retry. Each socket stamps, on the
client's monotonic clock, the start of its TCP connect, the upgrade's answer (the gateway
accepts a socket only after its token and member record are checked: that is the admission)
and its first ``ping``. The figures:

* admissions per second: sockets admitted / (last admission - first connect started);
* connect -> first ping, p50 / p99 / max over the sockets;
* total: first connect started -> last socket's first ping (the goal: under 10 s);
* refusals: sockets closed by the gateway before their first ping, by close code, plus
  connections that failed (the goal: 0). The gateway's own refusal counters (``/metrics``)
  are printed beside them;
* for the storm chart, ``timeline``: connects started, sockets admitted and sockets pinged,
  counted every ``TIMELINE_BIN`` seconds from the first connect.

The connect limiter (``WS_MAX_CONNECTS_PER_MINUTE``, per client address per minute) is left at
its default: the client spreads its sockets over ``--hosts`` loopback addresses and connects
from each (``--bind-source``; without it every socket's source is 127.0.0.1), 200 sockets per
address for 10,000, under the 300 a minute each address may open. A storm from
fewer addresses than sockets / 300 (one NAT in front of every client, say) would be refused by
design; the bench does not measure that.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from emulator import procs

DEFAULT_SOCKETS = 10_000
#: Issue 12: every socket admitted and pinged within this many seconds of the storm's start.
TARGET_SECONDS = 10.0
PREFIX = "storm"
WARMUP_SOCKETS = 20
#: Token exchanges in flight at once against the Auth emulator (a single Node process).
MINT_CONCURRENCY = 64
#: The production default: the first ping comes either at admission or with the next round.
PING_INTERVAL = 30.0
#: Connects the client starts per loop iteration (``--storm-burst``): with all of them in one,
#: the client's own loop writes the first requests only after it has started every connect.
BURST = 100
#: The storm chart's time step: cumulative connects, admissions and first pings per 0.1 s.
TIMELINE_BIN = 0.1


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (an observed value, never interpolated)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def _mint(auth_host: str, app: Any, users: Sequence[str]) -> dict[str, str]:
    """One real ID token per user from the Auth emulator, ``MINT_CONCURRENCY`` at once.

    Over plain keep-alive connections, one per worker: httpx's pool scans every connection on
    each request, which made this process, not the emulator, the limit (~75 tokens/s)."""
    from firebase_admin import auth

    host, _, port = auth_host.rpartition(":")
    path = "/identitytoolkit.googleapis.com/v1/accounts:signInWithCustomToken?key=bench-api-key"
    tokens: dict[str, str] = {}
    pending = iter(users)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for user in pending:
                # Unsigned with the emulator (firebase-admin's emulated signer): cheap.
                custom = auth.create_custom_token(user, app=app).decode()
                body = json.dumps({"token": custom, "returnSecureToken": True}).encode()
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {auth_host}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b" ", 2)[1]
                answer = await _body(reader, head)
                if status != b"200":
                    raise RuntimeError(f"Auth emulator: {status.decode()} {answer[:200]!r}")
                tokens[user] = json.loads(answer)["idToken"]
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(MINT_CONCURRENCY)))
    return tokens


async def _body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """A response's body: Content-Length, or chunked (what the emulator's Express sends)."""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":", 1)[1]))
    body = b""
    while size := int((await reader.readline()).strip(), 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readexactly(2)  # the empty trailer's line end
    return body


def mint_tokens(auth_host: str, users: Sequence[str]) -> dict[str, str]:
    """Real ID tokens for ``users`` (accounts created on first sign-in, as a client SDK's)."""
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = auth_host
    import firebase_admin

    from tests.bench.runner import PROJECT

    app = firebase_admin.initialize_app(
        options={"projectId": PROJECT}, name=f"bench-storm-{os.getpid()}-{time.monotonic_ns()}"
    )
    try:
        return asyncio.run(_mint(auth_host, app, users))
    finally:
        firebase_admin.delete_app(app)


def _client(plan_path: str, name: str, args: argparse.Namespace) -> Any:
    from tests.bench.runner import RUN_DIR, ClientProc

    return ClientProc(
        name,
        [
            sys.executable,
            "-m",
            "tests.bench.load_client",
            f"--plan={plan_path}",
            "--mode=storm",
            "--impl=raw",
            f"--hosts={args.hosts}",
            # From as many client addresses as --hosts: the connect limiter counts per address.
            "--bind-source",
            # Every socket at once (storm mode has no concurrency limit), once: a refusal shows.
            "--attempts=1",
            f"--burst={args.storm_burst}",
            "--connect-timeout=120",
            "--ping-wait=120",
        ],
        RUN_DIR / "client.log",
    )


def _metric_sum(text: str, name: str) -> dict[str, float]:
    """Every labelled sample of a Prometheus counter family, by its label set text."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_total{{") or line.startswith(f"{name}{{"):
            head, _, value = line.rpartition(" ")
            found[head[head.index("{") :]] = float(value)
    return found


def _metric_total(text: str, name: str) -> float:
    """An unlabelled counter's value (0 when absent)."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head in (name, f"{name}_total"):
            return float(value)
    return 0.0


def summarize(records: list[list[Any]], expected: int) -> dict[str, Any]:
    """The storm's figures from the client's per-socket records (see ``StormSocket.record``)."""
    starts = [r[0] for r in records]
    t0 = min(starts) if starts else 0.0
    admitted = [r for r in records if r[1] and r[3] is None]
    pinged = [r for r in admitted if r[2]]
    refused = Counter(str(r[3]) for r in records if r[3] is not None)
    waits = [r[2] - r[0] for r in pinged]
    admit_span = max((r[1] for r in admitted), default=t0) - t0
    return {
        "sockets": expected,
        "recorded": len(records),
        "admitted": len(admitted),
        "pinged": len(pinged),
        "refused": dict(refused),
        "failed": expected - len(admitted) - sum(refused.values()),
        "admission_seconds": round(admit_span, 3),
        "admissions_per_s": round(len(admitted) / max(admit_span, 1e-9), 1),
        "connect_to_ping_p50_ms": _ms(percentile(waits, 0.50)),
        "connect_to_ping_p99_ms": _ms(percentile(waits, 0.99)),
        "connect_to_ping_max_ms": _ms(max(waits) if waits else None),
        "all_pinged_seconds": round(max((r[2] for r in pinged), default=t0) - t0, 3),
        # How long the client itself took to start every connect (one process, shared cores).
        "connects_started_seconds": round(max(starts, default=t0) - t0, 3),
        "connect_to_upgrade_p50_ms": _ms(percentile([r[1] - r[0] for r in admitted], 0.5)),
        "connect_to_upgrade_p99_ms": _ms(percentile([r[1] - r[0] for r in admitted], 0.99)),
        "timeline": timeline(records),
    }


def timeline(records: list[list[Any]], bin_seconds: float = TIMELINE_BIN) -> dict[str, Any]:
    """Cumulative counts, at the end of each ``bin_seconds`` from the first connect started, of
    the connects started, the sockets admitted and those pinged (the storm chart's series)."""
    if not records:
        return {"bin_seconds": bin_seconds, "started": [], "admitted": [], "pinged": []}
    t0 = min(r[0] for r in records)
    admitted = [r for r in records if r[1] and r[3] is None]
    stamps = {
        "started": [r[0] - t0 for r in records],
        "admitted": [r[1] - t0 for r in admitted],
        "pinged": [r[2] - t0 for r in admitted if r[2]],
    }
    end = max(max(values, default=0.0) for values in stamps.values())
    bins = math.floor(end / bin_seconds) + 1
    out: dict[str, Any] = {"bin_seconds": bin_seconds}
    for name, values in stamps.items():
        counts = [0] * bins
        for value in values:
            counts[min(bins - 1, math.floor(value / bin_seconds))] += 1
        out[name] = list(itertools.accumulate(counts))
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 1)


def run(fs_host: str, args: argparse.Namespace, stack: list[Any]) -> dict[str, Any]:
    from tests.bench.runner import (
        PROJECT,
        RUN_DIR,
        Gateway,
        clear_firestore,
        log,
        start_profiler,
        stop_profiler,
    )

    n = args.storm_sockets
    log(f"S: reconnect storm, {n:,} sockets with real ID tokens, all at once")
    clear_firestore(fs_host)
    auth_port = procs.free_port()
    auth_host = f"127.0.0.1:{auth_port}"
    auth_emulator = procs.auth_process("127.0.0.1", auth_port, PROJECT, RUN_DIR)
    auth_emulator.log_path = RUN_DIR / "storm-auth.log"
    auth_emulator.start()
    stack.append(auth_emulator)
    auth_emulator.wait_ready(120)

    users = [f"{PREFIX}-{i:06d}" for i in range(n)]
    warm_users = [f"{PREFIX}-warm-{i:03d}" for i in range(WARMUP_SOCKETS)]
    minted_at = time.monotonic()
    tokens = mint_tokens(auth_host, [*warm_users, *users])
    mint_seconds = time.monotonic() - minted_at
    log(f"S: {len(tokens):,} ID tokens minted in {mint_seconds:.1f}s")

    gw = Gateway(
        fs_host,
        args.storm_ping_interval,
        args,
        "storm",
        extra_env={
            "AUTH_MODE": "firebase",
            "FIREBASE_AUTH_EMULATOR_HOST": auth_host,
            # The default, spelt out: the bench's other scenarios turn the limiter off.
            "WS_MAX_CONNECTS_PER_MINUTE": "300",
        },
    )
    stack.append(gw)
    gw.start()

    warm_plan = RUN_DIR / "storm-warm-plan.json"
    warm_plan.write_text(json.dumps([[gw.port, u, tokens[u]] for u in warm_users]))
    warm = _client(str(warm_plan), "client-storm-warm", args)
    stack.append(warm)
    warm.wait_for("ready", 60)
    warm.command("stop")
    warm.wait_for("stopped", 30)
    stack.remove(warm)
    gw.wait_connections(0, 30)

    plan = RUN_DIR / "storm-plan.json"
    plan.write_text(json.dumps([[gw.port, u, tokens[u]] for u in users]))
    metrics_before = _metric_sum(gw.http.get("/metrics").text, "gateway_refusals")
    cpu_before = gw.cpu_seconds()
    profiler = start_profiler(args, gw.pid, "storm", max(5.0, n / 800))
    started = time.monotonic()
    client = _client(str(plan), "client-storm", args)
    stack.append(client)
    ready = client.wait_for("ready", 300)
    stop_profiler(profiler)
    client.command("report")
    report = client.wait_for("report", 60)
    result = summarize(report["sockets"], n)
    result["mint_seconds"] = round(mint_seconds, 1)
    result["client_failed"] = ready["failed"]
    result["client_last_error"] = ready["last_error"]
    result["gateway_cpu_seconds"] = round(gw.cpu_seconds() - cpu_before, 2)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    try:
        gw.wait_connections(result["admitted"], 30)
        result["held_by_gateway"] = result["admitted"]
    except TimeoutError:
        result["held_by_gateway"] = gw.connections()
    metrics_after = _metric_sum(gw.http.get("/metrics").text, "gateway_refusals")
    result["gateway_refusals"] = {
        k: v - metrics_before.get(k, 0.0)
        for k, v in metrics_after.items()
        if v - metrics_before.get(k, 0.0)
    }
    result["ping_interval"] = args.storm_ping_interval
    failed_open = _metric_total(gw.http.get("/metrics").text, "gateway_member_reads_failed")
    result["member_reads_failed"] = failed_open
    log(
        f"S: {result['admitted']:,} of {n:,} admitted in {result['admission_seconds']:.1f}s "
        f"({result['admissions_per_s']:.0f}/s), all pinged after "
        f"{result['all_pinged_seconds']:.1f}s; connect -> first ping p50 "
        f"{result['connect_to_ping_p50_ms']} ms, p99 "
        f"{result['connect_to_ping_p99_ms']} ms; refused {result['refused']}, failed "
        f"{result['failed']} ({result['client_last_error'] or 'no error'}); gateway CPU "
        f"{result['gateway_cpu_seconds']} s"
    )
    client.command("stop")
    client.wait_for("stopped", 60)
    stack.remove(client)
    gw.wait_connections(0, 60)
    gw.stop()
    stack.remove(gw)
    auth_emulator.stop()
    stack.remove(auth_emulator)
    return result


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    if not result or "admitted" not in result:
        return []
    n = result["sockets"]
    refused = sum(result["refused"].values()) + result["failed"]
    return [
        {
            "figure": f"S: storm, {n:,} sockets with real ID tokens at once: admitted",
            "value": f"{result['admitted']:,} in {result['admission_seconds']:.1f} s "
            f"({result['admissions_per_s']:,.0f}/s)",
            "target": "all",
            "ok": result["admitted"] == n,
        },
        {
            "figure": "S: connect -> first ping, p50 / p99 / max",
            "value": f"{result['connect_to_ping_p50_ms']} / {result['connect_to_ping_p99_ms']} / "
            f"{result['connect_to_ping_max_ms']} ms (PING_INTERVAL={result['ping_interval']:g})",
            "target": "reported",
            "ok": None,
        },
        {
            "figure": "S: storm start -> every socket pinged",
            "value": f"{result['all_pinged_seconds']:.1f} s ({result['pinged']:,} pinged; the "
            f"client started its last connect at {result['connects_started_seconds']:.1f} s)",
            "target": f"< {TARGET_SECONDS:g} s",
            "ok": result["pinged"] == n and result["all_pinged_seconds"] < TARGET_SECONDS,
        },
        {
            "figure": "S: admitted without the revocation check (member read failed)",
            "value": f"{result['member_reads_failed']:,.0f}",
            "target": "reported",
            "ok": None,
        },
        {
            "figure": "S: refused or failed (client) / refusals counted by the gateway",
            "value": f"{refused} {result['refused'] or ''} / "
            f"{sum(result['gateway_refusals'].values()):.0f} {result['gateway_refusals'] or ''}",
            "target": "0",
            "ok": refused == 0 and not result["gateway_refusals"],
        },
    ]
