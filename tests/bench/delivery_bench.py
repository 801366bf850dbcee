"""REST delivery on one gateway instance (``--only delivery``).

What an integrator's backend costs the gateway when it pushes messages through the REST API:
one gateway (``AUTH_MODE=off``) on the runner's Firestore emulator, ``SOCKETS`` sockets opened
by a load-client process (``tests/bench/load_client.py`` in ``fanout`` mode: every socket
answers pings and the client counts each ``{"type":"bench"}`` frame it receives, by number for
a send and by broadcast, and every other frame). The gateway's CPU time (user + system, read
from /proc through psutil) is taken just before and just after each phase, once the phase's
HTTP connections are open, so it holds the REST calls and the deliveries and nothing else but
the gateway's own background work (pings every ``PING_INTERVAL``, heartbeats), which an idle
window of ``BASELINE_SECONDS`` before the phases measures and the "net" figures subtract.

Every phase runs twice, on a fresh gateway and client each time:

* **A**: the gateway without ``PUBSUB_TOPIC`` (an instance alone);
* **B**: the gateway with ``PUBSUB_TOPIC`` on gcloud's Pub/Sub emulator (started here), every
  user still connected to that one instance: what a broker costs a send that never needs it.

1. **targeted send**: ``SENDS`` ``POST /ws/send/{user}`` to random users of the ``SOCKETS``,
   ``SEND_CONCURRENCY`` in flight on one keep-alive ``httpx.AsyncClient``: sends per second,
   gateway CPU per send, and every frame delivered exactly once to its user (the client's
   count).
2. **broadcast**: ``BROADCASTS`` ``POST /ws/broadcast``, one at a time: gateway CPU per
   broadcast and per delivered frame; every broadcast must reach every socket once.
3. **batch send**: ``POST /ws/send`` with ``{"messages": [{"user_id": ..., "message": {...}}]}``
   when the gateway has it (a probe with an empty list; 404 or 405 means it has not, and the
   phase is skipped): ``BATCHES`` batches of ``BATCH_SIZE`` entries, ``BATCH_CONCURRENCY`` in
   flight: delivered messages per second and gateway CPU per delivered message; then the same
   with ``?durable=true`` if that answers (its ``stream`` frames are counted among the
   client's other frames).

``--profile`` runs phase 1 once more, in B and in A, under ``py-spy record --format raw``
(the binary given by ``--py-spy``, else the one next to this interpreter or on PATH; none: no
profile) into ``.run/bench/profile-delivery-send-{B,A}.txt`` and prints each one's 15
functions with the most own time. The measured rows come from the unprofiled pass, so they do
not depend on the profiler.

The goals (issue): a targeted send at most ``TARGET_SEND_CPU_MS`` of gateway CPU, with and
without a broker; a batch at least ``TARGET_BATCH_PER_S`` delivered messages per second on
one instance. Timing is reported, never asserted: a missed goal shows as FAIL in its row.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

if TYPE_CHECKING:
    from tests.bench.runner import ClientProc, Gateway

SOCKETS = 100
SENDS = 2_000
SEND_CONCURRENCY = 32
BROADCASTS = 20
BATCHES = 20
BATCH_SIZE = 200
BATCH_CONCURRENCY = 4
#: Pings are part of the setup, not of the figures: at 30 s, at most one round per phase.
PING_INTERVAL = 30.0
BASELINE_SECONDS = 2.0
#: Longest wait for the client to report every frame of a phase.
FRAME_WAIT = 20.0
TOPIC = "bench-delivery"
PREFIX = "dlv"
PROFILE_TOP = 15
#: The issue's goals.
TARGET_SEND_CPU_MS = 0.3
TARGET_BATCH_PER_S = 5_000.0
#: First frame number of each phase, so no phase can count another's frames.
FIRST_SEND = 1_000_000
FIRST_PROFILED = 2_000_000
FIRST_BATCH = 3_000_000
FIRST_DURABLE = 4_000_000

CONFIGS: dict[str, str] = {
    "A": "no broker",
    "B": "PUBSUB_TOPIC, every user local",
}


def _percentile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


class Frames:
    """What the load client received, from its ``fanout`` reports: the users each numbered
    frame reached (more than one entry is a duplicate) and each broadcast's socket count."""

    def __init__(self, client: ClientProc) -> None:
        self.client = client
        self.sends: dict[int, list[str]] = {}
        self.broadcasts: dict[int, int] = {}

    def poll(self) -> None:
        self.client.command("fanout")
        event = self.client.wait_for("fanout", 30)
        for n, user, _at in event["sends"]:
            self.sends.setdefault(int(n), []).append(str(user))
        self.broadcasts = {int(b): int(tally[0]) for b, tally in event["broadcasts"].items()}

    def other_frames(self) -> int:
        """Frames that are neither pings nor bench frames (durable ``stream`` frames)."""
        self.client.command("stats")
        return int(self.client.wait_for("stats", 30)["other_frames"])

    def wait(self, done: Callable[[], bool], timeout: float = FRAME_WAIT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if done() or time.monotonic() > deadline:
                return
            time.sleep(0.1)

    def check(self, expected: dict[int, str]) -> dict[str, int]:
        """Numbered frames against the users they were sent to: exactly once each?"""
        self.wait(lambda: all(n in self.sends for n in expected))
        time.sleep(0.2)  # a duplicate arriving just after the last frame
        self.poll()
        got = [self.sends.get(n, []) for n in expected]
        return {
            "expected": len(expected),
            "delivered": sum(1 for users in got if users),
            "lost": sum(1 for users in got if not users),
            "duplicated": sum(len(users) - 1 for users in got if len(users) > 1),
            "misrouted": sum(
                1
                for (_, user), users in zip(expected.items(), got, strict=True)
                if users and users[0] != user
            ),
        }


class Meter:
    """CPU seconds around one phase: the gateway's, the other processes' (each with its
    children), this harness's own (the HTTP client) and the whole machine's busy time."""

    def __init__(self, gateway_pid: int, others: dict[str, int]) -> None:
        self.pids = {"gateway": gateway_pid, **others}
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self.wall = 0.0
        self._t0 = 0.0

    def _read(self) -> dict[str, float]:
        from tests.bench.runner import busy_cpus, tree_cpu_seconds

        own = psutil.Process().cpu_times()
        return {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()} | {
            "harness": own.user + own.system,
            "machine": busy_cpus(),
        }

    def start(self) -> None:
        self.before, self._t0 = self._read(), time.monotonic()

    def stop(self) -> None:
        self.wall = time.monotonic() - self._t0
        self.after = self._read()

    def seconds(self, name: str = "gateway") -> float:
        return self.after[name] - self.before[name]

    def summary(self, baseline: float, units: int) -> dict[str, Any]:
        """CPU per unit (ms), gross and net of the idle rate ``baseline`` (CPU-s per s)."""
        cpu = self.seconds()
        return {
            "window_seconds": round(self.wall, 3),
            "gateway_cpu_seconds": round(cpu, 4),
            "gateway_cpu_percent": round(100 * cpu / max(self.wall, 1e-9), 1),
            "cpu_ms_per_unit": round(1000 * cpu / max(units, 1), 4),
            "cpu_ms_per_unit_net": round(1000 * (cpu - baseline * self.wall) / max(units, 1), 4),
            # 100 % = one core; "machine" is every process on it, other developers' included.
            "other_cpu_percent": {
                name: round(100 * self.seconds(name) / max(self.wall, 1e-9), 1)
                for name in self.after
                if name != "gateway"
            },
        }


def _published_total(metrics: dict[str, dict[str, float]]) -> float:
    """Every request published on the fan-out topic (``outcome="ok"``, any kind), summed."""
    return sum(
        value
        for samples in metrics.values()
        for sample, value in samples.items()
        if sample.startswith("gateway_fanout_published_total{") and 'outcome="ok"' in sample
    )


def _http(gw: Gateway, token: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gw.port}",
        headers={"Authorization": f"Bearer {token}"},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=120,
    )


