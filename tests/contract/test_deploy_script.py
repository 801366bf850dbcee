"""``make deploy``'s dry run prints commands the installed gcloud and firebase accept.

The same check as docs/deployment.md's commands get (tests/cli_flags.py): each printed
command is a real command of the CLI and each of its flags is in its ``--help``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli_flags import commands_in, missing_flags

ROOT = Path(__file__).resolve().parents[2]


def dry_run(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.deploy", "--dry-run", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_dry_run_command_and_flag_exists() -> None:
    """Each gcloud/firebase command of the dry run (every option on) has each flag it uses."""
    done = dry_run(
        "--project=demo-deploy",
        "--region=europe-west1",
        "--presence-events-topic=presence-events",
        "--tag=v1",
    )
    assert done.returncode == 0, done.stderr
    commands = commands_in(done.stdout)
    assert len(commands) >= 30, done.stdout
    paths = {" ".join(w for w in c if not w.startswith("-"))[:40] for c in commands}
    for expected in ("gcloud run deploy", "gcloud functions deploy", "firebase deploy"):
        assert any(p.startswith(expected) for p in paths), (expected, paths)
    missing = missing_flags(commands)
    assert not missing, missing


def test_dry_run_marks_the_stand_ins() -> None:
    """The dry run says nothing ran and shows unknown URLs as marked stand-ins, every value
    else resolved."""
    done = dry_run("--project=demo-deploy", "--region=us-east4", "--tag=v1")
    assert done.returncode == 0, done.stderr
    assert "Nothing is run" in done.stdout
    assert "GATEWAY_URL=https://presence-gateway-<hash>-<region-code>.a.run.app" in done.stdout
    assert "us-east4-docker.pkg.dev/demo-deploy/presence/gateway:v1" in done.stdout
    assert "{" not in "".join(" ".join(c) for c in commands_in(done.stdout))


def test_a_bad_flag_value_is_named() -> None:
    """A project id the API would refuse stops the script before anything, naming the flag."""
    done = dry_run("--project=My_Project", "--region=europe-west1", "--tag=v1")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("deploy: --project: 'My_Project' is not a Google Cloud project")
