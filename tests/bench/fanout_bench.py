"""Cross-instance delivery over Pub/Sub behind a round-robin front end (``--only fanout``).

The deployment as Cloud Run runs it: three gateway processes (``AUTH_MODE=off``, distinct
``GATEWAY_INSTANCE_ID``, one ``PUBSUB_TOPIC`` on gcloud's Pub/Sub emulator, started here on a
free port and stopped at the end) behind ``tests/proxy.py``, which hands each new TCP
connection to the next instance. Every socket, REST call and sweep callback goes through the
proxy; no instance is addressed directly except to read its ``/metrics`` and ``/healthz``.

One load-client process opens ``DEFAULT_SOCKETS`` sockets (``--connections`` shrinks it) to the
proxy, one user each, so round-robin puts a third on each instance. They answer pings
(``PING_INTERVAL=10``), except one user in ``SILENT_EVERY``, which never does. The client stamps
(wall clock) every ``{"type":"bench"}`` frame and every timeout frame. Then, from the moment the
REST call is made (same machine clock):

1. **send**: ``SENDS`` sends, one at a time, each on a fresh connection, to random users. Before
   each, a ``GET /healthz`` through the proxy names the instance it reached, so the send (the
   next connection) lands on the one after it in the proxy's cycle: with the send's answer
   (``instances``: where the user's socket is) that tells whether the instance answering held
   the user or had to go through Pub/Sub. The fan-out metrics cross-check the count.
2. **broadcast**: ``BROADCASTS`` broadcasts to every socket, one at a time, each until the
   last socket has the frame; then ``STATS_CALLS`` ``/ws/stats`` calls (a scatter/gather over
   the topic, each answer checked to count every socket) and as many ``/ws/status`` calls (one
   member read), timed.
3. **CPU per delivered message**: the three gateways' CPU time (psutil) over ``CPU_SENDS``
   sends with ``CONCURRENCY`` in flight, divided by the frames the client received; also net
   of the ping/pong baseline measured over ``BASELINE_SECONDS`` of idling just before.
4. **timeout**: the real sweep function (functions-framework, ``GATEWAY_URL`` = the proxy,
   ``GATEWAY_CALLBACK_TOKEN`` shared with the gateways, ``PONG_TIMEOUT=20``,
   ``SWEEP_INTERVAL=3``) and its scheduler are started once the silent users' last pong (their
   connect) is ``PONG_TIMEOUT`` old, so the first tick signs them out while the others, ponging
   every 10 s, stay signed in. A socket's latency is its receipt of the timeout frame minus the
   member document's ``update_time``, the sweep's finalize commit (as in ``timeout_bench``: the
   gateway's disconnect write changes nothing, so Firestore keeps that time); a commit before
   the sweep's own clock (``last_sign_out_at``) or after the frame would say otherwise and fails
   the row. The sweep writes sessions and calls back once per page; the instance answering
   closes its own sockets and hands the rest to the others through Pub/Sub. The gateways'
   reconcile poll (every ``SWEEP_INTERVAL``) may close a socket first; the log says how often.

Every latency summarized as p50 / p99 is also kept whole (``*samples_ms``, sorted) for the
fan-out chart's distributions.

The HTTP mesh this replaced was measured by the former ``peers`` scenario; its figures are
quoted in the summary (``HTTP_MESH_REFERENCE``), not re-measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from emulator import procs
from gateway.storage.schema import IS_SIGNED_IN, LAST_SIGN_OUT_AT, MEMBERS

if TYPE_CHECKING:
    from tests.bench.runner import ClientProc, Gateway, Owned

INSTANCES = 3
DEFAULT_SOCKETS = 3_000
#: User numbers divisible by this never answer pings: the sweep signs them out.
SILENT_EVERY = 10
SENDS = 300
CPU_SENDS = 2_000
#: How long ``--py-spy`` samples each gateway from the start of phase 3's sends.
PROFILE_SECONDS = 15
CONCURRENCY = 32
BROADCASTS = 10
STATS_CALLS = 30
PING_INTERVAL = 10.0
#: The idle baseline spans one whole PING_INTERVAL: pings go out in one round per interval, so
#: a shorter window held a round or not, and the net figure moved by a round's CPU either way.
BASELINE_SECONDS = PING_INTERVAL
PONG_TIMEOUT = 20.0
SWEEP_INTERVAL = 3.0
TOPIC = "bench-fanout"
PREFIX = "fan"
TARGET_P99_MS = 1000.0
#: The HTTP forwarding between instances that Pub/Sub replaced, from earlier runs of the
#: former ``peers`` and ``timeout`` scenarios (docs/benchmarks.md): quoted, not re-measured.
HTTP_MESH_REFERENCE = (
    "forwarded send 5.3–6.0 ms p50, 13–15 ms p99; timeout p99 190–257 ms (earlier runs)"
)

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values: list[float]) -> dict[str, Any]:
    """Count, p50, p99 and max in ms (None when there are no values)."""
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(values),
        "p50_ms": round(_percentile(values, 0.5) * 1000, 2),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


def _samples(values: list[float]) -> list[float]:
    """Every value in ms, sorted (0.1 ms steps): the fan-out chart draws their distribution."""
    return sorted(round(v * 1000, 1) for v in values)


def _metrics(gateways: list[Gateway]) -> dict[str, dict[str, float]]:
    """Every sample of every instance's /metrics, by instance id then sample name."""
    out: dict[str, dict[str, float]] = {}
    for gw in gateways:
        samples: dict[str, float] = {}
        for line in gw.http.get("/metrics").text.splitlines():
            found = _SAMPLE.match(line)
            if found and not line.startswith("#"):
                with contextlib.suppress(ValueError):
                    samples[found.group(1)] = float(found.group(2))
        out[_instance_id(gw)] = samples
    return out