async def _post(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], params: dict[str, str] | None = None
) -> httpx.Response | None:
    """The answer, or None when the connection failed (counted as status 0, never retried: a
    retry could deliver a frame twice)."""
    try:
        return await http.post(path, params=params, json=body)
    except httpx.TransportError:
        return None


async def _open_connections(http: httpx.AsyncClient, count: int) -> None:
    """Open ``count`` keep-alive connections before the meter starts."""
    await asyncio.gather(*(http.get("/healthz") for _ in range(count)))


async def _targeted(
    gw: Gateway, token: str, users: list[str], first: int, meter: Meter
) -> dict[str, Any]:
    """Phase 1: SENDS sends to random users, SEND_CONCURRENCY in flight."""
    rng = random.Random(first)
    plan = {first + k: rng.choice(users) for k in range(SENDS)}
    numbers = iter(plan)
    answers: list[float] = []
    statuses: dict[int, int] = {}
    unreachable = 0
    async with _http(gw, token, SEND_CONCURRENCY) as http:
        await _open_connections(http, SEND_CONCURRENCY)

        async def worker() -> None:
            nonlocal unreachable
            for n in numbers:
                started = time.perf_counter()
                response = await _post(http, f"/ws/send/{plan[n]}", {"type": "bench", "n": n})
                answers.append(time.perf_counter() - started)
                status = 0 if response is None else response.status_code
                statuses[status] = statuses.get(status, 0) + 1
                if response is not None and status == 200:
                    unreachable += bool(response.json().get("unreachable_instances"))

        meter.start()
        await asyncio.gather(*(worker() for _ in range(SEND_CONCURRENCY)))
        meter.stop()
    return {
        "plan": plan,
        "statuses": statuses,
        "unreachable_answers": unreachable,
        "answer_p50_ms": _percentile_ms(answers, 0.5),
        "answer_p99_ms": _percentile_ms(answers, 0.99),
    }


