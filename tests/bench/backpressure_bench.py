"""Scenario P (``--only backpressure``): one gateway whose Firestore link is throttled (issue 20).

Reported: 1,000 users answering a ping every second (``PING_INTERVAL=1``, ``PONG_TIMEOUT=30``,
``SWEEP_INTERVAL=2``) on an instance whose Firestore connection passed through a TCP proxy
limited to a fraction of the bytes it sends unthrottled. At a tenth nobody was signed out but
every stored ``last_pong_at`` was 17.4 s old; at a fortieth the sweep signed out every sampled
user within 90 s, although all were connected and answering, and left their sockets open.

The goals, held by the rows of this scenario and by tests/e2e/test_backpressure.py (which runs
the same phases with fewer users through :func:`run_phases`):

* at a tenth, every connected user's stored ``last_pong_at`` stays fresher than
  ``PONG_TIMEOUT / 2``;
* at a fortieth (and at a tenth), nobody whose socket is open and answering is signed out or
  revoked, and no socket is left open whose user is signed out.

Set-up: the Firestore emulator (the runner's), the Auth emulator, one gateway with
``AUTH_MODE=firebase`` whose ``FIRESTORE_EMULATOR_HOST`` is a ``tests.throttle.ThrottleProxy``
in front of the emulator, and the real sweep function (functions-framework, ticked by the local
scheduler every ``SWEEP_INTERVAL``) on the *unthrottled* emulator, calling the gateway back
directly: only the gateway's Firestore link is slow. Each user has a real ID token (minted
before the clock starts) and one socket from a load-client process (``load_client --mode
fanout``: every ping answered, timeout and close frames recorded), ``USERS_PER_CLIENT`` users a
process, spread over the runner's loopback addresses.

Phases, once every member is recorded signed in with a fresh pong:

1. unthrottled for ``MEASURE_SECONDS``: the bytes/s through the proxy (both directions);
2. a tenth of that for ``TENTH_SECONDS``;
3. a fortieth for ``FORTIETH_SECONDS`` (the backlog of phase 2 carried over, as it would be).

Every ``SAMPLE_EVERY`` seconds each member is read straight from the emulator (never through
the proxy): the age of its stored ``last_pong_at`` (for users whose socket is open) and whether
it is signed out; the clients report which sockets got a timeout frame or were closed; the
gateway's registry entry gives the age of its last stored heartbeat and ``/metrics`` its
pong backlog and write window (when it exports them). After each phase Auth is asked which
users' tokens were revoked since the start, and the sweep function's report lines are summed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulator import procs
from gateway.storage.schema import HEARTBEAT_AT, INSTANCES, IS_SIGNED_IN, LAST_PONG_AT, MEMBERS

if TYPE_CHECKING:
    from tests.bench.runner import ClientProc
    from tests.throttle import ThrottleProxy

#: The reported deployment's settings (the gateway's and the sweep's).
SETTINGS = {"PING_INTERVAL": "1", "PONG_TIMEOUT": "30", "SWEEP_INTERVAL": "2"}
PONG_TIMEOUT = float(SETTINGS["PONG_TIMEOUT"])
SWEEP_INTERVAL = float(SETTINGS["SWEEP_INTERVAL"])
#: The goal at a tenth: every connected user's stored last_pong_at fresher than this...
FRESH_LIMIT = PONG_TIMEOUT / 2
#: ... once the writer has adapted to the new rate. A sudden tenfold drop makes the commits
#: already on the link take ten times longer (about 10 s for one ping round's 300 writes
#: here); the records they hold, and those queued behind them, age by that much once. The
#: peak is reported, and stays under PONG_TIMEOUT: nobody is signed out by it.
SETTLE_SECONDS = 30.0
#: The issue's fractions of the unthrottled bytes/s.
TENTH, FORTIETH = 10, 40
DEFAULT_USERS = 1_000
MEASURE_SECONDS = 10.0
TENTH_SECONDS = 60.0
FORTIETH_SECONDS = 90.0
SAMPLE_EVERY = 3.0
#: A signed-out user whose socket is still open this long after the sign-out was first seen
#: was left open: the sweep's callback closes it within moments, the gateway's reconcile poll
#: (every SWEEP_INTERVAL, 5 s grace) when the callback was skipped.
LEFT_OPEN_AFTER = 4 * SWEEP_INTERVAL + 5
USERS_PER_CLIENT = 500
#: The gateway's write counters (``/metrics``) whose growth each phase reports.
COUNTERS = {
    "commits": "gateway_firestore_commits",
    "commit_failures": "gateway_firestore_commit_failures",
    "writes": "gateway_firestore_writes",
}
PREFIX = "bp"
#: Token exchanges at once against the Auth emulator.
MINT_THREADS = 16


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (an observed value, never interpolated)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    #: The fraction of the unthrottled bytes/s allowed (10: a tenth); None: unthrottled.
    divisor: int | None
    #: Bytes/s the proxy allowed; None: unlimited.
    rate: float | None
    seconds: float = 0.0
    #: Bytes/s that went through the proxy (both directions), and of those towards Firestore.
    passed: float = 0.0
    upstream: float = 0.0
    #: Bytes/s towards and from Firestore between one sample and the next.
    towards: list[float] = field(default_factory=list)
    back: list[float] = field(default_factory=list)
    #: Every sampled age (s) of a connected user's stored last_pong_at, and each sample's max.
    ages: list[float] = field(default_factory=list)
    sample_max: list[float] = field(default_factory=list)
    #: Age (s) of the gateway's stored heartbeat at each sample.
    heartbeat_ages: list[float] = field(default_factory=list)
    #: The gateway's gauges at each sample (absent from gateways that do not export them).
    backlog: list[float] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    #: Users seen signed out in Firestore (each was answering every ping: all wrongful).
    signed_out: set[str] = field(default_factory=set)
    #: Users seen signed out while their socket was open.
    signed_out_open: set[str] = field(default_factory=set)
    #: Users still connected LEFT_OPEN_AFTER seconds after their sign-out was first seen.
    left_open: set[str] = field(default_factory=set)
    #: Users whose socket got a timeout frame or was closed by the gateway.
    closed: set[str] = field(default_factory=set)
    #: Sockets the clients lost without a close frame.
    lost: int = 0
    #: Users whose refresh tokens Auth revoked since the phases began.
    revoked: set[str] = field(default_factory=set)
    #: The sweep runs' reports summed: signed_out, callbacks, callbacks skipped, ...
    sweeps: dict[str, Any] = field(default_factory=dict)
    #: How much each of the gateway's COUNTERS grew during the phase.
    counted: dict[str, float] = field(default_factory=dict)

    def age(self, q: float) -> float | None:
        return percentile(self.ages, q)

    @property
    def max_age(self) -> float | None:
        return max(self.ages) if self.ages else None

    @property
    def settled_max_age(self) -> float | None:
        """The oldest stored record sampled from SETTLE_SECONDS into the phase on."""
        settled = self.sample_max[math.ceil(SETTLE_SECONDS / SAMPLE_EVERY) :]
        return max(settled) if settled else None

    def summary(self) -> dict[str, Any]:
        """The figures as JSON-ready values."""
        return {
            "name": self.name,
            "divisor": self.divisor,
            "rate_bytes_per_s": None if self.rate is None else round(self.rate),
            "seconds": round(self.seconds, 1),
            "passed_bytes_per_s": round(self.passed),
            "upstream_bytes_per_s": round(self.upstream),
            "age_p50_s": self.age(0.5),
            "age_p99_s": self.age(0.99),
            "age_max_s": self.max_age,
            "age_max_settled_s": self.settled_max_age,
            "sample_max_s": [round(a, 1) for a in self.sample_max],
            "towards_bytes_per_s": [round(b) for b in self.towards],
            "back_bytes_per_s": [round(b) for b in self.back],
            "heartbeat_age_max_s": max(self.heartbeat_ages, default=None),
            "backlog_max_s": max(self.backlog, default=None),
            "window_min": min(self.window, default=None),
            "signed_out": sorted(self.signed_out),
            "signed_out_open": sorted(self.signed_out_open),
            "left_open": sorted(self.left_open),
            "closed": sorted(self.closed),
            "lost": self.lost,
            "revoked": sorted(self.revoked),
            "sweeps": self.sweeps,
            "gateway_counted": self.counted,
        }

    def lines(self) -> list[str]:
        """What ``pytest -s`` and the bench print for the phase."""
        limit = "unlimited" if self.rate is None else f"{self.rate:,.0f} B/s"
        return [
            f"{self.name} ({limit}, {self.seconds:.0f} s): {self.passed:,.0f} B/s passed "
            f"({self.upstream:,.0f} towards Firestore); stored last_pong_at age p50 / p99 / max "
            f"{_fmt(self.age(0.5))} / {_fmt(self.age(0.99))} / {_fmt(self.max_age)} s (max from "
            f"{SETTLE_SECONDS:g} s in: {_fmt(self.settled_max_age)} s)",
            f"  max age per sample: {' '.join(f'{a:.1f}' for a in self.sample_max)}",
            "  B/s towards / from Firestore between samples: "
            + " ".join(f"{t:.0f}/{b:.0f}" for t, b in zip(self.towards, self.back, strict=True)),
            f"  heartbeat age max {_fmt(max(self.heartbeat_ages, default=None))} s; gateway "
            f"pong backlog max {_fmt(max(self.backlog, default=None))} s, write window min "
            f"{_fmt(min(self.window, default=None), 0)}; "
            + ", ".join(f"{name} {value:,.0f}" for name, value in self.counted.items()),
            f"  signed out {len(self.signed_out)} (while connected {len(self.signed_out_open)}, "
            f"left open {len(self.left_open)}), revoked {len(self.revoked)}, sockets timed out "
            f"or closed {len(self.closed)}, lost {self.lost}; sweeps: {self.sweeps}",
        ]


def goal_failures(phases: Sequence[Phase], *, freshness: bool = True) -> list[str]:
    """Each goal a phase missed, said in a line (none: every goal met). ``freshness=False``
    leaves out the goal on stored ages at a tenth (see tests/e2e/test_backpressure.py)."""
    failures: list[str] = []
    for phase in phases:
        settled = phase.settled_max_age
        if freshness and phase.divisor == TENTH and (settled is None or settled >= FRESH_LIMIT):
            failures.append(
                f"{phase.name}: stored last_pong_at up to {_fmt(settled)} s old from "
                f"{SETTLE_SECONDS:g} s in, not fresher than PONG_TIMEOUT / 2 = {FRESH_LIMIT:g} s "
                f"(p50 {_fmt(phase.age(0.5))}, p99 {_fmt(phase.age(0.99))}, peak while adapting "
                f"{_fmt(phase.max_age)})"
            )
        peak = phase.max_age
        if phase.divisor == TENTH and peak is not None and peak >= PONG_TIMEOUT:
            failures.append(
                f"{phase.name}: stored last_pong_at up to {_fmt(peak)} s old while adapting: "
                "past PONG_TIMEOUT"
            )
        for what, users in (
            ("signed out although answering every ping", phase.signed_out),
            ("revoked although answering every ping", phase.revoked),
            ("timed out or closed although answering every ping", phase.closed),
            (f"left connected over {LEFT_OPEN_AFTER:g} s while signed out", phase.left_open),
        ):
            if users:
                failures.append(f"{phase.name}: {len(users)} users {what}: {_few(users)}")
        if phase.lost:
            failures.append(f"{phase.name}: {phase.lost} sockets lost without a close frame")
    return failures


def _few(users: Iterable[str], count: int = 5) -> str:
    ordered = sorted(users)
    more = f" and {len(ordered) - count} more" if len(ordered) > count else ""
    return ", ".join(ordered[:count]) + more


def mint_tokens(minter: Callable[[str], str], users: Sequence[str]) -> dict[str, str]:
    """A real ID token per user from ``minter`` (a ``tests.support.TokenMinter``), several
    exchanges at once."""
    with ThreadPoolExecutor(MINT_THREADS) as pool:
        return dict(zip(users, pool.map(minter, users), strict=True))


def start_clients(
    plan: Sequence[tuple[int, str, str]], log_path: Path, hosts: int, name: str
) -> list[ClientProc]:
    """Load-client processes (``USERS_PER_CLIENT`` sockets each) answering every ping of the
    plan's sockets ([port, user, token] each), from ``hosts`` loopback addresses."""
    from tests.bench.runner import ClientProc

    clients = []
    for number, first in enumerate(range(0, len(plan), USERS_PER_CLIENT)):
        plan_path = log_path.parent / f"{name}-plan-{number}.json"
        plan_path.write_text(json.dumps(list(plan[first : first + USERS_PER_CLIENT])))
        clients.append(
            ClientProc(
                f"{name}-{number}",
                [
                    sys.executable,
                    "-m",
                    "tests.bench.load_client",
                    f"--plan={plan_path}",
                    "--mode=fanout",
                    "--impl=raw",
                    f"--hosts={hosts}",
                    "--concurrency=100",
                    "--connect-timeout=60",
                ],
                log_path,
            )
        )
    return clients


