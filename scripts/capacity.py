"""Needs and costs of a deployment by number of connected users: the tables of docs/capacity.md.

Usage::

    .venv/bin/python -m scripts.capacity                  # the four standard sizes
    .venv/bin/python -m scripts.capacity --users 1000000  # one size (make capacity USERS=...)
    .venv/bin/python -m scripts.capacity --write          # refresh docs/capacity.md's tables
    .venv/bin/python -m scripts.capacity --check          # exit 1 when the page is stale

Every figure comes from the constants below, each declared once with where it comes from: the
project's defaults and measurements (README.md, docs/benchmarks.md, docs/deployment.md,
docs/operations.md), Google's documented limits, and list prices to check before budgeting.
The functions are pure (users in, figures out); ``render`` turns them into the Markdown that
docs/capacity.md holds between its ``capacity:begin`` and ``capacity:end`` markers, and
tests/contract/test_capacity_doc.py holds the two equal.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# --- The gateway's settings (README.md, Configuration: the defaults) ---------------------------
PING_INTERVAL_S = 30.0
SWEEP_INTERVAL_S = 60.0
#: The write-thinning setting the tables show beside the default (0: every pong written);
#: docs/operations.md, "Trading precision for writes".
PONG_WRITE_INTERVAL_ALT_S = 300.0

# --- What a connection costs (docs/operations.md, "What it costs") -----------------------------
#: Cloud Run ends every request, a WebSocket included, after at most 60 minutes
#: (--timeout=3600 in docs/deployment.md): an always-connected user reconnects 24 times a day.
REQUEST_TIMEOUT_S = 3600.0
MEMBER_WRITES_PER_RECONNECT = 2  # the member on connect, and on close
SESSION_WRITES_PER_RECONNECT = 2  # the session created on connect, closed on close
MEMBER_READS_PER_RECONNECT = 1  # the revocation check at admission
#: An assumption: one socket per connected user (a second tab is a second socket).
SOCKETS_PER_USER = 1

# --- Cloud Run (docs/deployment.md, the gcloud run deploy command) -----------------------------
#: --concurrency=1000, Cloud Run's maximum (its default is 80): an open socket is a request.
SOCKETS_PER_INSTANCE = 1000
INSTANCE_VCPU = 1.0  # --cpu=1
INSTANCE_MEMORY_GIB = 0.5  # --memory=512Mi
DEPLOY_MAX_INSTANCES = 20  # --max-instances=20, the example's cap

# --- Measured (docs/benchmarks.md) -------------------------------------------------------------
#: Memory per idle socket at 10,000 sockets, the upper figure (5.4-5.6 KB; RSS 82 -> 136 MB).
MEMORY_PER_SOCKET_KB = 5.6
BASELINE_RSS_MB = 82.0
#: Gateway CPU per pong persisted, sustained run: 0.040 CPU-s per 1,000.
CPU_S_PER_PONG = 0.040 / 1000
#: Sweep throughput: 10,000 expired among 50,000 members signed out in 24.3-24.4 s, against
#: the emulators (Auth revocations included).
SWEEP_USERS_PER_S = 410.0

# --- Firestore limits (Google's documentation; the emulator enforces none of them) -------------
#: "Sharded timestamps": a collection whose documents hold a monotonically increasing indexed
#: field takes at most 500 writes/s; each value of a leading shard field gets its own 500/s.
SEQUENTIAL_INDEX_WRITES_PER_S = 500.0
#: members' shards: shard = zlib.crc32(uid.encode()) % MEMBER_SHARDS (gateway/storage/schema.py,
#: held equal to this by tests/contract/test_capacity_doc.py).
MEMBER_SHARDS = 100
#: The 500/50/5 rule ("Best practices", ramping up traffic): start near 500 operations/s and
#: grow by at most 50 % every 5 minutes.
RAMP_START_OPS_PER_S = 500.0
RAMP_GROWTH = 1.5
RAMP_STEP_MIN = 5.0

# --- Pub/Sub (Google's documentation) ----------------------------------------------------------
SUBSCRIPTIONS_PER_TOPIC = 10_000  # one subscription per gateway instance here
#: Billed bytes per message, per publish and per delivery: the billing minimum of 1 KB
#: (docs/operations.md, "What it costs"); every fan-out message of the gateway is smaller.
PUBSUB_BILLED_BYTES_PER_MESSAGE = 1000

# --- Firebase Auth (firebase.google.com/docs/auth/limits) --------------------------------------
#: "Account configuration updates: 10 requests/second". A revocation is an account update
#: (accounts:update with validSince); whether this line governs it is not confirmed.
AUTH_ACCOUNT_UPDATES_PER_S = 10.0

# --- List prices in USD: check them before budgeting (docs/capacity.md, "Prices used") ---------
#: Firestore pricing page, Standard edition, regional (us-central1), per 100,000 operations;
#: multi-region is twice these.
FIRESTORE_USD_PER_100K_READS = 0.03
FIRESTORE_USD_PER_100K_WRITES = 0.09
FIRESTORE_FREE_READS_PER_DAY = 50_000
FIRESTORE_FREE_WRITES_PER_DAY = 20_000
#: Pub/Sub pricing page, message delivery throughput.
PUBSUB_USD_PER_TIB = 40.0
PUBSUB_FREE_GIB_PER_MONTH = 10.0
#: Cloud Run pricing page, Tier 1 regions, instance-based billing (--no-cpu-throttling); an
#: instance holding any socket is active and billed all the time. Free tier not deducted.
CLOUD_RUN_USD_PER_VCPU_S = 0.000018
CLOUD_RUN_USD_PER_GIB_S = 0.000002

# --- Assumed traffic: the application's choice, not the gateway's -------------------------------
SENDS_PER_USER_PER_MINUTE = 1.0  # one targeted send (a notification) per user per minute
BROADCASTS_PER_MINUTE = 1.0  # for the whole deployment
EXPIRING_SHARE = 0.10  # the sweep's burst: this share of users expiring at once

# --- Units ---------------------------------------------------------------------------------------
DAY_S = 86_400.0
MONTH_S = 730 * 3600.0  # Google prices a month as 730 hours
DAYS_PER_MONTH = MONTH_S / DAY_S
TIB = 2.0**40
GIB = 2.0**30
MIB_IN_MB = 2**20 / 1e6

STANDARD_SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
DOC = Path(__file__).resolve().parents[1] / "docs" / "capacity.md"
BEGIN = "<!-- capacity:begin -->"
END = "<!-- capacity:end -->"


@dataclass(frozen=True)
class Traffic:
    """The application's assumed traffic."""

    sends_per_user_per_minute: float = SENDS_PER_USER_PER_MINUTE
    broadcasts_per_minute: float = BROADCASTS_PER_MINUTE