def phase_send(
    gw: Gateway,
    token: str,
    users: list[str],
    frames: Frames,
    meter: Meter,
    baseline: float,
    first: int,
) -> dict[str, Any]:
    calls = asyncio.run(_targeted(gw, token, users, first, meter))
    plan = calls.pop("plan")
    delivery = frames.check(plan)
    errors = SENDS - calls["statuses"].get(200, 0)
    return {
        "sends": SENDS,
        "concurrency": SEND_CONCURRENCY,
        "sends_per_second": round(SENDS / max(meter.wall, 1e-9), 1),
        **meter.summary(baseline, SENDS),
        **calls,
        **delivery,
        "errors": errors,
        "exactly_once": delivery["delivered"] == SENDS
        and delivery["duplicated"] == 0
        and delivery["misrouted"] == 0
        and errors == 0,
    }


async def _broadcasts(gw: Gateway, token: str, first: int, meter: Meter) -> dict[str, Any]:
    answers: list[float] = []
    reported: list[int] = []
    errors = 0
    async with _http(gw, token, 1) as http:
        await _open_connections(http, 1)
        meter.start()
        for b in range(first, first + BROADCASTS):
            started = time.perf_counter()
            response = await _post(http, "/ws/broadcast", {"type": "bench", "b": b})
            answers.append(time.perf_counter() - started)
            if response is not None and response.status_code == 200:
                reported.append(int(response.json().get("connections", 0)))
            else:
                errors += 1
        meter.stop()
    return {
        "errors": errors,
        "answer_p50_ms": _percentile_ms(answers, 0.5),
        "answer_max_ms": _percentile_ms(answers, 1.0),
        "connections_reported": sum(reported),
    }


