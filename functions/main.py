"""Scheduled sweep function: deploy with ``firebase deploy --only functions``.

Cloud Scheduler calls ``sweep_expired_sessions`` every minute (the job is created by the
deploy). Locally, ``functions-framework --target=sweep_expired_sessions --source=functions/main.py``
serves it and ``make up``'s scheduler POSTs to it with Cloud Scheduler's headers.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

# Deployed, this folder is the source root; run from the repository, make it importable too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from firebase_functions import scheduler_fn  # noqa: E402

from presence_sweep import SweepReport  # noqa: E402
from presence_sweep.adapters import (  # noqa: E402
    HttpNotifier,
    google_id_token,
    sweep_firestore,
)
from presence_sweep.exceptions import SweepFailed  # noqa: E402
from presence_sweep.reaper_adapters import PubSubPublisher  # noqa: E402
from presence_sweep.settings import ALLOW_EMULATOR, SweepSettings  # noqa: E402


@cache
def _clients() -> tuple[SweepSettings, Any, Any]:
    """Built on first call, then reused by warm instances."""
    import firebase_admin
    from google.cloud import firestore

    settings = SweepSettings.from_env()
    for emulator in settings.emulators_allowed:
        # Every cold start, loudly: an instance that trusts an emulator must not pass for a
        # production one in the log (one JSON line, like the report, so it keeps its severity).
        message = (
            f"EMULATOR IN USE for project {emulator.project}, allowed by {ALLOW_EMULATOR}: "
            f"{emulator.variable}={emulator.host}, so {emulator.consequence}. "
            "Never run this way in production"
        )
        print(json.dumps({"severity": "WARNING", "message": message}), flush=True)
    try:
        app = firebase_admin.get_app("presence-sweep")
    except ValueError:
        app = firebase_admin.initialize_app(
            options={"projectId": settings.project_id}, name="presence-sweep"
        )
    return settings, firestore.Client(project=settings.project_id), app


@cache
def _publisher() -> PubSubPublisher | None:
    """The presence events' publisher, kept by warm instances with its credentials; None
    without PRESENCE_EVENTS_TOPIC."""
    settings = _clients()[0]
    if not settings.presence_events_topic:
        return None
    return PubSubPublisher(
        settings.pubsub_project, settings.presence_events_topic, settings.pubsub_emulator_host
    )


def run_sweep(now: datetime | None = None) -> SweepReport:
    settings, db, app = _clients()
    # On Google Cloud, an OIDC ID token for the gateway's URL; else the shared secret.
    bearer = (
        google_id_token(settings.callback_audience)
        if settings.callback_audience
        else settings.callback_token
    )
    notifier = HttpNotifier(bearer, settings.callback_timeout)
    report = sweep_firestore(settings, db, app, notifier, now or datetime.now(UTC), _publisher())
    # One JSON line on stdout: Cloud Logging parses it as a structured entry. What the reaper
    # could not do is a WARNING, not a failure: a retry would not publish a lost event again,
    # and the next run reaps what this one could not.
    severity = "INFO" if report.ok else "ERROR"
    if report.ok and (report.reap_failures or report.presence_event_failures):
        severity = "WARNING"
    print(json.dumps({"severity": severity, "message": "sweep report", **report.summary()}))
    return report


@scheduler_fn.on_schedule(schedule="* * * * *", timeout_sec=540)
def sweep_expired_sessions(event: scheduler_fn.ScheduledEvent) -> None:
    # The sweep's clock is the run's own time, not the schedule time: a retried run must judge
    # expiry as of now.
    report = run_sweep()
    if not report.ok:
        # A non-2xx answer makes Cloud Scheduler retry; signed-out users stay signed out.
        raise SweepFailed(json.dumps(report.summary()))