@dataclass(frozen=True)
class Load:
    """Steady rates per second at one size, with one pong-write setting."""

    users: int
    instances: int
    pong_writes: float
    members_writes: float
    sessions_writes: float
    instances_writes: float
    #: Reads of presence itself: admissions, the instances' polls, the sweep's queries.
    reads: float
    #: Reads the application's sends and broadcasts cause.
    messaging_reads: float


@dataclass(frozen=True)
class Fanout:
    """Pub/Sub per second: messages published, deliveries billed (every message reaches every
    subscription, filtered or not), and what each instance pulls and handles."""

    sends: float
    published: float
    deliveries: float
    pulled_per_instance: float

    @property
    def billed_bytes_per_month(self) -> float:
        return (self.published + self.deliveries) * PUBSUB_BILLED_BYTES_PER_MESSAGE * MONTH_S


@dataclass(frozen=True)
class Cost:
    """Monthly cost in USD at list price: presence (sockets, pongs, reconnects, the sweep's
    queries) apart from messaging (the application's sends and broadcasts)."""

    cloud_run: float
    firestore: float
    firestore_messaging: float
    pubsub: float

    @property
    def presence(self) -> float:
        return self.cloud_run + self.firestore

    @property
    def messaging(self) -> float:
        return self.firestore_messaging + self.pubsub

    @property
    def total(self) -> float:
        return self.presence + self.messaging