def _delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], sample: str
) -> dict[str, int]:
    """How much one sample grew on each instance."""
    return {i: round(after[i].get(sample, 0.0) - before.get(i, {}).get(sample, 0.0)) for i in after}


def _published(kind: str) -> str:
    return f'gateway_fanout_published_total{{kind="{kind}",outcome="ok"}}'


def _received(kind: str, outcome: str) -> str:
    return f'gateway_fanout_received_total{{kind="{kind}",outcome="{outcome}"}}'


def start_fanout_gateways(
    own: Owned,
    fs_host: str,
    args: argparse.Namespace,
    name: str,
    admin: str,
    env: dict[str, str],
    *,
    count: int,
    ping_interval: float,
) -> list[Gateway]:
    """``count`` gateways on one Pub/Sub topic, owned, with the admin token for their REST
    calls; returned once every one's pull stream is open (a message published before its
    subscription exists never reaches it)."""
    from tests.bench.runner import Gateway

    gateways: list[Gateway] = []
    for k in range(count):
        gw = own(Gateway(fs_host, ping_interval, args, f"{name}-{k}", extra_env=env))
        gw.token = admin
        gw.http.headers["Authorization"] = f"Bearer {admin}"
        gw.start()
        gateways.append(gw)
    deadline = time.monotonic() + 60
    while not all(m.get("gateway_fanout_connected") == 1 for m in _metrics(gateways).values()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: the gateways' Pub/Sub pull streams did not open in 60 s")
        time.sleep(0.2)
    return gateways


def _instance_id(gw: Gateway) -> str:
    return str(gw.proc.env["GATEWAY_INSTANCE_ID"])


def _cpu(pids: list[int]) -> float:
    from tests.bench.runner import tree_cpu_seconds

    return sum(tree_cpu_seconds(pid) for pid in pids)


@contextlib.contextmanager
def _firestore(fs_host: str, project: str) -> Iterator[Any]:
    """A Firestore client on the emulator (the library reads its host from the environment)."""
    from google.cloud import firestore as gfs

    saved = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = fs_host
    db = gfs.Client(project=project)
    try:
        yield db
    finally:
        db.close()
        if saved is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = saved


class _Frames:
    """What the load client received: send frames by n, broadcast tallies by b."""

    def __init__(self, client: ClientProc) -> None:
        self.client = client
        self.sends: dict[int, tuple[str, float]] = {}
        self.duplicates = 0
        self.broadcasts: dict[int, list[Any]] = {}

    def poll(self) -> None:
        self.client.command("fanout")
        event = self.client.wait_for("fanout", 30)
        for n, user, at in event["sends"]:
            self.duplicates += n in self.sends
            self.sends.setdefault(int(n), (user, at))
        self.broadcasts = {int(b): tally for b, tally in event["broadcasts"].items()}

    def wait_sends(self, numbers: range, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if all(n in self.sends for n in numbers) or time.monotonic() > deadline:
                return
            time.sleep(0.1)


def _fresh_client(base_url: str, token: str) -> httpx.Client:
    """One TCP connection per request, so the proxy spreads requests round-robin."""
    return httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}", "Connection": "close"},
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=30,
    )