def phase_broadcast(
    gw: Gateway, token: str, frames: Frames, meter: Meter, baseline: float, first: int
) -> dict[str, Any]:
    calls = asyncio.run(_broadcasts(gw, token, first, meter))
    wanted = range(first, first + BROADCASTS)
    frames.wait(lambda: all(frames.broadcasts.get(b, 0) >= SOCKETS for b in wanted))
    time.sleep(0.2)
    frames.poll()
    counts = [frames.broadcasts.get(b, 0) for b in wanted]
    delivered = sum(counts)
    summary = meter.summary(baseline, BROADCASTS)
    cpu = meter.seconds()
    return {
        "broadcasts": BROADCASTS,
        "sockets": SOCKETS,
        "frames_expected": BROADCASTS * SOCKETS,
        "frames_delivered": delivered,
        "incomplete": sum(1 for c in counts if c != SOCKETS),
        "cpu_ms_per_broadcast": summary["cpu_ms_per_unit"],
        "cpu_ms_per_broadcast_net": summary["cpu_ms_per_unit_net"],
        "cpu_ms_per_frame": round(1000 * cpu / max(delivered, 1), 4),
        **summary,
        **calls,
        "complete": calls["errors"] == 0 and all(c == SOCKETS for c in counts),
    }


async def _probe(gw: Gateway, token: str, durable: bool) -> int:
    """The status of an empty batch: 404 or 405 means there is no batch endpoint."""
    async with _http(gw, token, 1) as http:
        params = {"durable": "true"} if durable else {}
        response = await http.post("/ws/send", params=params, json={"messages": []})
        return response.status_code


async def _batches(
    gw: Gateway, token: str, users: list[str], first: int, durable: bool, meter: Meter
) -> dict[str, Any]:
    rng = random.Random(first)
    plan = {first + k: rng.choice(users) for k in range(BATCHES * BATCH_SIZE)}
    numbers = list(plan)
    bodies = [
        {
            "messages": [
                {"user_id": plan[n], "message": {"type": "bench", "n": n}}
                for n in numbers[i : i + BATCH_SIZE]
            ]
        }
        for i in range(0, len(numbers), BATCH_SIZE)
    ]
    queue = iter(bodies)
    answers: list[float] = []
    statuses: dict[int, int] = {}
    sample: str = ""
    params = {"durable": "true"} if durable else {}
    async with _http(gw, token, BATCH_CONCURRENCY) as http:
        await _open_connections(http, BATCH_CONCURRENCY)

        async def worker() -> None:
            nonlocal sample
            for body in queue:
                started = time.perf_counter()
                response = await _post(http, "/ws/send", body, params)
                answers.append(time.perf_counter() - started)
                status = 0 if response is None else response.status_code
                statuses[status] = statuses.get(status, 0) + 1
                if not 200 <= status < 300 and not sample:
                    sample = "connection failed" if response is None else response.text[:200]

        meter.start()
        await asyncio.gather(*(worker() for _ in range(BATCH_CONCURRENCY)))
        meter.stop()
    return {
        "plan": plan,
        "statuses": statuses,
        "error_sample": sample,
        "answer_p50_ms": _percentile_ms(answers, 0.5),
        "answer_max_ms": _percentile_ms(answers, 1.0),
    }


def phase_batch(
    gw: Gateway,
    token: str,
    users: list[str],
    frames: Frames,
    meter: Meter,
    baseline: float,
    durable: bool,
) -> dict[str, Any]:
    """Phase 3 (or its durable variant): skipped when the probe says there is no endpoint."""
    probe = asyncio.run(_probe(gw, token, durable))
    if probe in (404, 405):
        return {"available": False, "probe_status": probe}
    messages = BATCHES * BATCH_SIZE
    others_before = frames.other_frames() if durable else 0
    first = FIRST_DURABLE if durable else FIRST_BATCH
    calls = asyncio.run(_batches(gw, token, users, first, durable, meter))
    plan = calls.pop("plan")
    if durable:
        # Stream frames carry the message under "data": the client counts them as others.
        frames.wait(lambda: frames.other_frames() - others_before >= messages)
        delivered = frames.other_frames() - others_before
        delivery = {"expected": messages, "delivered": delivered, "lost": messages - delivered}
    else:
        delivery = frames.check(plan)
    ok_batches = sum(v for k, v in calls["statuses"].items() if 200 <= k < 300)
    summary = meter.summary(baseline, delivery["delivered"])
    return {
        "available": True,
        "probe_status": probe,
        "batches": BATCHES,
        "batch_size": BATCH_SIZE,
        "concurrency": BATCH_CONCURRENCY,
        "failed_batches": BATCHES - ok_batches,
        "delivered_per_second": round(delivery["delivered"] / max(meter.wall, 1e-9), 1),
        "cpu_ms_per_delivered": summary["cpu_ms_per_unit"],
        "cpu_ms_per_delivered_net": summary["cpu_ms_per_unit_net"],
        **summary,
        **calls,
        **delivery,
    }