def instances_for(users: int) -> int:
    """Gateway instances at full concurrency: every one holds SOCKETS_PER_INSTANCE sockets."""
    return max(1, math.ceil(users * SOCKETS_PER_USER / SOCKETS_PER_INSTANCE))


def pong_writes_per_s(users: int, pong_write_interval: float = 0.0) -> float:
    """``last_pong_at`` writes per second: one per user per ping round, or per
    PONG_WRITE_INTERVAL when that is longer."""
    return users / max(PING_INTERVAL_S, pong_write_interval)


def reconnects_per_s(users: int) -> float:
    """Reconnects per second of always-connected users, each cut by Cloud Run's timeout."""
    return users * SOCKETS_PER_USER / REQUEST_TIMEOUT_S


def sends_per_s(users: int, traffic: Traffic = Traffic()) -> float:
    return users * traffic.sends_per_user_per_minute / 60


def load(users: int, pong_write_interval: float = 0.0, traffic: Traffic = Traffic()) -> Load:
    """Firestore writes per collection and reads per second at one size."""
    n = instances_for(users)
    pongs = pong_writes_per_s(users, pong_write_interval)
    reconnects = reconnects_per_s(users)
    reads = (
        reconnects * MEMBER_READS_PER_RECONNECT
        # Each instance polls its sessions for missed sign-outs; a query costs one read at least.
        + n / SWEEP_INTERVAL_S
        # The sweep queries every shard once a minute.
        + MEMBER_SHARDS / 60
    )
    messaging_reads = (
        # Each send reads the member's active_sessions (docs/operations.md, Several instances).
        sends_per_s(users, traffic)
        # A broadcast lists the live instances: one document each.
        + traffic.broadcasts_per_minute / 60 * n
    )
    return Load(
        users=users,
        instances=n,
        pong_writes=pongs,
        members_writes=pongs + reconnects * MEMBER_WRITES_PER_RECONNECT,
        sessions_writes=reconnects * SESSION_WRITES_PER_RECONNECT,
        instances_writes=n / SWEEP_INTERVAL_S,
        reads=reads,
        messaging_reads=messaging_reads,
    )


def members_cap(sharded: bool = True) -> float:
    """Writes per second the members collection takes: 500 per shard value under the sharded
    index, 500 in all while an index holds last_pong_at unsharded."""
    return SEQUENTIAL_INDEX_WRITES_PER_S * (MEMBER_SHARDS if sharded else 1)


def users_within_members_cap(pong_write_interval: float = 0.0, sharded: bool = True) -> int:
    """The most always-connected users whose member writes fit the collection's cap."""
    per_user = 1 / max(PING_INTERVAL_S, pong_write_interval) + (
        SOCKETS_PER_USER * MEMBER_WRITES_PER_RECONNECT / REQUEST_TIMEOUT_S
    )
    return math.floor(members_cap(sharded) / per_user)


def smallest_pong_write_interval(users: int) -> float | None:
    """The shortest PONG_WRITE_INTERVAL (whole seconds) that keeps the members collection
    under its sharded cap, or None when the reconnect writes alone exceed it."""
    room = members_cap() - reconnects_per_s(users) * MEMBER_WRITES_PER_RECONNECT
    if room <= 0:
        return None
    return float(max(PING_INTERVAL_S, math.ceil(users / room)))


def ramp_minutes(ops_per_s: float) -> float:
    """Minutes for a new database to grow from 500 operations/s to ``ops_per_s`` under the
    500/50/5 rule."""
    if ops_per_s <= RAMP_START_OPS_PER_S:
        return 0.0
    steps = math.ceil(math.log(ops_per_s / RAMP_START_OPS_PER_S) / math.log(RAMP_GROWTH))
    return steps * RAMP_STEP_MIN