def _sequential_sends(
    url: str, token: str, users: list[str], following: dict[str, str], frames: _Frames
) -> dict[str, Any]:
    """Phase 1: one send at a time to a random user; which instance answered, where the user is."""
    rng = random.Random(20_240_601)
    calls: list[dict[str, Any]] = []
    with _fresh_client(url, token) as http:
        for n in range(1, SENDS + 1):
            user = rng.choice(users)
            before = http.get("/healthz").json()["instance_id"]
            started = time.time()
            response = http.post(f"/ws/send/{user}", json={"type": "bench", "n": n})
            answered = time.time()
            body = response.json() if response.status_code == 200 else {}
            calls.append(
                {
                    "n": n,
                    "user": user,
                    "started": started,
                    "answered": answered,
                    "status": response.status_code,
                    "entry": following[before],
                    "instances": body.get("instances", []),
                    "unreachable": body.get("unreachable_instances", []),
                }
            )
    frames.wait_sends(range(1, SENDS + 1))
    latency: list[float] = []
    local: list[float] = []
    forwarded: list[float] = []
    answered_ms: list[float] = []
    lost = errors = 0
    for call in calls:
        answered_ms.append(call["answered"] - call["started"])
        if call["status"] != 200:
            errors += 1
        got = frames.sends.get(call["n"])
        if got is None or got[0] != call["user"]:
            lost += 1
            continue
        value = got[1] - call["started"]
        latency.append(value)
        # One socket per user: ``instances`` is the instance holding it.
        (local if call["entry"] in call["instances"] else forwarded).append(value)
    return {
        "sends": len(calls),
        "latency": _summary(latency),
        "answered_by_holder": _summary(local),
        "answered_elsewhere": _summary(forwarded),
        "rest_answer": _summary(answered_ms),
        "errors": errors,
        "lost": lost,
        "unreachable_answers": sum(1 for c in calls if c["unreachable"]),
        "samples_ms": {
            "answered_by_holder": _samples(local),
            "answered_elsewhere": _samples(forwarded),
        },
    }


def _broadcasts(url: str, token: str, sockets: int, frames: _Frames) -> dict[str, Any]:
    """Phase 2: broadcasts one at a time, each until the last socket has it."""
    last: list[float] = []
    answered: list[float] = []
    short: list[int] = []
    with _fresh_client(url, token) as http:
        for b in range(1, BROADCASTS + 1):
            started = time.time()
            response = http.post("/ws/broadcast", json={"type": "bench", "b": b})
            answered.append(time.time() - started)
            response.raise_for_status()
            if response.json()["connections"] != sockets:
                short.append(response.json()["connections"])
            deadline = time.monotonic() + 30
            while True:
                frames.poll()
                tally = frames.broadcasts.get(b, [0, 0.0, 0.0])
                if tally[0] >= sockets or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if tally[0] < sockets:
                short.append(tally[0])
            last.append(tally[2] - started)
    return {
        "broadcasts": BROADCASTS,
        "last_socket": _summary(last),
        "last_socket_samples_ms": _samples(last),
        "rest_answer": _summary(answered),
        "incomplete": short,
    }


def _stats_calls(url: str, token: str, sockets: int) -> dict[str, Any]:
    """Phase 2b: ``/ws/stats`` (a scatter/gather over the topic) and ``/ws/status`` (one
    member read) through the proxy, one at a time; each stats answer must count every socket
    on every instance."""
    stats_times: list[float] = []
    status_times: list[float] = []
    wrong: list[Any] = []
    with _fresh_client(url, token) as http:
        for _ in range(STATS_CALLS):
            started = time.perf_counter()
            body = http.get("/ws/stats").raise_for_status().json()
            stats_times.append(time.perf_counter() - started)
            if body["scope"] != "deployment" or body["total_connections"] < sockets:
                wrong.append((body["scope"], body["total_connections"]))
            started = time.perf_counter()
            http.get("/ws/status/nobody").raise_for_status()
            status_times.append(time.perf_counter() - started)
    return {"stats": _summary(stats_times), "status": _summary(status_times), "wrong": wrong}


async def _burst(url: str, token: str, users: list[str], first: int) -> list[dict[str, Any]]:
    """Phase 3's load: CPU_SENDS sends to random users, CONCURRENCY in flight."""
    rng = random.Random(first)
    targets = [rng.choice(users) for _ in range(CPU_SENDS)]
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {token}", "Connection": "close"},
        limits=httpx.Limits(max_keepalive_connections=0, max_connections=CONCURRENCY),
        timeout=30,
    ) as http:

        async def one(k: int) -> dict[str, Any]:
            async with gate:
                started = time.time()
                response = await http.post(
                    f"/ws/send/{targets[k]}", json={"type": "bench", "n": first + k}
                )
                return {
                    "n": first + k,
                    "user": targets[k],
                    "started": started,
                    "status": response.status_code,
                    "body": response.text if response.status_code != 200 else "",
                }

        return await asyncio.gather(*(one(k) for k in range(CPU_SENDS)))


