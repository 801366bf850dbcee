"""The settings of ``make deploy``, read from its flags and checked before any command runs.

Each check names the flag it is about, so a typo in ``make deploy PROJECT=…`` is one line at
once rather than a gcloud error halfway through a deployment.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Google's formats, as the APIs enforce them (documented per resource).
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+(-[a-z]+)+[0-9]+")
_TOPIC = re.compile(r"[A-Za-z][A-Za-z0-9_.~+%-]{2,254}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,255}")
_SERVICE = re.compile(r"[a-z]([a-z0-9-]{0,47}[a-z0-9])?")
_FUNCTION = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
_JOB = re.compile(r"[A-Za-z0-9_-]{1,500}")
_REPOSITORY = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

#: The service accounts docs/deployment.md creates, one per role, in every project.
GATEWAY_ACCOUNT = "presence-gateway"
SWEEP_ACCOUNT = "presence-sweep"
SCHEDULER_ACCOUNT = "presence-scheduler"


class DeployConfigError(ValueError):
    """A flag with a value the deployment cannot use."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


@dataclass(frozen=True)
class DeploySettings:
    project: str
    region: str
    tag: str
    pubsub_topic: str = "gateway-fanout"
    presence_events_topic: str = ""
    service: str = "presence-gateway"
    function: str = "sweep-expired-sessions"
    job: str = "sweep-expired-sessions"
    repository: str = "presence"
    admin_secret: str = "gateway-admin-token"
    callback_secret: str = "gateway-callback-token"
    dry_run: bool = False

    def account(self, name: str) -> str:
        return f"{name}@{self.project}.iam.gserviceaccount.com"

    @property
    def image(self) -> str:
        return f"{self.region}-docker.pkg.dev/{self.project}/{self.repository}/gateway:{self.tag}"

    def check(self) -> DeploySettings:
        """Raise DeployConfigError naming the first flag whose value is unusable."""
        rules = [
            (
                "--project",
                self.project,
                _PROJECT,
                "a Google Cloud project id: 6-30 lowercase "
                "letters, digits or hyphens, starting with a letter, not ending with a hyphen",
            ),
            ("--region", self.region, _REGION, "a Google Cloud region such as europe-west1"),
            (
                "--pubsub-topic",
                self.pubsub_topic,
                _TOPIC,
                "a Pub/Sub topic id: 3-255 letters, digits or - _ . ~ + %, starting with a letter",
            ),
            (
                "--service",
                self.service,
                _SERVICE,
                "a Cloud Run service name: up to 49 "
                "lowercase letters, digits or hyphens, starting with a letter",
            ),
            (
                "--function",
                self.function,
                _FUNCTION,
                "a Cloud Functions name: up to 63 "
                "lowercase letters, digits or hyphens, starting with a letter",
            ),
            ("--job", self.job, _JOB, "a Cloud Scheduler job id: letters, digits, - or _"),
            (
                "--repository",
                self.repository,
                _REPOSITORY,
                "an Artifact Registry repository "
                "id: lowercase letters, digits or hyphens, starting with a letter",
            ),
            ("--tag", self.tag, _TAG, "an image tag: up to 128 letters, digits, _ . or -"),
            (
                "--admin-secret",
                self.admin_secret,
                _SECRET,
                "a Secret Manager id: letters, digits, - or _",
            ),
            (
                "--callback-secret",
                self.callback_secret,
                _SECRET,
                "a Secret Manager id: letters, digits, - or _",
            ),
        ]
        if self.presence_events_topic:
            rules.append(
                (
                    "--presence-events-topic",
                    self.presence_events_topic,
                    _TOPIC,
                    "a Pub/Sub topic id: 3-255 letters, digits or - _ . ~ + %, starting "
                    "with a letter",
                )
            )
        for flag, value, pattern, expected in rules:
            if not pattern.fullmatch(value):
                raise DeployConfigError(flag, f"{value!r} is not {expected}")
        for flag, value in [
            ("--pubsub-topic", self.pubsub_topic),
            ("--presence-events-topic", self.presence_events_topic),
        ]:
            if value.lower().startswith("goog"):
                raise DeployConfigError(flag, f"{value!r}: Pub/Sub reserves ids starting goog")
        if self.presence_events_topic == self.pubsub_topic:
            # The fan-out's subscribers would receive every presence event as a gateway message.
            raise DeployConfigError("--presence-events-topic", "must differ from --pubsub-topic")
        if self.callback_secret == self.admin_secret:
            # The gateway refuses a callback token equal to an admin token.
            raise DeployConfigError("--callback-secret", "must differ from --admin-secret")
        return self


def source_tag() -> str:
    """The image tag for the working tree: its commit, ``-dirty`` when it has changes."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=12"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise DeployConfigError("--tag", "not in a git checkout: give the image tag")
    return done.stdout.strip()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.deploy",
        description="Deploy the gateway, the sweep and their resources to Google Cloud "
        "(make deploy PROJECT=... REGION=...).",
    )
    defaults = DeploySettings(project="", region="", tag="")
    p.add_argument("--project", required=True, help="Google Cloud project id")
    p.add_argument("--region", required=True, help="region of Cloud Run, the function, the job")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--pubsub-topic", default=defaults.pubsub_topic, help="fan-out topic")
    p.add_argument("--presence-events-topic", default="", help="presence events topic (none)")
    p.add_argument("--service", default=defaults.service, help="Cloud Run service")
    p.add_argument("--function", default=defaults.function, help="sweep function")
    p.add_argument("--job", default=defaults.job, help="Cloud Scheduler job")
    p.add_argument("--repository", default=defaults.repository, help="Artifact Registry repo")
    p.add_argument("--tag", default="", help="gateway image tag (default: git describe)")
    p.add_argument("--admin-secret", default=defaults.admin_secret, help="admin token secret")
    p.add_argument("--callback-secret", default=defaults.callback_secret, help="callback secret")
    return p


def parse(argv: Sequence[str]) -> DeploySettings:
    """Settings from the command line; DeployConfigError names a flag with a bad value."""
    args = parser().parse_args(argv)
    text = {k: v.strip() for k, v in vars(args).items() if isinstance(v, str)}
    return DeploySettings(
        **{**text, "tag": text["tag"] or source_tag()}, dry_run=args.dry_run
    ).check()
