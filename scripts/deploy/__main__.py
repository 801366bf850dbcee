"""Entry point of ``python -m scripts.deploy`` (and ``make deploy``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from scripts.deploy.plan import plan
from scripts.deploy.runner import StepFailed, local, program, render, run
from scripts.deploy.settings import DeployConfigError, DeploySettings, parse


def _summary(s: DeploySettings, outputs: dict[str, str]) -> str:
    url = outputs["gateway_url"]
    socket = url.replace("https://", "wss://", 1)
    return "\n".join(
        [
            "",
            f"Deployed {s.service} ({s.image}) to {s.project}, {s.region}.",
            f"  gateway:  {url}  (clients: {socket}/ws/connect/{{user_id}})",
            f"  sweep:    {outputs['function_url']}, every minute ({s.job})",
            "  admin token (REST API): gcloud secrets versions access latest "
            f"--secret={s.admin_secret} --project={s.project}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse(sys.argv[1:] if argv is None else argv)
    except DeployConfigError as error:
        print(f"deploy: {error}", file=sys.stderr)
        return 2
    steps = plan(settings)
    if settings.dry_run:
        heading = (
            f"# make deploy, dry run: project {settings.project}, region {settings.region}, "
            f"{len(steps)} steps."
        )
        print(render(steps, heading))
        return 0
    missing = [name for name in ("gcloud", "firebase") if program(name) is None]
    if missing:
        print(
            f"deploy: not installed: {', '.join(missing)} (gcloud: the Google Cloud SDK; "
            "firebase: make deploy installs it in emulator/node_modules)",
            file=sys.stderr,
        )
        return 2
    try:
        outputs = run(steps, local)
    except StepFailed as error:
        print(
            f"deploy: {error}\nFix the cause and run the same command again: what is already "
            "in place is kept, and the run picks up from there.",
            file=sys.stderr,
        )
        return 1
    print(_summary(settings, outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