def wait_clients_ready(clients: Sequence[ClientProc], timeout: float) -> None:
    """Until every client process has opened its sockets; fail if any socket did not open."""
    for client in clients:
        ready = client.wait_for("ready", timeout)
        if ready["failed"]:
            raise RuntimeError(f"{ready['failed']} sockets failed to open: {ready['last_error']}")


def stop_clients(clients: Sequence[ClientProc]) -> None:
    """Close every socket (the clients' closing handshakes), then make sure the processes end."""
    for client in clients:
        client.command("stop")
    for client in clients:
        with contextlib.suppress(Exception):
            client.wait_for("stopped", 30)
        client.kill()
        # The pipes go once the process and the thread reading its stdout have ended (a file
        # closed under that thread would fail it).
        client._reader.join(10)
        for pipe in (client.popen.stdin, client.popen.stdout):
            if pipe is not None:
                pipe.close()


def wait_recorded(db: Any, users: Sequence[str], timeout: float, fresh: float = 5.0) -> None:
    """Until every member is signed in with a ``last_pong_at`` under ``fresh`` seconds old."""
    refs = [db.collection(MEMBERS).document(u) for u in users]
    deadline = time.monotonic() + timeout
    while True:
        now = datetime.now(UTC)
        short = 0
        for snap in db.get_all(refs, field_paths=[IS_SIGNED_IN, LAST_PONG_AT]):
            member = (snap.to_dict() or {}) if snap.exists else {}
            last = member.get(LAST_PONG_AT)
            if member.get(IS_SIGNED_IN) is not True or not isinstance(last, datetime):
                short += 1
            elif (now - last).total_seconds() > fresh:
                short += 1
        if not short:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{short} members not recorded with a fresh pong in {timeout:.0f}s")
        time.sleep(0.5)


