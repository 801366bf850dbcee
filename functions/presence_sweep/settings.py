"""Sweep settings from the environment, validated on first use (never at import)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from presence_sweep.exceptions import SweepConfigError

#: Firebase's convention: a project whose id starts with this exists only in the emulators.
EMULATOR_PROJECT_PREFIX = "demo-"
#: The one way to run against an emulator with another project: this variable naming that
#: exact project id. The gateway reads the same variable (this package imports nothing from it).
ALLOW_EMULATOR = "ALLOW_EMULATOR_FOR_PROJECT"
#: The emulators the sweep's clients follow, and what each then stops doing: the reason one of
#: them must never reach the deployed function unnoticed.
EMULATOR_HOSTS = {
    "FIREBASE_AUTH_EMULATOR_HOST": "sign-outs revoke tokens at that host, not in Firebase Auth",
    "FIRESTORE_EMULATOR_HOST": "members and sessions are read from and written to that host, "
    "without credentials",
    # Followed only with PRESENCE_EVENTS_TOPIC set, and judged by the Pub/Sub project.
    "PUBSUB_EMULATOR_HOST": "presence events are published to that host, without credentials, "
    "and never reach the topic's subscribers",
}
#: A Pub/Sub topic id, as the gateway checks its own.
_TOPIC = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")


@dataclass(frozen=True, slots=True)
class AllowedEmulator:
    """An emulator variable set for a project that is not a demo- one, which
    ALLOW_EMULATOR_FOR_PROJECT allowed by naming the project."""

    variable: str
    host: str
    project: str

    @property
    def consequence(self) -> str:
        return EMULATOR_HOSTS[self.variable]


@dataclass(frozen=True, slots=True)
class SweepSettings:
    project_id: str
    pong_timeout: float = 10_800.0
    callback_token: str = ""
    callback_audience: str = ""
    page_size: int = 300
    query_size: int = 3000
    auth_concurrency: int = 8
    pages_in_flight: int = 3
    claim_ttl: float = 300.0
    callback_timeout: float = 5.0
    callback_concurrency: int = 8
    #: A gateway instance without a heartbeat for this long is dead: its callback is skipped.
    instance_stale_after: float = 180.0
    #: The gateway's service URL: one callback per page there (any instance answers and fans
    #: out through Pub/Sub). Empty: call each instance at its recorded internal URL.
    gateway_url: str = ""
    #: How far back the reaper looks for lost instances (``presence_sweep.reaper``), seconds.
    reap_lookback: float = 3600.0
    #: Where the reaper publishes users' presence transitions; "" publishes none.
    presence_events_topic: str = ""
    #: The topic's project: PUBSUB_PROJECT when set, else the project.
    pubsub_project: str = ""
    #: PUBSUB_EMULATOR_HOST, followed only with a topic.
    pubsub_emulator_host: str = ""
    #: Emulators let through for a project that is not a demo- one because
    #: ALLOW_EMULATOR_FOR_PROJECT names it; main.py warns of each when it builds its clients.
    emulators_allowed: tuple[AllowedEmulator, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SweepSettings:
        env = os.environ if env is None else env

        def number(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise SweepConfigError(name, f"cannot parse {raw!r} as a number") from None
            if not value > 0 or math.isinf(value):
                raise SweepConfigError(name, f"must be a positive number, got {raw!r}")
            return value

        project = env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCLOUD_PROJECT") or ""
        if not project:
            if env.get("FIRESTORE_EMULATOR_HOST"):
                project = "demo-presence"
            else:
                raise SweepConfigError("GOOGLE_CLOUD_PROJECT", "is required")
        topic = env.get("PRESENCE_EVENTS_TOPIC", "").strip()
        if topic and not _TOPIC.fullmatch(topic):
            raise SweepConfigError(
                "PRESENCE_EVENTS_TOPIC",
                "must be a Pub/Sub topic id: 3-255 letters, digits or - _ . ~ + %, "
                "starting with a letter",
            )
        pubsub_project = env.get("PUBSUB_PROJECT", "").strip() or project
        emulators_allowed = check_emulators(env, project, pubsub_project if topic else None)
        gateway_url = env.get("GATEWAY_URL", "").strip()
        if gateway_url and not gateway_url.startswith(("http://", "https://")):
            raise SweepConfigError("GATEWAY_URL", f"must be an http(s) URL, got {gateway_url!r}")
        page_size = int(number("SWEEP_PAGE_SIZE", 300))
        if page_size > 500:
            # One claim transaction writes one document per user: Firestore caps a commit at 500.
            raise SweepConfigError("SWEEP_PAGE_SIZE", "must be at most 500")
        # Gateways beat every SWEEP_INTERVAL and count three missed beats as dead; so does
        # the sweep.
        stale_after = 3 * number("SWEEP_INTERVAL", 60.0)
        reap_lookback = number("REAP_LOOKBACK", 3600.0)
        if reap_lookback <= stale_after:
            raise SweepConfigError(
                "REAP_LOOKBACK",
                f"must be longer than 3 x SWEEP_INTERVAL ({stale_after:g}s), after which an "
                "instance counts as lost: else no lost instance is ever looked at",
            )
        return cls(
            project_id=project,
            pong_timeout=number("PONG_TIMEOUT", 10_800.0),
            callback_token=env.get("GATEWAY_CALLBACK_TOKEN", "").split(",")[0].strip(),
            callback_audience=env.get("GATEWAY_CALLBACK_AUDIENCE", "").strip(),
            page_size=page_size,
            query_size=int(number("SWEEP_QUERY_SIZE", 3000)),
            auth_concurrency=int(number("SWEEP_AUTH_CONCURRENCY", 8)),
            pages_in_flight=int(number("SWEEP_PAGES_IN_FLIGHT", 3)),
            claim_ttl=number("SWEEP_CLAIM_TTL", 300.0),
            callback_timeout=number("SWEEP_CALLBACK_TIMEOUT", 5.0),
            callback_concurrency=int(number("SWEEP_CALLBACK_CONCURRENCY", 8)),
            instance_stale_after=stale_after,
            gateway_url=gateway_url.rstrip("/"),
            reap_lookback=reap_lookback,
            presence_events_topic=topic,
            pubsub_project=pubsub_project,
            pubsub_emulator_host=env.get("PUBSUB_EMULATOR_HOST", "") if topic else "",
            emulators_allowed=emulators_allowed,
        )


def check_emulators(
    env: Mapping[str, str], project: str, pubsub_project: str | None = None
) -> tuple[AllowedEmulator, ...]:
    """Refuse an emulator for a project that is not an emulator-only (``demo-``) one, unless
    ALLOW_EMULATOR_FOR_PROJECT names that project; return what the override let through.
    PUBSUB_EMULATOR_HOST is judged by ``pubsub_project``, and not at all without one (the
    sweep then publishes nothing).

    One stray variable would otherwise send a deployed sweep's sign-outs to an emulator (its
    revocations then revoke nothing), and the project id is what tells production from the
    emulators. A variable counts as set even when empty: google-cloud-firestore switches to
    anonymous credentials as soon as it exists.
    """
    allowed = {p.strip() for p in env.get(ALLOW_EMULATOR, "").split(",") if p.strip()}
    let_through: list[AllowedEmulator] = []
    for name, consequence in EMULATOR_HOSTS.items():
        pubsub = name == "PUBSUB_EMULATOR_HOST"
        if pubsub and pubsub_project is None:
            continue
        judged = pubsub_project if pubsub and pubsub_project else project
        if name not in env or judged.startswith(EMULATOR_PROJECT_PREFIX):
            continue
        if judged not in allowed:
            variable = (
                "PUBSUB_PROJECT (else GOOGLE_CLOUD_PROJECT)"
                if pubsub
                else ("GOOGLE_CLOUD_PROJECT (else GCLOUD_PROJECT)")
            )
            raise SweepConfigError(
                name,
                f"is set ({env[name]!r}) but {variable} is "
                f"{judged!r}, not an emulator-only {EMULATOR_PROJECT_PREFIX}* project; with it "
                f"{consequence}. Unset it in production; against the emulators use a "
                f"{EMULATOR_PROJECT_PREFIX}* project, or set {ALLOW_EMULATOR}={judged} if you "
                "mean it",
            )
        let_through.append(AllowedEmulator(name, env[name], judged))
    return tuple(let_through)
