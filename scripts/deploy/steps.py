"""A step of the deployment, and the builders of its usual shapes.

A step is made safe to re-run by its command alone: ``describe`` with ``create`` as the
fallback for what must exist once (topics, accounts, secrets, the repository), ``update`` with
``create`` as the fallback for the scheduler job, and commands that are idempotent by
themselves (``services enable``, ``add-iam-policy-binding``, ``run deploy``, ``functions
deploy``, ``firebase deploy``).
"""

from __future__ import annotations

from dataclasses import dataclass

from scripts.deploy.settings import DeploySettings


@dataclass(frozen=True)
class Step:
    """One command of the deployment.

    ``otherwise`` runs only when ``command`` fails (``describe || create``,
    ``update || create``); ``output`` names the command's stripped stdout, which later
    commands use as ``{output}``, and ``stand_in`` is what the dry run shows for it.
    ``new_secret`` feeds ``otherwise`` a freshly generated token on stdin (never printed, and
    never overwriting: create fails on an existing secret). ``attempts`` > 1 retries a command
    that may fail for a while after an earlier step (IAM on an account made seconds before).
    """

    title: str
    command: tuple[str, ...]
    otherwise: tuple[str, ...] = ()
    output: str = ""
    stand_in: str = ""
    new_secret: bool = False
    attempts: int = 1


def gcloud(*words: str, s: DeploySettings) -> tuple[str, ...]:
    # --quiet: never stop at a prompt; every answer is in the flags.
    return ("gcloud", *words, f"--project={s.project}", "--quiet")


def ensure(
    title: str,
    group: tuple[str, ...],
    name: str,
    *create_flags: str,
    s: DeploySettings,
    where: tuple[str, ...] = (),
    new_secret: bool = False,
) -> Step:
    """``describe`` the resource, and create it only when that fails."""
    return Step(
        title,
        gcloud(*group, "describe", name, *where, s=s),
        otherwise=gcloud(*group, "create", name, *where, *create_flags, s=s),
        new_secret=new_secret,
    )


def binding(title: str, *words: str, member: str, role: str = "", s: DeploySettings) -> Step:
    """Grant ``role`` to the service account ``member``; a binding already there stays as is."""
    flags = [f"--member=serviceAccount:{member}"]
    if role:
        flags.append(f"--role={role}")
    if words[0] in ("projects", "secrets"):
        # These policies may hold conditional bindings, and then gcloud asks for a condition.
        flags.append("--condition=None")
    # --format=none: the command prints the whole policy otherwise.
    return Step(title, gcloud(*words, *flags, "--format=none", s=s), attempts=4)