# --- profile ---------------------------------------------------------------------------------


def py_spy_binary(args: argparse.Namespace) -> str | None:
    """``--py-spy``, else py-spy next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    for candidate in (getattr(args, "py_spy", None), str(beside), shutil.which("py-spy")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def start_py_spy(binary: str, pid: int, out: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` until SIGINT, by function (own time = the stack's leaf).
    Only the thread holding the GIL is sampled (``--gil``): the event loop's Python work and
    the worker threads' while they run Python, not threads waiting in ``epoll`` or on a queue
    (which py-spy's idle detection, without pausing the process, counts as busy on a loaded
    machine). Paused at every sample (blocking mode), the gateway fell seconds behind on two
    shared cores; the pass it profiles is not a measured one either way."""
    out.unlink(missing_ok=True)
    with log_path.open("ab") as err:
        proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
            + ["--function", "--gil", "--nonblocking", "--output", str(out)],
            stdout=err,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    time.sleep(1.0)  # attached and sampling before the phase starts
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGINT: py-spy writes what it recorded and exits; killed if it does not."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# --- the scenario ----------------------------------------------------------------------------


def _configuration(
    name: str,
    fs_host: str,
    args: argparse.Namespace,
    stack: list[Any],
    pubsub: tuple[int, str] | None,
    profile_to: Path | None,
) -> dict[str, Any]:
    """One gateway (with the broker when ``pubsub`` is its pid and host), the client, the
    three phases; the profiled extra pass of phase 1 when ``profile_to`` is set."""
    from tests.bench.fanout_bench import _firestore, _metrics, start_fanout_gateways
    from tests.bench.runner import (
        PROJECT,
        RUN_DIR,
        ClientProc,
        Gateway,
        Owned,
        log,
        tree_cpu_seconds,
    )
    from tests.bench.timeout_bench import _wait_recorded

    tag = f"delivery {name}"
    with Owned(stack) as own:
        if pubsub is None:
            gw = own(Gateway(fs_host, PING_INTERVAL, args, f"delivery-{name}"))
            gw.start()
            token = gw.token
        else:
            token = secrets.token_urlsafe(24)
            env = {
                "GATEWAY_ADMIN_TOKEN": token,
                "PUBSUB_TOPIC": TOPIC,
                "PUBSUB_EMULATOR_HOST": pubsub[1],
            }
            (gw,) = start_fanout_gateways(
                own,
                fs_host,
                args,
                f"delivery-{name}",
                token,
                env,
                count=1,
                ping_interval=PING_INTERVAL,
            )
        client: ClientProc = own(
            ClientProc(
                f"client-delivery-{name}",
                [
                    sys.executable,
                    "-m",
                    "tests.bench.load_client",
                    f"--port={gw.port}",
                    f"--count={SOCKETS}",
                    "--mode=fanout",
                    "--impl=raw",
                    f"--prefix={PREFIX}",
                    "--hosts=1",
                ],
                RUN_DIR / "client.log",
            )
        )
        ready = client.wait_for("ready", 60)
        if ready["failed"]:
            raise RuntimeError(f"{tag}: {ready['failed']} sockets failed: {ready['last_error']}")
        gw.wait_connections(SOCKETS, 60)
        users = [f"{PREFIX}-{i:06d}" for i in range(SOCKETS)]
        with _firestore(fs_host, PROJECT) as db:
            _wait_recorded(db, dict.fromkeys(users, 1), 60)
        frames = Frames(client)
        others = {"client": client.popen.pid}
        fs_pid = getattr(args, "_firestore_pid", None)
        if fs_pid:
            others["firestore"] = fs_pid
        if pubsub is not None:
            others["pubsub"] = pubsub[0]

        c0, t0 = tree_cpu_seconds(gw.pid), time.monotonic()
        time.sleep(BASELINE_SECONDS)
        baseline = (tree_cpu_seconds(gw.pid) - c0) / (time.monotonic() - t0)
        log(f"{tag}: {SOCKETS} sockets; idle gateway {100 * baseline:.1f} % of a core")

        m0 = _metrics([gw])
        send = phase_send(gw, token, users, frames, Meter(gw.pid, others), baseline, FIRST_SEND)
        log(
            f"{tag}: targeted send {send['sends_per_second']:.0f}/s, gateway CPU "
            f"{send['cpu_ms_per_unit']:.3f} ms per send ({send['cpu_ms_per_unit_net']:.3f} net); "
            f"{send['delivered']} of {SENDS} delivered, {send['duplicated']} duplicated"
        )
        m1 = _metrics([gw])
        cast = phase_broadcast(gw, token, frames, Meter(gw.pid, others), baseline, 1)
        log(
            f"{tag}: broadcast gateway CPU {cast['cpu_ms_per_broadcast']:.2f} ms per broadcast, "
            f"{cast['cpu_ms_per_frame']:.4f} ms per frame; {cast['frames_delivered']} of "
            f"{cast['frames_expected']} frames"
        )
        m2 = _metrics([gw])
        batch = phase_batch(gw, token, users, frames, Meter(gw.pid, others), baseline, False)
        durable: dict[str, Any] = {"available": False, "probe_status": None}
        if not batch["available"]:
            log(f"{tag}: batch send: not available (probe answered {batch['probe_status']})")
        else:
            log(
                f"{tag}: batch send {batch['delivered_per_second']:.0f} delivered/s, gateway CPU "
                f"{batch['cpu_ms_per_delivered']:.4f} ms per message; {batch['delivered']} of "
                f"{batch['expected']} delivered, {batch['failed_batches']} batches failed"
            )
            durable = phase_batch(gw, token, users, frames, Meter(gw.pid, others), baseline, True)
            if not durable["available"]:
                log(f"{tag}: durable batch send: not available ({durable['probe_status']})")
            else:
                log(
                    f"{tag}: durable batch {durable['delivered_per_second']:.0f} delivered/s, "
                    f"gateway CPU {durable['cpu_ms_per_delivered']:.4f} ms per message"
                )
        m3 = _metrics([gw])

        profiled: dict[str, Any] | None = None
        if profile_to is not None:
            binary = py_spy_binary(args)
            if binary is None:
                log(f"{tag}: --profile: no py-spy (make deps installs it); not profiled")
                profiled = {"error": "py-spy not found"}
            else:
                spy = start_py_spy(binary, gw.pid, profile_to, RUN_DIR / "py-spy.log")
                meter = Meter(gw.pid, others)
                try:
                    again = phase_send(gw, token, users, frames, meter, baseline, FIRST_PROFILED)
                except Exception as exc:  # the profile is optional: keep what was measured
                    log(f"{tag}: the profiled pass failed: {exc!r}")
                    profiled = {"py_spy": binary, "error": repr(exc)}
                else:
                    profiled = {"py_spy": binary, "send": again}
                    log(
                        f"{tag}: profiled pass {again['sends_per_second']:.0f} sends/s, "
                        f"{again['cpu_ms_per_unit']:.3f} ms per send"
                    )
                finally:
                    profiled = (profiled or {}) | {"exit_code": stop_py_spy(spy)}

        client.command("stop")
        client.wait_for("stopped", 30)

    return {
        "configuration": CONFIGS[name],
        "broker": pubsub is not None,
        "sockets": SOCKETS,
        "idle_cpu_percent": round(100 * baseline, 2),
        "send": send,
        "broadcast": cast,
        "batch": batch,
        "durable_batch": durable,
        # Requests this instance published on the topic during each phase (every kind).
        "published": {
            "send": round(_published_total(m1) - _published_total(m0)),
            "broadcast": round(_published_total(m2) - _published_total(m1)),
            "batch": round(_published_total(m3) - _published_total(m2)),
        },
        "profiled": profiled,
    }