def metric(text: str, name: str) -> float | None:
    """An unlabelled sample (a gauge, or a counter's ``_total``) from Prometheus text (None
    when absent)."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head in (name, f"{name}_total"):
            with contextlib.suppress(ValueError):
                return float(value)
    return None


def sweep_reports(path: Path, offset: int) -> tuple[dict[str, Any], int]:
    """The sweep function's report lines written since ``offset``, summed; the new offset."""
    totals: dict[str, Any] = {"runs": 0}
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read()
    except OSError:
        return totals, offset
    for line in text.decode(errors="replace").splitlines():
        if '"sweep report"' not in line:
            continue
        try:
            report = json.loads(line[line.index("{") :])
        except ValueError:
            continue
        totals["runs"] += 1
        for key in ("signed_out", "sessions_signed_out", "callbacks", "sockets_closed"):
            if report.get(key):
                totals[key] = totals.get(key, 0) + report[key]
        for reason, count in (report.get("callbacks_skipped") or {}).items():
            skipped = totals.setdefault("callbacks_skipped", {})
            skipped[reason] = skipped.get(reason, 0) + count
    return totals, offset + len(text)


class Observer:
    """Reads what the phases are judged on, never through the throttled link: members and the
    gateway's registry entry from the emulator, the clients' view of their sockets, the
    gateway's gauges, Auth's revocations and the sweep's reports."""

    def __init__(
        self,
        db: Any,
        users: Sequence[str],
        clients: Sequence[ClientProc],
        app: Any,
        instance_id: str,
        metrics: Callable[[], str],
        sweep_log: Path,
    ) -> None:
        self.db = db
        self.users = list(users)
        self.clients = clients
        self.app = app
        self.instance_id = instance_id
        self.metrics = metrics
        self.sweep_log = sweep_log
        self._refs = [db.collection(MEMBERS).document(u) for u in self.users]
        #: When each user's sign-out was first seen (monotonic).
        self._signed_out_since: dict[str, float] = {}
        self._valid_after = self._tokens_valid_after()
        self._sweep_offset = sweep_log.stat().st_size if sweep_log.exists() else 0
        self._counters: dict[str, float] = {}

    def begin(self, phase: Phase) -> None:
        """Note where the gateway's counters stand as ``phase`` starts."""
        self._counters = self._read_counters()

    def sample(self, phase: Phase) -> None:
        """One look at everything; adds to ``phase``."""
        closed, lost = self._closed_sockets()
        phase.closed |= closed
        phase.lost = max(phase.lost, lost)
        now = datetime.now(UTC)
        ages: list[float] = []
        signed_out: set[str] = set()
        for snap in self.db.get_all(self._refs, field_paths=[IS_SIGNED_IN, LAST_PONG_AT]):
            member = (snap.to_dict() or {}) if snap.exists else {}
            if member.get(IS_SIGNED_IN) is False:
                signed_out.add(snap.id)
            last = member.get(LAST_PONG_AT)
            if snap.id not in closed and isinstance(last, datetime):
                ages.append((now - last).total_seconds())
        phase.ages.extend(ages)
        phase.sample_max.append(max(ages, default=0.0))
        clock = time.monotonic()
        for user in signed_out:
            self._signed_out_since.setdefault(user, clock)
        phase.signed_out |= signed_out
        still_open = signed_out - closed
        phase.signed_out_open |= still_open
        phase.left_open |= {
            u for u in still_open if clock - self._signed_out_since[u] >= LEFT_OPEN_AFTER
        }
        instance = self.db.collection(INSTANCES).document(self.instance_id).get()
        beat = (instance.to_dict() or {}).get(HEARTBEAT_AT) if instance.exists else None
        if isinstance(beat, datetime):
            phase.heartbeat_ages.append(round((now - beat).total_seconds(), 1))
        with contextlib.suppress(Exception):
            text = self.metrics()
            for name, values in (
                ("gateway_pong_backlog_seconds", phase.backlog),
                ("gateway_write_window", phase.window),
            ):
                value = metric(text, name)
                if value is not None:
                    values.append(round(value, 1))

    def finish(self, phase: Phase) -> None:
        """The phase's revocations, sweep reports and counter growth."""
        after = self._tokens_valid_after()
        phase.revoked = {u for u, t in after.items() if t != self._valid_after.get(u)}
        phase.sweeps, self._sweep_offset = sweep_reports(self.sweep_log, self._sweep_offset)
        counters = self._read_counters()
        phase.counted = {
            name: counters[name] - self._counters[name]
            for name in COUNTERS
            if name in counters and name in self._counters
        }

    def _read_counters(self) -> dict[str, float]:
        try:
            text = self.metrics()
        except Exception:
            return {}
        found = {name: metric(text, key) for name, key in COUNTERS.items()}
        return {name: value for name, value in found.items() if value is not None}

    def _closed_sockets(self) -> tuple[set[str], int]:
        """Users whose socket got a timeout frame or a close from the gateway; sockets lost."""
        closed: set[str] = set()
        lost = 0
        for client in self.clients:
            client.command("report")
            report = client.wait_for("report", 60)
            lost += report["lost"]
            # [user_id, port, timeouts, first timeout at, close code, close at] per socket.
            closed |= {r[0] for r in report["sockets"] if r[2] or r[4] is not None}
        return closed, lost

    def _tokens_valid_after(self) -> dict[str, int | None]:
        """Each user's Auth ``tokensValidAfterTime`` (ms): a sweep's revocation moves it."""
        from firebase_admin import auth

        found: dict[str, int | None] = {}
        for start in range(0, len(self.users), 100):
            identifiers = [auth.UidIdentifier(u) for u in self.users[start : start + 100]]
            for record in auth.get_users(identifiers, app=self.app).users:
                found[record.uid] = record.tokens_valid_after_timestamp
        return found


