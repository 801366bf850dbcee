"""Sweep settings from the environment, validated on first use (never at import)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from presence_sweep.exceptions import SweepConfigError


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
        gateway_url = env.get("GATEWAY_URL", "").strip()
        if gateway_url and not gateway_url.startswith(("http://", "https://")):
            raise SweepConfigError("GATEWAY_URL", f"must be an http(s) URL, got {gateway_url!r}")
        page_size = int(number("SWEEP_PAGE_SIZE", 300))
        if page_size > 500:
            # One claim transaction writes one document per user: Firestore caps a commit at 500.
            raise SweepConfigError("SWEEP_PAGE_SIZE", "must be at most 500")
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
            # Gateways beat every SWEEP_INTERVAL and count three missed beats as dead; so does
            # the sweep.
            instance_stale_after=3 * number("SWEEP_INTERVAL", 60.0),
            gateway_url=gateway_url.rstrip("/"),
        )