def fanout(users: int, traffic: Traffic = Traffic()) -> Fanout:
    """Pub/Sub volume. A send answered by an instance that does not hold the user (all but
    1/N of them) is published once and delivered to every subscription; the holder's receipt
    is published too and, filtered or not, billed at every subscription. A broadcast is one
    publish plus a receipt from each other instance, each billed at all N subscriptions."""
    n = instances_for(users)
    crossing = sends_per_s(users, traffic) * (n - 1) / n
    broadcasts = traffic.broadcasts_per_minute / 60
    receipts = crossing + broadcasts * (n - 1)
    published = crossing + broadcasts + receipts
    # What one instance pulls and handles: the others' requests (sends it drops on their
    # attributes, broadcasts) and the receipts addressed to it.
    pulled = (crossing + broadcasts) * (n - 1) / n + receipts / n
    return Fanout(
        sends=sends_per_s(users, traffic),
        published=published,
        deliveries=published * n,
        pulled_per_instance=pulled,
    )


def firestore_usd(lo: Load, messaging: bool = True) -> float:
    """Monthly Firestore bill (regional) after the daily free operations; presence alone
    when ``messaging`` is false."""
    writes_per_day = (lo.members_writes + lo.sessions_writes + lo.instances_writes) * DAY_S
    reads_per_day = (lo.reads + (lo.messaging_reads if messaging else 0.0)) * DAY_S
    per_day = (
        max(0.0, writes_per_day - FIRESTORE_FREE_WRITES_PER_DAY)
        * FIRESTORE_USD_PER_100K_WRITES
        / 100_000
        + max(0.0, reads_per_day - FIRESTORE_FREE_READS_PER_DAY)
        * FIRESTORE_USD_PER_100K_READS
        / 100_000
    )
    return per_day * DAYS_PER_MONTH


def cloud_run_usd(instances: int) -> float:
    """Monthly Cloud Run bill: every instance active all month (instance-based billing)."""
    per_s = INSTANCE_VCPU * CLOUD_RUN_USD_PER_VCPU_S + INSTANCE_MEMORY_GIB * CLOUD_RUN_USD_PER_GIB_S
    return instances * per_s * MONTH_S


def pubsub_usd(fo: Fanout) -> float:
    """Monthly Pub/Sub bill after the free 10 GiB."""
    billable = max(0.0, fo.billed_bytes_per_month - PUBSUB_FREE_GIB_PER_MONTH * GIB)
    return billable / TIB * PUBSUB_USD_PER_TIB


def cost(users: int, pong_write_interval: float = 0.0, traffic: Traffic = Traffic()) -> Cost:
    lo = load(users, pong_write_interval, traffic)
    presence = firestore_usd(lo, messaging=False)
    return Cost(
        cloud_run=cloud_run_usd(instances_for(users)),
        firestore=presence,
        # What the sends' reads add, the free operations having gone to presence.
        firestore_messaging=firestore_usd(lo) - presence,
        pubsub=pubsub_usd(fanout(users, traffic)),
    )


def sweep_seconds(users: int, users_per_s: float = SWEEP_USERS_PER_S) -> float:
    """Time to sign out EXPIRING_SHARE of the users at ``users_per_s``."""
    return users * EXPIRING_SHARE / users_per_s


def sockets_per_instance_by_cpu() -> int:
    """Sockets whose pongs would keep an instance's CPUs busy, at the measured CPU per pong
    persisted (ping rounds included)."""
    return round(INSTANCE_VCPU / CPU_S_PER_PONG * PING_INTERVAL_S)


def sockets_per_instance_by_memory() -> int:
    """Idle sockets an instance's memory would hold at the measured cost per socket."""
    free_mb = INSTANCE_MEMORY_GIB * 1024 * MIB_IN_MB - BASELINE_RSS_MB
    return math.floor(free_mb * 1000 / MEMORY_PER_SOCKET_KB)