def observe(proxy: ThrottleProxy, observer: Observer, phase: Phase, seconds: float) -> Phase:
    """Hold the proxy at the phase's rate for ``seconds``, sampling every ``SAMPLE_EVERY``."""
    observer.begin(phase)
    proxy.rate = phase.rate
    started = time.monotonic()
    passed, upstream = proxy.bytes, proxy.upstream
    mark = (started, passed, upstream)
    end = started + seconds
    while (now := time.monotonic()) < end:
        observer.sample(phase)
        time.sleep(max(0.0, min(SAMPLE_EVERY - (time.monotonic() - now), end - time.monotonic())))
        at, total, up = time.monotonic(), proxy.bytes, proxy.upstream
        phase.towards.append((up - mark[2]) / (at - mark[0]))
        phase.back.append((total - up - (mark[1] - mark[2])) / (at - mark[0]))
        mark = (at, total, up)
    phase.seconds = time.monotonic() - started
    phase.passed = (proxy.bytes - passed) / phase.seconds
    phase.upstream = (proxy.upstream - upstream) / phase.seconds
    observer.sample(phase)
    observer.finish(phase)
    return phase


def run_phases(
    proxy: ThrottleProxy,
    observer: Observer,
    say: Callable[[str], None],
    *,
    measure: float = MEASURE_SECONDS,
    tenth: float = TENTH_SECONDS,
    fortieth: float = FORTIETH_SECONDS,
) -> list[Phase]:
    """Unthrottled, a tenth, a fortieth; the proxy unthrottled again at the end."""
    try:
        first = observe(proxy, observer, Phase("unthrottled", None, None), measure)
        for line in first.lines():
            say(line)
        phases = [first]
        for divisor, seconds in ((TENTH, tenth), (FORTIETH, fortieth)):
            phase = Phase(f"1/{divisor}", divisor, first.passed / divisor)
            say(f"throttling to {phase.name}: {phase.rate:,.0f} B/s for {seconds:g} s")
            phases.append(observe(proxy, observer, phase, seconds))
            for line in phase.lines():
                say(line)
        return phases
    finally:
        proxy.rate = None