def run(fs_host: str, args: argparse.Namespace, stack: list[Any]) -> dict[str, Any]:
    """Configuration A (no broker), then B (a Pub/Sub topic), each on a fresh gateway."""
    from tests.bench.runner import RUN_DIR, Owned, clear_firestore, log, start_pubsub

    log(f"delivery: REST delivery on one instance, {SOCKETS} sockets, without and with a broker")
    started = time.monotonic()
    profiling = bool(getattr(args, "profile", False))
    profile_to = {name: RUN_DIR / f"profile-delivery-send-{name}.txt" for name in CONFIGS}
    results: dict[str, Any] = {}
    with Owned(stack) as own:
        pubsub, pubsub_host = start_pubsub(own, "delivery")  # starts while A runs
        clear_firestore(fs_host)
        results["A"] = _configuration(
            "A", fs_host, args, stack, None, profile_to["A"] if profiling else None
        )
        clear_firestore(fs_host)  # A's instance record and members: B must not wait for them
        pubsub.wait_ready(60)
        assert pubsub.popen is not None
        results["B"] = _configuration(
            "B",
            fs_host,
            args,
            stack,
            (pubsub.popen.pid, pubsub_host),
            profile_to["B"] if profiling else None,
        )
    for name, path in profile_to.items():
        if (results[name].get("profiled") or {}).get("py_spy"):
            from tests.bench.runner import top_frames

            # A sample whose stack has no Python frame has an empty name.
            top = [(frame or "(no Python frame)", share) for frame, share in top_frames(path)]
            results.setdefault("profile", {})[name] = {"file": str(path), "top": top[:PROFILE_TOP]}
    results["seconds"] = round(time.monotonic() - started, 1)
    return results