def flags(users: int, traffic: Traffic = Traffic()) -> list[str]:
    """Each limit the size exceeds or reaches, with the knob that fixes it."""
    found = []
    n = instances_for(users)
    cap = members_cap()
    for interval, label in ((0.0, "every pong written"), (PONG_WRITE_INTERVAL_ALT_S, None)):
        writes = load(users, interval, traffic).members_writes
        if writes <= cap:
            continue
        setting = label or f"PONG_WRITE_INTERVAL={interval:g}"
        fit = smallest_pong_write_interval(users)
        fix = (
            f"PONG_WRITE_INTERVAL={fit:g} or more fits (or a longer PING_INTERVAL)"
            if fit is not None
            else "the reconnect writes alone exceed it: more shards (MEMBER_SHARDS)"
        )
        found.append(
            f"members takes {writes:,.0f} writes/s ({setting}), over the sharded cap of "
            f"{cap:,.0f}/s: {fix}."
        )
    if n > SUBSCRIPTIONS_PER_TOPIC:
        found.append(
            f"{n:,} instances need {n:,} subscriptions, over Pub/Sub's "
            f"{SUBSCRIPTIONS_PER_TOPIC:,} per topic: the fan-out would need several topics "
            "(not built)."
        )
    elif n == SUBSCRIPTIONS_PER_TOPIC:
        found.append(
            f"{n:,} instances use all of Pub/Sub's {SUBSCRIPTIONS_PER_TOPIC:,} subscriptions "
            "per topic: no room for a rollout's new instances or a crashed instance's "
            "subscription (kept a day); the fan-out would need several topics (not built)."
        )
    if n / SWEEP_INTERVAL_S > SEQUENTIAL_INDEX_WRITES_PER_S:
        found.append(
            f"gateway_instances takes {n / SWEEP_INTERVAL_S:,.0f} heartbeats/s, over "
            f"{SEQUENTIAL_INDEX_WRITES_PER_S:,.0f}/s: raise SWEEP_INTERVAL."
        )
    if n > DEPLOY_MAX_INSTANCES:
        found.append(
            f"{n:,} instances: raise --max-instances (docs/deployment.md's example sets "
            f"{DEPLOY_MAX_INSTANCES}), and check the region's Cloud Run quotas."
        )
    return found


# --- Rendering ----------------------------------------------------------------------------------


def _rate(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:,.1f}"
    return f"{x:.2f}"


def _usd(x: float) -> str:
    return f"${x:,.0f}" if x >= 10 else f"${x:.2f}"


def _per_user(x: float) -> str:
    return f"${x:,.2f}" if x >= 10 else f"${x:.3f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _over(text: str, over: bool) -> str:
    return f"{text} ⚠" if over else text


def _limits_table() -> list[str]:
    alt = f"PONG_WRITE_INTERVAL={PONG_WRITE_INTERVAL_ALT_S:g}"
    sequential = f"{SEQUENTIAL_INDEX_WRITES_PER_S:,.0f} writes/s"
    return _table(
        ["limit", "caps, every pong written", f"caps, {alt}"],
        [
            [
                f"members, sharded: {MEMBER_SHARDS} × {sequential}",
                f"{users_within_members_cap(0.0):,} users",
                f"{users_within_members_cap(PONG_WRITE_INTERVAL_ALT_S):,} users",
            ],
            [
                f"members, unsharded (`last_pong_at` indexed, as before the shard): {sequential}",
                f"{users_within_members_cap(0.0, sharded=False):,} users",
                f"{users_within_members_cap(PONG_WRITE_INTERVAL_ALT_S, sharded=False):,} users",
            ],
            [
                f"gateway_instances heartbeats: {sequential}",
                f"{SEQUENTIAL_INDEX_WRITES_PER_S * SWEEP_INTERVAL_S:,.0f} instances",
                "the same",
            ],
            [
                f"Pub/Sub: {SUBSCRIPTIONS_PER_TOPIC:,} subscriptions per topic",
                f"{SUBSCRIPTIONS_PER_TOPIC:,} instances = "
                f"{SUBSCRIPTIONS_PER_TOPIC * SOCKETS_PER_INSTANCE:,} users",
                "the same",
            ],
            [
                f"Cloud Run: {SOCKETS_PER_INSTANCE:,} concurrent requests per instance",
                f"{SOCKETS_PER_INSTANCE:,} sockets per instance",
                "the same",
            ],
            [
                f"memory: {INSTANCE_MEMORY_GIB * 1024:g} MiB at {MEMORY_PER_SOCKET_KB:g} KB "
                "per idle socket",
                f"{sockets_per_instance_by_memory():,} sockets per instance",
                "the same",
            ],
            [
                f"CPU: {INSTANCE_VCPU:g} vCPU at {CPU_S_PER_PONG * 1e6:g} µs per pong persisted",
                f"{sockets_per_instance_by_cpu():,} sockets per instance",
                "more (not measured)",
            ],
            [
                f"docs/deployment.md's `--max-instances={DEPLOY_MAX_INSTANCES}`",
                f"{DEPLOY_MAX_INSTANCES * SOCKETS_PER_INSTANCE:,} users",
                "the same",
            ],
        ],
    )