# --- the bench scenario -----------------------------------------------------------------------


def run(fs_host: str, args: argparse.Namespace, stack: list[Any]) -> dict[str, Any]:
    """The backpressure scenario's figures (see the module's docstring)."""
    # Imported here: the runner imports this module at its top.
    from tests.bench.runner import PROJECT, RUN_DIR, Gateway, Owned, clear_firestore, log
    from tests.support import TokenMinter
    from tests.throttle import ThrottleProxy

    n = args.backpressure_users
    log(f"P: backpressure, {n:,} users at PING_INTERVAL=1 behind a throttled Firestore link")
    clear_firestore(fs_host)
    users = [f"{PREFIX}-{i:06d}" for i in range(n)]
    callback_token = f"bench-callback-{secrets.token_hex(12)}"
    saved = {
        k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST")
    }
    proxy = ThrottleProxy(fs_host).start()
    try:
        with Owned(stack) as own:
            auth_port = procs.free_port()
            auth_host = f"127.0.0.1:{auth_port}"
            auth_emulator = own(procs.auth_process("127.0.0.1", auth_port, PROJECT, RUN_DIR))
            auth_emulator.log_path = RUN_DIR / "backpressure-auth.log"
            auth_emulator.start()
            gw = own(
                Gateway(
                    proxy.address,
                    float(SETTINGS["PING_INTERVAL"]),
                    args,
                    "backpressure",
                    extra_env={
                        "AUTH_MODE": "firebase",
                        "FIREBASE_AUTH_EMULATOR_HOST": auth_host,
                        "GATEWAY_CALLBACK_TOKEN": callback_token,
                        **SETTINGS,
                    },
                )
            )
            function_port = procs.free_port()
            function = own(
                procs.function_process(
                    {
                        # The sweep reads and writes the emulator directly: only the gateway's
                        # link is throttled.
                        "FIRESTORE_EMULATOR_HOST": fs_host,
                        "FIREBASE_AUTH_EMULATOR_HOST": auth_host,
                        "GOOGLE_CLOUD_PROJECT": PROJECT,
                        "GATEWAY_CALLBACK_TOKEN": callback_token,
                        "PONG_TIMEOUT": SETTINGS["PONG_TIMEOUT"],
                        "SWEEP_INTERVAL": SETTINGS["SWEEP_INTERVAL"],
                    },
                    "127.0.0.1",
                    function_port,
                    RUN_DIR,
                )
            )
            function.log_path = RUN_DIR / "backpressure-sweep.log"
            function.start()
            auth_emulator.wait_ready(120)
            gw.start()
            function.wait_ready(60)
            scheduler = own(
                procs.scheduler_process(
                    f"http://127.0.0.1:{function_port}/", SWEEP_INTERVAL, RUN_DIR
                )
            )
            scheduler.log_path = RUN_DIR / "backpressure-scheduler.log"
            scheduler.start()

            os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = auth_host
            import firebase_admin

            app = firebase_admin.initialize_app(
                options={"projectId": PROJECT}, name=f"bench-backpressure-{os.getpid()}"
            )
            try:
                minted = time.monotonic()
                tokens = mint_tokens(TokenMinter(auth_host, app), users)
                log(f"P: {n:,} ID tokens minted in {time.monotonic() - minted:.1f}s")
                plan = [(gw.port, u, tokens[u]) for u in users]
                clients = [
                    own(c)
                    for c in start_clients(
                        plan, RUN_DIR / "client.log", args.hosts, "client-backpressure"
                    )
                ]
                wait_clients_ready(clients, max(120.0, n / 20))
                gw.wait_connections(n, 60)
                with _firestore(fs_host) as db:
                    wait_recorded(db, users, 120)
                    observer = Observer(
                        db,
                        users,
                        clients,
                        app,
                        f"bench-{gw.label}",
                        lambda: gw.http.get("/metrics").text,
                        function.log_path,
                    )
                    phases = run_phases(proxy, observer, lambda line: log(f"P: {line}"))
            finally:
                firebase_admin.delete_app(app)
    finally:
        proxy.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {
        "users": n,
        "unthrottled_bytes_per_s": round(phases[0].passed),
        "phases": [p.summary() for p in phases],
        "lines": [line for p in phases for line in p.lines()],
        "failures": goal_failures(phases),
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The phases' figures and the goals missed, under the summary table."""
    if not result or "lines" not in result:
        return []
    return [
        f"backpressure ({result['users']:,} users): {line.strip()}" for line in result["lines"]
    ] + [f"backpressure goal missed: {failure}" for failure in result["failures"]]


@contextlib.contextmanager
def _firestore(host: str) -> Any:
    """A Firestore client on the (unthrottled) emulator."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    from google.cloud import firestore

    from tests.bench.runner import PROJECT

    client: Any = firestore.Client(project=PROJECT)
    try:
        yield client
    finally:
        client.close()


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenario's rows of the summary table."""
    if not result or "phases" not in result:
        return []
    by_name = {p["name"]: p for p in result["phases"]}
    tenth, fortieth = by_name[f"1/{TENTH}"], by_name[f"1/{FORTIETH}"]

    def ages(phase: dict[str, Any]) -> str:
        return (
            f"{_fmt(phase['age_p50_s'])} / {_fmt(phase['age_p99_s'])} / "
            f"{_fmt(phase['age_max_s'])} s at {phase['rate_bytes_per_s']:,} B/s"
        )

    wrongful = set().union(*(set(p["signed_out"]) | set(p["revoked"]) for p in result["phases"]))
    closed = set().union(*(set(p["closed"]) for p in result["phases"]))
    left_open = set().union(*(set(p["left_open"]) for p in result["phases"]))
    return [
        {
            "figure": f"P: gateway <-> Firestore traffic, {result['users']:,} users at "
            "PING_INTERVAL=1, unthrottled",
            "value": f"{result['unthrottled_bytes_per_s']:,} B/s",
            "target": "reported",
            "ok": None,
        },
        {
            "figure": "P: stored last_pong_at age at a tenth, p50 / p99 / max",
            "value": ages(tenth),
            "target": f"max < {FRESH_LIMIT:g} s",
            "ok": tenth["age_max_s"] is not None and tenth["age_max_s"] < FRESH_LIMIT,
        },
        {
            "figure": "P: stored last_pong_at age at a fortieth, p50 / p99 / max",
            "value": ages(fortieth),
            "target": "reported",
            "ok": None,
        },
        {
            "figure": "P: answering users signed out or revoked (wrongful sign-outs)",
            "value": f"{len(wrongful)} (at a fortieth: {len(fortieth['signed_out'])} signed "
            f"out, {len(fortieth['revoked'])} revoked)",
            "target": "0",
            "ok": not wrongful,
        },
        {
            "figure": "P: sockets timed out or closed / left open while signed out",
            "value": f"{len(closed)} / {len(left_open)}",
            "target": "0 / 0",
            "ok": not closed and not left_open,
        },
    ]
