"""A local stand-in for Cloud Scheduler: POST to the sweep function every ``SWEEP_INTERVAL``.

It sends the headers Cloud Scheduler sends (``X-CloudScheduler``, ``-JobName``,
``-ScheduleTime``), so the function runs exactly as in production. A non-2xx answer is logged;
Cloud Scheduler would retry, and the next tick does the same here.

Usage: ``python -m emulator.scheduler URL INTERVAL_SECONDS``
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

JOB_NAME = "projects/local/locations/local/jobs/sweep_expired_sessions"


def tick(url: str, timeout: float = 600.0) -> int:
    """One scheduled call; returns the HTTP status (0 when unreachable)."""
    scheduled = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    request = urllib.request.Request(
        url,
        data=b"",
        method="POST",
        headers={
            "X-CloudScheduler": "true",
            "X-CloudScheduler-JobName": JOB_NAME,
            "X-CloudScheduler-ScheduleTime": scheduled,
            "User-Agent": "Google-Cloud-Scheduler",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        body = exc.read()[:500].decode(errors="replace")
        print(f"scheduler: sweep answered {exc.code}: {body}", file=sys.stderr, flush=True)
        return int(exc.code)
    except OSError as exc:
        print(f"scheduler: sweep unreachable: {exc}", file=sys.stderr, flush=True)
        return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    url, interval = argv[0], float(argv[1])
    next_at = time.monotonic() + interval
    while True:
        time.sleep(max(0.0, next_at - time.monotonic()))
        started = time.monotonic()
        status = tick(url)
        print(f"scheduler: tick -> {status} in {time.monotonic() - started:.2f}s", flush=True)
        # Like Cloud Scheduler, never run two sweeps from one job at once; keep the cadence.
        next_at = max(next_at + interval, time.monotonic())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