def render(sizes: Sequence[int], traffic: Traffic = Traffic()) -> str:
    """The Markdown tables for ``sizes`` (what docs/capacity.md holds between its markers)."""
    alt = f"PONG_WRITE_INTERVAL={PONG_WRITE_INTERVAL_ALT_S:g}"
    cap = members_cap()
    sends = f"{traffic.sends_per_user_per_minute:g} send per user per minute"
    broadcasts = f"{traffic.broadcasts_per_minute:g} broadcast per minute"
    out = [
        "Assumptions: one socket per user, connected around the clock (a reconnect every "
        f"{REQUEST_TIMEOUT_S / 60:g} minutes); `PING_INTERVAL={PING_INTERVAL_S:g}`, "
        f"`SWEEP_INTERVAL={SWEEP_INTERVAL_S:g}`; {SOCKETS_PER_INSTANCE:,} sockets per instance "
        f"(`--concurrency={SOCKETS_PER_INSTANCE}`, `--cpu={INSTANCE_VCPU:g}`, "
        f"`--memory={INSTANCE_MEMORY_GIB * 1024:g}Mi`), every instance full; the members "
        f"collection sharded {MEMBER_SHARDS} ways (cap {cap:,.0f} writes/s); for messaging, "
        f"{sends} (targeted) and {broadcasts}. ⚠ marks a figure over a limit.",
        "",
        "**What each limit caps** (users at one socket each)",
        "",
        *_limits_table(),
        "",
        "**Load**: gateway instances, Firestore writes per second by collection, reads "
        "(presence, then the sends'), and the ramp-up a new database needs to reach that "
        "traffic (500/50/5)",
        "",
    ]
    rows = []
    for users in sizes:
        lo, lo_alt = load(users, 0.0, traffic), load(users, PONG_WRITE_INTERVAL_ALT_S, traffic)
        writes = lo.members_writes + lo.sessions_writes + lo.instances_writes
        rows.append(
            [
                f"{users:,}",
                _over(f"{lo.instances:,}", lo.instances >= SUBSCRIPTIONS_PER_TOPIC),
                _over(_rate(lo.members_writes), lo.members_writes > cap),
                _over(_rate(lo_alt.members_writes), lo_alt.members_writes > cap),
                _rate(lo.sessions_writes),
                _rate(lo.instances_writes),
                _rate(lo.reads),
                _rate(lo.messaging_reads),
                f"{ramp_minutes(writes + lo.reads + lo.messaging_reads):.0f} min",
            ]
        )
    out += _table(
        [
            "connected users",
            "gateway instances",
            "members writes/s, every pong",
            f"members writes/s, {alt}",
            "sessions writes/s",
            "gateway_instances writes/s",
            "presence reads/s",
            "sends' reads/s",
            "ramp-up from 500 ops/s",
        ],
        rows,
    )
    out += [
        "",
        f"**Pub/Sub** at {sends} and {broadcasts}: messages per second, billed at "
        f"{PUBSUB_BILLED_BYTES_PER_MESSAGE:,} bytes per publish and per delivery",
        "",
    ]
    rows = []
    for users in sizes:
        fo = fanout(users, traffic)
        rows.append(
            [
                f"{users:,}",
                _rate(fo.sends),
                _rate(fo.published),
                _rate(fo.deliveries),
                _rate(fo.pulled_per_instance),
                _rate(fo.billed_bytes_per_month / TIB),
            ]
        )
    out += _table(
        [
            "connected users",
            "sends/s",
            "published/s",
            "deliveries billed/s",
            "pulled by each instance/s",
            "TiB billed a month",
        ],
        rows,
    )
    out += ["", f"**The sweep**: {EXPIRING_SHARE:.0%} of users expiring at once", ""]
    out += _table(
        [
            "connected users",
            "to sign out",
            f"at the measured {SWEEP_USERS_PER_S:,.0f} users/s",
            f"at {AUTH_ACCOUNT_UPDATES_PER_S:g} revocations/s (if Auth's account-update limit "
            "applies: unconfirmed)",
        ],
        [
            [
                f"{users:,}",
                f"{users * EXPIRING_SHARE:,.0f}",
                _duration(sweep_seconds(users)),
                _duration(sweep_seconds(users, AUTH_ACCOUNT_UPDATES_PER_S)),
            ]
            for users in sizes
        ],
    )
    costs = [
        (users, cost(users, 0.0, traffic), cost(users, PONG_WRITE_INTERVAL_ALT_S, traffic))
        for users in sizes
    ]
    out += [
        "",
        "**Monthly cost of presence at list price** (USD; no sends: sockets, pongs, reconnects, "
        "heartbeats, the sweep's queries; Firestore regional, multi-region doubles it; the "
        "Cloud Run free tier not deducted)",
        "",
    ]
    out += _table(
        [
            "connected users",
            "Cloud Run",
            "Firestore, every pong",
            f"Firestore, {alt}",
            "total, every pong",
            "per user",
            f"total, {alt}",
            "per user",
        ],
        [
            [
                f"{users:,}",
                _usd(c.cloud_run),
                _usd(c.firestore),
                _usd(c_alt.firestore),
                _usd(c.presence),
                _per_user(c.presence / users),
                _usd(c_alt.presence),
                _per_user(c_alt.presence / users),
            ]
            for users, c, c_alt in costs
        ],
    )
    out += [
        "",
        f"**Monthly cost of messaging** at {sends} and {broadcasts} (USD, list price), and "
        "the whole bill",
        "",
    ]
    out += _table(
        [
            "connected users",
            "Pub/Sub",
            "Firestore reads of the sends",
            "messaging per user",
            "whole bill, every pong",
            "per user",
            f"whole bill, {alt}",
            "per user",
        ],
        [
            [
                f"{users:,}",
                _usd(c.pubsub),
                _usd(c.firestore_messaging),
                _per_user(c.messaging / users),
                _usd(c.total),
                _per_user(c.total / users),
                _usd(c_alt.total),
                _per_user(c_alt.total / users),
            ]
            for users, c, c_alt in costs
        ],
    )
    found = [(users, text) for users in sizes for text in flags(users, traffic)]
    out += ["", "**Over a limit**", ""]
    out += [f"- {users:,} users: {text}" for users, text in found] or ["- none"]
    return "\n".join(out) + "\n"