# --- report ----------------------------------------------------------------------------------


def _config_rows(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    where = f"{name}, {result['configuration']}"
    send, cast, batch, durable = (
        result["send"],
        result["broadcast"],
        result["batch"],
        result["durable_batch"],
    )
    rows = [
        {
            "figure": f"delivery {where}: gateway CPU per targeted send ({SENDS:,}, "
            f"{SEND_CONCURRENCY} in flight, {SOCKETS} sockets)",
            "value": f"{send['cpu_ms_per_unit']:.3f} ms ({send['cpu_ms_per_unit_net']:.3f} net of "
            f"idle); {send['sends_per_second']:,.0f} sends/s, REST answer p50/p99 "
            f"{send['answer_p50_ms']}/{send['answer_p99_ms']} ms",
            "target": f"<= {TARGET_SEND_CPU_MS:g} ms",
            "ok": send["cpu_ms_per_unit"] <= TARGET_SEND_CPU_MS,
        },
        {
            "figure": f"delivery {name}: targeted sends delivered exactly once",
            "value": f"{send['delivered']:,} of {send['sends']:,} ({send['lost']} lost, "
            f"{send['duplicated']} duplicated, {send['misrouted']} to another user, "
            f"{send['errors']} REST errors)",
            "target": "all, once",
            "ok": send["exactly_once"],
        },
        {
            "figure": f"delivery {name}: gateway CPU per broadcast / per delivered frame "
            f"({BROADCASTS} to {SOCKETS} sockets)",
            "value": f"{cast['cpu_ms_per_broadcast']:.2f} / {cast['cpu_ms_per_frame']:.4f} ms "
            f"({cast['cpu_ms_per_broadcast_net']:.2f} net per broadcast); "
            f"{cast['frames_delivered']:,} of {cast['frames_expected']:,} frames",
            "target": "all frames",
            "ok": cast["complete"],
        },
    ]
    if not batch["available"]:
        rows.append(
            {
                "figure": f"delivery {name}: batch send ({BATCHES} x {BATCH_SIZE}, "
                f"{BATCH_CONCURRENCY} in flight)",
                "value": f"not available (POST /ws/send answered {batch['probe_status']})",
                "target": f">= {TARGET_BATCH_PER_S:,.0f}/s",
                "ok": None,
            }
        )
        return rows
    rows.append(
        {
            "figure": f"delivery {name}: batch send, delivered messages/s ({BATCHES} x "
            f"{BATCH_SIZE}, {BATCH_CONCURRENCY} in flight)",
            "value": f"{batch['delivered_per_second']:,.0f}/s, gateway CPU "
            f"{batch['cpu_ms_per_delivered']:.4f} ms per message; {batch['delivered']:,} of "
            f"{batch['expected']:,} delivered ({batch['lost']} lost, "
            f"{batch.get('duplicated', 0)} duplicated, {batch['failed_batches']} batches failed)",
            "target": f">= {TARGET_BATCH_PER_S:,.0f}/s, all once",
            "ok": batch["delivered_per_second"] >= TARGET_BATCH_PER_S
            and batch["lost"] == 0
            and batch.get("duplicated", 0) == 0
            and batch["failed_batches"] == 0,
        }
    )
    if durable["available"]:
        rows.append(
            {
                "figure": f"delivery {name}: durable batch send (?durable=true), delivered/s",
                "value": f"{durable['delivered_per_second']:,.0f}/s, gateway CPU "
                f"{durable['cpu_ms_per_delivered']:.4f} ms per message; "
                f"{durable['delivered']:,} of {durable['expected']:,} delivered, "
                f"{durable['failed_batches']} batches failed",
                "target": "all delivered",
                "ok": durable["lost"] == 0 and durable["failed_batches"] == 0,
            }
        )
    else:
        rows.append(
            {
                "figure": f"delivery {name}: durable batch send (?durable=true)",
                "value": f"not available (answered {durable['probe_status']})",
                "target": "-",
                "ok": None,
            }
        )
    return rows


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for A and B: the issue's goals on CPU per send and batch throughput."""
    if not result:
        return []
    out: list[dict[str, Any]] = []
    for name in CONFIGS:
        if name in result:
            out.extend(_config_rows(name, result[name]))
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """CPU windows, other processes, what went through Pub/Sub, and the profile."""
    if not result:
        return []
    lines: list[str] = []
    for name in CONFIGS:
        r = result.get(name)
        if not r:
            continue
        send, cast = r["send"], r["broadcast"]
        others = ", ".join(f"{k} {v:.0f} %" for k, v in send["other_cpu_percent"].items())
        lines.append(
            f"delivery {name}: idle gateway {r['idle_cpu_percent']:.1f} % of a core; send window "
            f"{send['window_seconds']:.2f} s, gateway {send['gateway_cpu_percent']:.0f} % "
            f"({others}); broadcast REST answer p50 {cast['answer_p50_ms']} ms; published to "
            f"Pub/Sub: {r['published']['send']} sends, {r['published']['broadcast']} "
            f"broadcasts, {r['published']['batch']} during the batches"
        )
        if not r["batch"]["available"]:
            lines.append(f"delivery {name}: batch send: not available")
        profiled = r.get("profiled")
        if profiled and "send" in profiled:
            again = profiled["send"]
            lines.append(
                f"delivery {name}: profiled pass of the targeted send (py-spy attached): "
                f"{again['sends_per_second']:,.0f} sends/s, {again['cpu_ms_per_unit']:.3f} ms "
                f"per send, {again['delivered']:,} of {again['sends']:,} delivered"
            )
    # B first: the question is what the broker's configuration costs a send.
    for name, profile in sorted(result.get("profile", {}).items(), reverse=True):
        lines.append(
            f"delivery {name}, targeted send: top {len(profile['top'])} functions by own time, "
            f"share of the samples in which a gateway thread held the GIL ({profile['file']}):"
        )
        lines.extend(f"  {share:5.1f} %  {frame}" for frame, share in profile["top"])
    return lines