def _cpu_window(
    url: str,
    token: str,
    users: list[str],
    gateways: list[Gateway],
    others: dict[str, int],
    frames: _Frames,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Phase 3: CPU per delivered message, gross and net of the idle (ping/pong) baseline.
    With ``--py-spy``, each gateway is profiled over the sends (.run/bench/profile-fanout-N)."""
    from tests.bench.runner import start_profiler, stop_profiler

    pids = [gw.pid for gw in gateways]
    c0, t0 = _cpu(pids), time.monotonic()
    time.sleep(BASELINE_SECONDS)
    baseline_rate = (_cpu(pids) - c0) / (time.monotonic() - t0)
    first = 1_000_000
    m0 = _metrics(gateways)
    o0 = {name: _cpu([pid]) for name, pid in others.items()}
    profilers = [
        start_profiler(args, pid, f"fanout-{k}", PROFILE_SECONDS) for k, pid in enumerate(pids)
    ]
    c1, t1 = _cpu(pids), time.monotonic()
    calls = asyncio.run(_burst(url, token, users, first))
    c2, t2 = _cpu(pids), time.monotonic()
    for profiler in profilers:
        stop_profiler(profiler)
    if args.py_spy:
        _log_profile(len(pids))
    o1 = {name: _cpu([pid]) for name, pid in others.items()}
    m1 = _metrics(gateways)
    frames.wait_sends(range(first, first + CPU_SENDS))
    wall = t2 - t1
    cpu = c2 - c1
    delivered = sum(1 for n in range(first, first + CPU_SENDS) if n in frames.sends)
    latency = [frames.sends[c["n"]][1] - c["started"] for c in calls if c["n"] in frames.sends]
    net = cpu - baseline_rate * wall
    return {
        "sends": CPU_SENDS,
        "concurrency": CONCURRENCY,
        "errors": sum(1 for c in calls if c["status"] != 200),
        "error_samples": [
            (c["user"], c["status"], c["body"][:300]) for c in calls if c["status"] != 200
        ][:5],
        "delivered": delivered,
        "window_seconds": round(wall, 2),
        "sends_per_second": round(CPU_SENDS / wall, 1),
        "gateway_cpu_seconds": round(cpu, 3),
        "gateway_cpu_percent": round(100 * cpu / wall, 1),
        "baseline_cpu_percent": round(100 * baseline_rate, 1),
        "cpu_ms_per_delivered": round(1000 * cpu / max(delivered, 1), 3),
        "cpu_ms_per_delivered_net": round(1000 * net / max(delivered, 1), 3),
        "forwarded": sum(_delta(m0, m1, _published("send")).values()),
        "coalescing": _coalescing(m0, m1),
        "latency": _summary(latency),
        "latency_samples_ms": _samples(latency),
        "other_cpu_percent": {
            name: round(100 * (o1[name] - o0[name]) / wall, 1) for name in others
        },
    }


def _coalescing(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Calls the window made, summed over the instances: Publish calls and the messages they
    carried, member read batches and the records they read."""

    def total(sample: str) -> int:
        return sum(_delta(before, after, sample).values())

    return {
        "messages": total("gateway_broker_messages_published_total"),
        "publish_calls": total("gateway_broker_publish_calls_total"),
        "member_reads": total("gateway_member_reads_total"),
        "member_read_batches": total("gateway_member_read_batches_total"),
    }


def _log_profile(count: int) -> None:
    """The three gateways' profiles as one (.run/bench/profile-fanout.txt), top by own time."""
    from tests.bench.runner import RUN_DIR, log, top_frames

    parts = [RUN_DIR / f"profile-fanout-{k}.txt" for k in range(count)]
    merged = RUN_DIR / "profile-fanout.txt"
    merged.write_text("".join(p.read_text() for p in parts if p.exists()))
    for name, share in top_frames(merged, 20):
        log(f"F: profile {share:5.1f} %  {name}")


def _import_auth_users(auth_host: str, project: str, users: list[str]) -> str | None:
    """Create the users in the Auth emulator, so each revoke is a real one; the error if not."""
    url = (
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/projects/{project}"
        "/accounts:batchCreate"
    )
    try:
        for start in range(0, len(users), 1000):
            body = {"users": [{"localId": u} for u in users[start : start + 1000]]}
            response = httpx.post(
                url, json=body, headers={"Authorization": "Bearer owner"}, timeout=30
            )
            response.raise_for_status()
            if response.json().get("error"):
                return str(response.json()["error"])[:200]
    except httpx.HTTPError as exc:
        return repr(exc)
    return None


def _wait_closed(client: ClientProc, silent: set[str], timeout: float) -> list[list[Any]]:
    """The client's socket records once every silent socket has its close frame."""
    deadline = time.monotonic() + timeout
    while True:
        client.command("report")
        records: list[list[Any]] = client.wait_for("report", 30)["sockets"]
        closed = sum(1 for r in records if r[0] in silent and r[4] is not None)
        if closed >= len(silent) or time.monotonic() > deadline:
            return records
        time.sleep(0.25)


def _sweep_reports(path: Path, offset: int) -> list[dict[str, Any]]:
    """The sweep function's report lines (one JSON line per run) written since ``offset``."""
    reports = []
    with contextlib.suppress(OSError), path.open("rb") as fh:
        fh.seek(offset)
        for line in fh.read().decode(errors="replace").splitlines():
            if '"sweep report"' in line:
                with contextlib.suppress(ValueError):
                    reports.append(json.loads(line[line.index("{") :]))
    return [r for r in reports if r.get("signed_out") or r.get("callbacks")]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def run(fs_host: str, args: argparse.Namespace, stack: list[Any]) -> dict[str, Any]:
    """The fan-out scenario: Pub/Sub emulator, three gateways, proxy, client, sweep."""
    # Imported here: the runner imports this module at its top.
    from tests.bench.runner import (
        PROJECT,
        RUN_DIR,
        ClientProc,
        Owned,
        clear_firestore,
        log,
        start_pubsub,
    )
    from tests.bench.timeout_bench import _wait_recorded

    sockets = args.fanout_sockets
    log(f"F: fan-out over Pub/Sub, {sockets:,} sockets through a proxy to {INSTANCES} instances")
    clear_firestore(fs_host)
    started_at = time.monotonic()
    gateway_log = RUN_DIR / "gateway.log"
    log_offset = _size(gateway_log)
    callback_token = f"bench-callback-{secrets.token_hex(12)}"
    with Owned(stack) as own:
        pubsub, pubsub_host = start_pubsub(own, "fanout")
        # The Auth emulator (node) takes a while: start it now, wait for it before the sweep.
        auth_port = procs.free_port()
        auth_host = f"127.0.0.1:{auth_port}"
        auth = own(procs.auth_process("127.0.0.1", auth_port, PROJECT, RUN_DIR))
        auth.log_path = RUN_DIR / "fanout-auth.log"
        auth.start()
        pubsub.wait_ready(60)
        admin = secrets.token_urlsafe(24)
        env = {
            # One admin token for the service: a REST call may land on any instance.
            "GATEWAY_ADMIN_TOKEN": admin,
            "PUBSUB_TOPIC": TOPIC,
            "PUBSUB_EMULATOR_HOST": pubsub_host,
            "GATEWAY_CALLBACK_TOKEN": callback_token,
            "PONG_TIMEOUT": f"{PONG_TIMEOUT:g}",
            "SWEEP_INTERVAL": f"{SWEEP_INTERVAL:g}",
        }
        gateways = start_fanout_gateways(
            own, fs_host, args, "fanout", admin, env, count=INSTANCES, ping_interval=PING_INTERVAL
        )
        ids = [_instance_id(gw) for gw in gateways]

        proxy_port = procs.free_port()
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        proxy = own(
            procs.Process(
                "proxy",
                [sys.executable, "-m", "tests.proxy", str(proxy_port)]
                + [str(gw.port) for gw in gateways],
                f"tcp://127.0.0.1:{proxy_port}",
                RUN_DIR / "fanout-proxy.log",
            )
        )
        proxy.start()
        proxy.wait_ready(30)
        # The instance after each one in the proxy's cycle (the order of its backends).
        following = {ids[k]: ids[(k + 1) % INSTANCES] for k in range(INSTANCES)}

        function_port = procs.free_port()
        function = own(
            procs.function_process(
                {
                    "FIRESTORE_EMULATOR_HOST": fs_host,
                    "FIREBASE_AUTH_EMULATOR_HOST": auth_host,
                    "GOOGLE_CLOUD_PROJECT": PROJECT,
                    "GATEWAY_CALLBACK_TOKEN": callback_token,
                    "GATEWAY_URL": proxy_url,
                    "PONG_TIMEOUT": f"{PONG_TIMEOUT:g}",
                    "SWEEP_INTERVAL": f"{SWEEP_INTERVAL:g}",
                },
                "127.0.0.1",
                function_port,
                RUN_DIR,
            )
        )
        function.log_path = RUN_DIR / "fanout-sweep.log"
        function_offset = _size(function.log_path)
        function.start()

        client = own(
            ClientProc(
                "client-fanout",
                [
                    sys.executable,
                    "-m",
                    "tests.bench.load_client",
                    f"--port={proxy_port}",
                    f"--count={sockets}",
                    "--mode=fanout",
                    "--impl=raw",
                    f"--prefix={PREFIX}",
                    "--hosts=1",  # the proxy listens on 127.0.0.1 only
                    f"--concurrency={args.client_concurrency}",
                    f"--silent-every={SILENT_EVERY}",
                ],
                RUN_DIR / "client.log",
            )
        )
        ready = client.wait_for("ready", max(120, sockets / 50))
        connected_at = time.time()
        if ready["failed"]:
            raise RuntimeError(f"F: {ready['failed']} sockets failed: {ready['last_error']}")
        deadline = time.monotonic() + 60
        while (held := [gw.connections() for gw in gateways]) and sum(held) != sockets:
            if time.monotonic() > deadline:
                raise TimeoutError(f"F: instances hold {held} sockets, wanted {sockets}")
            time.sleep(0.25)
        users = [f"{PREFIX}-{i:06d}" for i in range(sockets)]
        silent = {u for i, u in enumerate(users) if i % SILENT_EVERY == 0}
        with _firestore(fs_host, PROJECT) as db:
            # The sends find where a user is in the member's active_sessions.
            _wait_recorded(db, dict.fromkeys(users, 1), 60)
        log(
            f"F: {sockets:,} sockets open after {ready['seconds']:.1f}s "
            f"({', '.join(f'{i} {n}' for i, n in zip(ids, held, strict=True))}; "
            f"{len(silent)} silent)"
        )

        frames = _Frames(client)
        token = admin
        m0 = _metrics(gateways)
        sends = _sequential_sends(proxy_url, token, users, following, frames)
        m1 = _metrics(gateways)
        sends["forwarded_by_metrics"] = sum(_delta(m0, m1, _published("send")).values())
        log(
            f"F: send p50/p99 {sends['latency']['p50_ms']}/{sends['latency']['p99_ms']} ms; "
            f"{sends['answered_elsewhere']['count']} of {sends['sends']} answered by an "
            f"instance not holding the user ({sends['forwarded_by_metrics']} published)"
        )

        casts = _broadcasts(proxy_url, token, sockets, frames)
        log(
            f"F: broadcast to {sockets:,} sockets, last socket p50/p99 "
            f"{casts['last_socket']['p50_ms']}/{casts['last_socket']['p99_ms']} ms"
        )

        deployment_view = _stats_calls(proxy_url, token, sockets)
        log(
            f"F: stats p50/p99 {deployment_view['stats']['p50_ms']}/"
            f"{deployment_view['stats']['p99_ms']} ms; status p50/p99 "
            f"{deployment_view['status']['p50_ms']}/{deployment_view['status']['p99_ms']} ms"
        )

        others = {"proxy": proxy.popen.pid, "pubsub": pubsub.popen.pid}
        if getattr(args, "_firestore_pid", None):
            others["firestore"] = args._firestore_pid
        burst = _cpu_window(proxy_url, token, users, gateways, others, frames, args)
        log(
            f"F: {burst['sends_per_second']:.0f} sends/s with {CONCURRENCY} in flight; gateway "
            f"CPU {burst['cpu_ms_per_delivered']:.2f} ms per delivered message "
            f"({burst['cpu_ms_per_delivered_net']:.2f} ms net of the ping/pong baseline)"
        )

        # Phase 4: the sweep signs out the silent users once their connect is PONG_TIMEOUT old.
        auth.wait_ready(120)
        auth_error = _import_auth_users(auth_host, PROJECT, sorted(silent))
        if auth_error:
            log(f"F: Auth users not imported ({auth_error}); the sweep revokes missing users")
        function.wait_ready(60)
        wait = connected_at + PONG_TIMEOUT + 1 - time.time()
        if wait > 0:
            log(f"F: waiting {wait:.0f}s for the silent users to pass PONG_TIMEOUT")
            time.sleep(wait)
        m2 = _metrics(gateways)
        scheduler = own(
            procs.scheduler_process(f"http://127.0.0.1:{function_port}/", SWEEP_INTERVAL, RUN_DIR)
        )
        scheduler.log_path = RUN_DIR / "fanout-scheduler.log"
        scheduler.start()
        log(f"F: sweep scheduled every {SWEEP_INTERVAL:g}s (GATEWAY_URL={proxy_url})")
        records = _wait_closed(client, silent, 60)
        # One more tick: a run that found nobody left to sign out.
        time.sleep(SWEEP_INTERVAL + 1)
        scheduler.stop()
        m3 = _metrics(gateways)
        with _firestore(fs_host, PROJECT) as db:
            members = {
                snap.id: (snap.update_time.timestamp(), snap.to_dict() or {})
                for snap in db.get_all([db.collection(MEMBERS).document(u) for u in users])
            }
        timeout = _timeouts(records, members, silent)
        timeout["sweep_reports"] = _sweep_reports(function.log_path, function_offset)
        timeout["callbacks_received"] = _delta(m2, m3, "gateway_callbacks_received_total")
        timeout["timeouts_sent"] = _delta(m2, m3, "gateway_timeouts_sent_total")
        timeout["timeout_fanouts_published"] = sum(_delta(m2, m3, _published("timeout")).values())
        timeout["timeout_fanouts_served"] = sum(
            _delta(m2, m3, _received("timeout", "served")).values()
        )
        lat = timeout["latency"]
        log(
            f"F: sweep commit -> timeout frame p50/p99/max {lat['p50_ms']}/{lat['p99_ms']}/"
            f"{lat['max_ms']} ms over {lat['count']} sockets"
        )
        missing = sum(_delta(m0, m3, "gateway_fanout_missing_receipts_total").values())

        client.command("stop")
        client.wait_for("stopped", 30)
    reconciled = 0
    with contextlib.suppress(OSError), gateway_log.open("rb") as fh:
        fh.seek(log_offset)
        for line in fh.read().decode(errors="replace").splitlines():
            found = re.search(r"reconcile closed (\d+) signed-out sockets", line)
            reconciled += int(found.group(1)) if found else 0
    timeout["closed_by_reconcile"] = reconciled
    return {
        "instances": INSTANCES,
        "instance_ids": ids,
        "sockets": sockets,
        "sockets_per_instance": dict(zip(ids, held, strict=True)),
        "silent": len(silent),
        "ping_interval": PING_INTERVAL,
        "pong_timeout": PONG_TIMEOUT,
        "sweep_interval": SWEEP_INTERVAL,
        "send": sends,
        "broadcast": casts,
        "deployment_view": deployment_view,
        "cpu": burst,
        "timeout": timeout,
        "missing_receipts": missing,
        "duplicate_frames": frames.duplicates,
        "auth_import_error": auth_error,
        "seconds": round(time.monotonic() - started_at, 1),
        "http_mesh_reference": HTTP_MESH_REFERENCE,
    }


def _timeouts(
    records: list[list[Any]],
    members: dict[str, tuple[float, dict[str, Any]]],
    silent: set[str],
) -> dict[str, Any]:
    """Commit -> timeout frame per silent socket; who else got a timeout or was signed out."""
    latency: list[float] = []
    once = none = twice = code_4408 = implausible = 0
    for user, _port, timeouts, timeout_at, close_code, _close_at in records:
        if user not in silent:
            continue
        once += timeouts == 1
        none += timeouts == 0
        twice += timeouts > 1
        code_4408 += close_code == 4408
        if not timeout_at or user not in members:
            continue
        committed, member = members[user]
        value = timeout_at - committed
        stamp = member.get(LAST_SIGN_OUT_AT)
        # update_time is the finalize commit unless a later write changed the member.
        clock = stamp.timestamp() if isinstance(stamp, datetime) else None
        implausible += value < 0 or clock is None or committed < clock
        latency.append(value)
    answering = {r[0] for r in records if r[0] not in silent}
    return {
        "silent_sockets": len(silent),
        "latency": _summary(latency),
        "latency_samples_ms": _samples(latency),
        "exactly_one_timeout": once,
        "no_timeout": none,
        "more_than_one_timeout": twice,
        "closed_4408": code_4408,
        "implausible_commit_times": implausible,
        "signed_out_silent": sum(
            1 for u in silent if members.get(u, (0, {}))[1].get(IS_SIGNED_IN) is False
        ),
        "signed_out_answering": sum(
            1 for u in answering if members.get(u, (0, {}))[1].get(IS_SIGNED_IN) is False
        ),
        "answering_timed_out": sum(1 for r in records if r[0] not in silent and r[2]),
    }


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Summary rows; the timeout latency is held to the issue's 1 s, the rest is reported."""
    if not result:
        return []
    send, cast, cpu, tmo = result["send"], result["broadcast"], result["cpu"], result["timeout"]
    lat, elsewhere, holder = send["latency"], send["answered_elsewhere"], send["answered_by_holder"]
    last, tlat = cast["last_socket"], tmo["latency"]
    view = result["deployment_view"]
    where = f"{result['sockets']:,} sockets on {result['instances']} instances via the proxy"
    sweep = tmo["sweep_reports"]
    complete = (
        tmo["exactly_one_timeout"] == tmo["silent_sockets"] == tmo["closed_4408"]
        and tmo["signed_out_silent"] == tmo["silent_sockets"]
    )
    return [
        {
            "figure": f"fanout: send -> client receipt p50 / p99 ({where})",
            "value": f"{lat['p50_ms']} / {lat['p99_ms']} ms over {lat['count']} sends; "
            f"{elsewhere['count']} answered by an instance not holding the user "
            f"({elsewhere['p50_ms']} / {elsewhere['p99_ms']} ms; {send['forwarded_by_metrics']} "
            f"published), {holder['count']} by its holder "
            f"({holder['p50_ms']} / {holder['p99_ms']} ms)",
            "target": "-",
            "ok": None,
        },
        {
            "figure": f"fanout: broadcast to all {result['sockets']:,}, last socket p50 / p99",
            "value": f"{last['p50_ms']} / {last['p99_ms']} ms over {cast['broadcasts']} "
            f"(REST answer p50 {cast['rest_answer']['p50_ms']} ms)",
            "target": "-",
            "ok": None,
        },
        {
            "figure": "fanout: /ws/stats (scatter/gather over Pub/Sub) / /ws/status (Firestore) "
            "p50 / p99",
            "value": f"{view['stats']['p50_ms']} / {view['stats']['p99_ms']} ms; "
            f"{view['status']['p50_ms']} / {view['status']['p99_ms']} ms over "
            f"{view['stats']['count']} calls; {len(view['wrong'])} stats answers short",
            "target": "0 short",
            "ok": not view["wrong"],
        },
        {
            "figure": "fanout: sweep commit -> timeout frame p50 / p99 / max (GATEWAY_URL = proxy)",
            "value": f"{tlat['p50_ms']} / {tlat['p99_ms']} / {tlat['max_ms']} ms over "
            f"{tlat['count']} silent sockets"
            + (
                f", {tmo['implausible_commit_times']} implausible commit times"
                if tmo["implausible_commit_times"]
                else ""
            ),
            "target": f"p99 < {TARGET_P99_MS:g} ms",
            "ok": tlat["p99_ms"] is not None
            and tlat["p99_ms"] < TARGET_P99_MS
            and tlat["count"] == tmo["silent_sockets"]
            and tmo["implausible_commit_times"] == 0,
        },
        {
            "figure": "fanout: silent sockets timed out once (4408); others untouched",
            "value": f"{tmo['exactly_one_timeout']} of {tmo['silent_sockets']} "
            f"({tmo['no_timeout']} none, {tmo['more_than_one_timeout']} twice, "
            f"{tmo['closed_4408']} closed 4408, {tmo['closed_by_reconcile']} by the reconcile "
            f"poll); {sum(r.get('callbacks', 0) for r in sweep)} callbacks in {len(sweep)} "
            f"sweep run(s); answering users signed out {tmo['signed_out_answering']}",
            "target": "all; 0",
            "ok": complete and tmo["signed_out_answering"] == 0 and tmo["answering_timed_out"] == 0,
        },
        {
            "figure": f"fanout: gateway CPU per delivered message ({cpu['sends']:,} sends, "
            f"{cpu['concurrency']} in flight)",
            "value": f"{cpu['cpu_ms_per_delivered']:.2f} ms ({cpu['cpu_ms_per_delivered_net']:.2f}"
            f" ms net of pings/pongs); {cpu['sends_per_second']:.0f} sends/s, p50/p99 "
            f"{cpu['latency']['p50_ms']}/{cpu['latency']['p99_ms']} ms",
            "target": "-",
            "ok": None,
        },
        {
            "figure": "fanout: messages lost, missing receipts, errors",
            "value": f"{send['lost'] + cpu['sends'] - cpu['delivered']} lost, "
            f"{result['missing_receipts']} missing receipts, "
            f"{send['errors'] + cpu['errors']} REST errors, "
            f"{len(cast['incomplete'])} incomplete broadcasts",
            "target": "0",
            "ok": send["lost"] + cpu["sends"] - cpu["delivered"] == 0
            and result["missing_receipts"] == 0
            and send["errors"] + cpu["errors"] == 0
            and not cast["incomplete"],
        },
        {
            "figure": "HTTP mesh before Pub/Sub (reference, not re-measured)",
            "value": result["http_mesh_reference"],
            "target": "-",
            "ok": None,
        },
    ]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Where the fan-out's time and CPU went, printed under the table."""
    if not result:
        return []
    send, cpu, tmo = result["send"], result["cpu"], result["timeout"]
    calls = cpu["coalescing"]
    rest = send["rest_answer"]
    others = ", ".join(f"{k} {v:.0f} %" for k, v in cpu["other_cpu_percent"].items())
    callbacks = ", ".join(f"{k} {v}" for k, v in tmo["callbacks_received"].items())
    sent = "/".join(str(v) for v in tmo["timeouts_sent"].values())
    return [
        f"fanout: sends' REST answer (after the receipts) p50/p99 {rest['p50_ms']}/"
        f"{rest['p99_ms']} ms; sockets per instance "
        + "/".join(str(v) for v in result["sockets_per_instance"].values())
        + f"; {cpu['forwarded']} of {cpu['sends']} window sends published",
        f"fanout: CPU window {cpu['window_seconds']} s: gateways {cpu['gateway_cpu_percent']:.0f}"
        f" % of one core (idle baseline {cpu['baseline_cpu_percent']:.0f} %), {others}",
        f"fanout: CPU window's calls: {calls['messages']} messages in {calls['publish_calls']} "
        f"Publish calls, {calls['member_reads']} member records in "
        f"{calls['member_read_batches']} batched reads",
        *(f"fanout: CPU window's error answer: {e}" for e in cpu.get("error_samples", [])),
        f"fanout: timeout callbacks received by {callbacks}; timeouts sent per instance {sent}; "
        f"{tmo['timeout_fanouts_published']} timeout fan-outs published, "
        f"{tmo['timeout_fanouts_served']} served",
    ]