def replace_block(page: str, block: str) -> str:
    """``page`` with the text between its markers replaced by ``block``."""
    head, begin, rest = page.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the page lacks {BEGIN} ... {END}")
    return f"{head}{BEGIN}\n\n{block}\n{END}{tail}"


def _users(text: str) -> int:
    value = int(text.replace(",", "").replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=_users, action="append", help="connected users")
    parser.add_argument(
        "--sends-per-user-per-minute", type=float, default=SENDS_PER_USER_PER_MINUTE
    )
    parser.add_argument("--broadcasts-per-minute", type=float, default=BROADCASTS_PER_MINUTE)
    parser.add_argument("--write", action="store_true", help="refresh docs/capacity.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    args = parser.parse_args(argv)
    traffic = Traffic(args.sends_per_user_per_minute, args.broadcasts_per_minute)
    if args.write or args.check:
        if args.users or traffic != Traffic():
            parser.error("--write and --check use the standard sizes and traffic")
        page = DOC.read_text()
        fresh = replace_block(page, render(STANDARD_SIZES))
        if args.check:
            if fresh != page:
                print(f"{DOC.name} is stale: run python -m scripts.capacity --write")
                return 1
            return 0
        DOC.write_text(fresh)
        return 0
    sys.stdout.write(render(args.users or STANDARD_SIZES, traffic))
    return 0


if __name__ == "__main__":
    sys.exit(main())
