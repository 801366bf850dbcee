"""``python -m tests.soak [--seconds S] [--seed N] [--clients C]``: one soak run.

Defaults come from ``SOAK_SECONDS`` (600), ``SOAK_SEED`` (random, printed) and
``SOAK_CLIENTS`` (200). Exit status 0 with no violation, 1 with any, 2 when the settings are
wrong. ``--advisory N`` (``SOAK_ADVISORY``, comma-separated invariant numbers) prints invariant
N's violations without failing the run: for an open finding, never by default.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys

from emulator import procs
from tests.soak.run import soak


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    try:
        parser.add_argument("--seconds", type=int, default=_int("SOAK_SECONDS", 600))
        parser.add_argument("--seed", type=int, default=_int("SOAK_SEED", secrets.randbelow(10**6)))
        parser.add_argument("--clients", type=int, default=_int("SOAK_CLIENTS", 200))
        parser.add_argument(
            "--advisory",
            type=lambda text: frozenset(int(n) for n in text.split(",") if n.strip()),
            default=os.environ.get("SOAK_ADVISORY", ""),
        )
    except ValueError as exc:
        print(
            f"error: SOAK_SECONDS, SOAK_SEED and SOAK_CLIENTS are integers ({exc})", file=sys.stderr
        )
        return 2
    args = parser.parse_args(argv)
    if args.seconds < 60 or args.clients < 20:
        print(
            "error: SOAK_SECONDS must be at least 60 and SOAK_CLIENTS at least 20", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("soak").setLevel(logging.INFO)
    log_dir = procs.ROOT / ".run" / "soak" / f"seed-{args.seed}"
    advisory = args.advisory
    if isinstance(advisory, str):  # argparse converts a string default too; kept for mypy
        advisory = frozenset(int(n) for n in advisory.split(",") if n.strip())
    if not advisory <= {1, 2, 3, 4, 5, 6}:
        print("error: SOAK_ADVISORY lists invariant numbers, 1 to 6", file=sys.stderr)
        return 2
    return asyncio.run(
        soak(float(args.seconds), args.seed, args.clients, log_dir, frozenset(advisory))
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
