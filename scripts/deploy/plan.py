"""What ``make deploy`` does, as data: the ordered list of steps, each a command and how its
result is used (scripts/deploy/steps.py). Nothing here runs anything; ``runner`` executes or
prints the steps. Outputs of earlier steps appear in later commands as ``{name}`` (the
gateway's URL, the function's URL), filled in when the step runs.
"""

from __future__ import annotations

from scripts.deploy.resources import firestore, resources
from scripts.deploy.settings import (
    GATEWAY_ACCOUNT,
    SCHEDULER_ACCOUNT,
    SWEEP_ACCOUNT,
    DeploySettings,
)
from scripts.deploy.steps import Step, binding, ensure, gcloud

#: The sweep's contract (functions/main.py, tests/contract/test_function_deploy.py).
SCHEDULE = "* * * * *"
SWEEP_TIMEOUT = "540s"
CLOUD_BUILD_CONFIG = "gateway/cloudbuild.yaml"


def gateway_url_stand_in(s: DeploySettings) -> str:
    return f"https://{s.service}-<hash>-<region-code>.a.run.app"


def gateway(s: DeploySettings) -> list[Step]:
    """The image, the Cloud Run service, then its URL as the callback's OIDC audience."""
    env = [
        f"GOOGLE_CLOUD_PROJECT={s.project}",
        f"PUBSUB_TOPIC={s.pubsub_topic}",
        "FORWARDED_ALLOW_IPS=*",
    ]
    if s.presence_events_topic:
        env.append(f"PRESENCE_EVENTS_TOPIC={s.presence_events_topic}")
    secrets = [
        f"GATEWAY_ADMIN_TOKEN={s.admin_secret}:latest",
        f"GATEWAY_CALLBACK_TOKEN={s.callback_secret}:latest",
    ]
    place = (f"--region={s.region}",)
    return [
        ensure(
            f"Artifact Registry repository {s.repository}",
            ("artifacts", "repositories"),
            s.repository,
            "--repository-format=docker",
            s=s,
            where=(f"--location={s.region}",),
        ),
        # Cloud Build, so no local Docker is needed; the config builds gateway/Dockerfile
        # with the repository root as its context, as docs/deployment.md's docker build does.
        Step(
            f"Build and push {s.image}",
            gcloud(
                "builds",
                "submit",
                ".",
                f"--config={CLOUD_BUILD_CONFIG}",
                f"--substitutions=_IMAGE={s.image}",
                s=s,
            ),
        ),
        # --update-*: settings added to the service by hand survive a re-run, and the OIDC
        # pair set below stays in place while this deploy rolls out a new image.
        Step(
            f"Cloud Run service {s.service}",
            gcloud(
                "run",
                "deploy",
                s.service,
                *place,
                f"--image={s.image}",
                f"--service-account={s.account(GATEWAY_ACCOUNT)}",
                "--timeout=3600",
                "--concurrency=1000",
                "--min-instances=1",
                "--max-instances=20",
                "--cpu=1",
                "--memory=512Mi",
                "--no-cpu-throttling",
                "--session-affinity",
                "--allow-unauthenticated",
                f"--update-secrets={','.join(secrets)}",
                f"--update-env-vars={','.join(env)}",
                s=s,
            ),
        ),
        Step(
            "Read the gateway's URL",
            gcloud(
                "run", "services", "describe", s.service, *place, "--format=value(status.url)", s=s
            ),
            output="gateway_url",
            stand_in=gateway_url_stand_in(s),
        ),
        # Known only now: the sweep's ID tokens are for this audience, from this account.
        Step(
            "The callback's OIDC audience and account",
            gcloud(
                "run",
                "services",
                "update",
                s.service,
                *place,
                "--update-env-vars=CALLBACK_OIDC_AUDIENCE={gateway_url},"
                f"CALLBACK_OIDC_SERVICE_ACCOUNTS={s.account(SWEEP_ACCOUNT)}",
                s=s,
            ),
        ),
    ]


def sweep(s: DeploySettings) -> list[Step]:
    """The function (calling the gateway at its URL), then the job that calls the function."""
    env = [
        f"GOOGLE_CLOUD_PROJECT={s.project}",
        "PONG_TIMEOUT=10800",
        "GATEWAY_URL={gateway_url}",
        "GATEWAY_CALLBACK_AUDIENCE={gateway_url}",
    ]
    if s.presence_events_topic:
        env.append(f"PRESENCE_EVENTS_TOPIC={s.presence_events_topic}")
    place = (f"--region={s.region}",)
    scheduler = s.account(SCHEDULER_ACCOUNT)
    job_flags = (
        f"--location={s.region}",
        f"--schedule={SCHEDULE}",
        "--http-method=POST",
        "--uri={function_url}",
        f"--oidc-service-account-email={scheduler}",
        "--oidc-token-audience={function_url}",
    )
    return [
        Step(
            f"Sweep function {s.function}",
            gcloud(
                "functions",
                "deploy",
                s.function,
                "--gen2",
                "--runtime=python311",
                *place,
                "--source=functions",
                "--entry-point=sweep_expired_sessions",
                "--trigger-http",
                "--no-allow-unauthenticated",
                f"--timeout={SWEEP_TIMEOUT}",
                f"--service-account={s.account(SWEEP_ACCOUNT)}",
                # A standby: the sweep sends OIDC tokens while the audience is set.
                f"--update-secrets=GATEWAY_CALLBACK_TOKEN={s.callback_secret}:latest",
                f"--update-env-vars={','.join(env)}",
                s=s,
            ),
        ),
        Step(
            "Read the function's URL",
            gcloud(
                "functions",
                "describe",
                s.function,
                *place,
                "--v2",
                "--format=value(serviceConfig.uri)",
                s=s,
            ),
            output="function_url",
            stand_in=f"https://{s.function}-<hash>-<region-code>.a.run.app",
        ),
        binding(
            f"{s.function} invocable by {SCHEDULER_ACCOUNT}",
            "functions",
            "add-invoker-policy-binding",
            s.function,
            *place,
            member=scheduler,
            s=s,
        ),
        Step(
            f"Scheduler job {s.job}",
            gcloud("scheduler", "jobs", "update", "http", s.job, *job_flags, s=s),
            otherwise=gcloud("scheduler", "jobs", "create", "http", s.job, *job_flags, s=s),
        ),
    ]


def plan(s: DeploySettings) -> list[Step]:
    """Every step, in the order they run."""
    return [*resources(s), *firestore(s), *gateway(s), *sweep(s)]
