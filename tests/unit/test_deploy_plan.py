"""``make deploy``'s plan (scripts/deploy): its order, its re-runs, and how outputs flow.

The steps run against a fake ``gcloud`` that keeps which resources exist, so a first run and
a second one can be compared command by command; nothing reaches Google Cloud.
"""

from __future__ import annotations

import pytest

from scripts.deploy.plan import plan
from scripts.deploy.runner import Result, StepFailed, run
from scripts.deploy.settings import DeployConfigError, DeploySettings, parse

GATEWAY_URL = "https://presence-gateway-abc123-ew.a.run.app"
FUNCTION_URL = "https://sweep-expired-sessions-def456-ew.a.run.app"


def settings(presence_events_topic: str = "") -> DeploySettings:
    return DeploySettings(
        project="demo-plan",
        region="europe-west1",
        tag="v1",
        presence_events_topic=presence_events_topic,
    ).check()


class FakeCloud:
    """Just enough of gcloud: describe/update fail for what does not exist, create fails for
    what does, deploy makes a service, and the describes with --format print its URL."""

    def __init__(self) -> None:
        self.existing: set[tuple[str, ...]] = set()
        self.secrets: dict[str, str] = {}
        self.ran: list[tuple[str, ...]] = []
        self.fail: str = ""

    @staticmethod
    def key(argv: tuple[str, ...]) -> tuple[str, ...]:
        words = [w for w in argv[1:] if not w.startswith("-")]
        # `run deploy S`, `run services describe S` and `run services update S` are one service.
        verbs = {"describe", "create", "update", "deploy", "services"}
        # An account is described by its email and created by its id.
        return tuple(w.split("@")[0] for w in words if w not in verbs)

    def __call__(self, argv: tuple[str, ...], stdin: str | None, capture: bool) -> Result:
        self.ran.append(argv)
        if self.fail and self.fail in argv:
            return Result(1, "", "ERROR: PERMISSION_DENIED")
        key = self.key(argv)
        if "describe" in argv or "update" in argv:
            if key not in self.existing:
                return Result(1, "", "ERROR: NOT_FOUND")
            url = {"run": GATEWAY_URL, "functions": FUNCTION_URL}.get(argv[1], "")
            return Result(0, url + "\n" if "--format" in " ".join(argv) else "name: x\n")
        if "create" in argv:
            if key in self.existing:
                return Result(1, "", "ERROR: ALREADY_EXISTS")
            if argv[1] == "secrets":
                assert stdin, "a secret is created with its value on stdin"
                self.secrets[argv[3]] = stdin
        if "deploy" in argv or "create" in argv:
            self.existing.add(key)
        return Result(0)


def deploy(cloud: FakeCloud, s: DeploySettings) -> dict[str, str]:
    tokens = iter(f"token-{n}" for n in range(100))
    return run(plan(s), cloud, say=lambda _: None, new_token=lambda: next(tokens))


def count(cloud: FakeCloud, prefix: str) -> int:
    """How many commands run begin with these words."""
    return sum(" ".join(argv).startswith(prefix + " ") for argv in cloud.ran)


def test_steps_run_in_dependency_order() -> None:
    """Topics, then secrets, IAM, Firestore, the gateway, its URL, the function, the job."""
    titles = [step.title for step in plan(settings(presence_events_topic="presence-events"))]

    def first(prefix: str) -> int:
        return next(i for i, t in enumerate(titles) if t.startswith(prefix))

    order = [
        "Enable the APIs",
        "Pub/Sub topic gateway-fanout",
        "Pub/Sub topic presence-events",
        "Service account",
        "Secret gateway-admin-token",
        "Secret gateway-callback-token",
        "roles/",
        "Firestore rules and indexes",
        "Build and push",
        "Cloud Run service",
        "Read the gateway's URL",
        "The callback's OIDC audience",
        "Sweep function",
        "Read the function's URL",
        "sweep-expired-sessions invocable",
        "Scheduler job",
    ]
    assert [first(p) for p in order] == sorted(first(p) for p in order)
    # Every IAM binding comes before the first deploy that depends on it.
    assert max(i for i, t in enumerate(titles) if t.startswith("roles/")) < first("Firestore")


def test_first_run_creates_and_second_run_only_describes_and_updates() -> None:
    """A re-run creates nothing, keeps the secrets' values, and updates the scheduler job."""
    cloud = FakeCloud()
    deploy(cloud, settings(presence_events_topic="presence-events"))
    assert count(cloud, "gcloud secrets create") == 2
    assert count(cloud, "gcloud pubsub topics create") == 2
    assert count(cloud, "gcloud scheduler jobs create") == 1
    made = dict(cloud.secrets)
    assert made == {"gateway-admin-token": "token-0", "gateway-callback-token": "token-1"}

    cloud.ran.clear()
    outputs = deploy(cloud, settings(presence_events_topic="presence-events"))
    assert not [argv for argv in cloud.ran if "create" in argv], cloud.ran
    assert count(cloud, "gcloud scheduler jobs update") == 1
    assert cloud.secrets == made
    assert count(cloud, "gcloud run deploy presence-gateway") == 1
    assert count(cloud, "gcloud functions deploy sweep-expired-sessions") == 1
    assert outputs == {"gateway_url": GATEWAY_URL, "function_url": FUNCTION_URL}


def test_the_gateway_url_feeds_the_callback_and_the_function_url_the_job() -> None:
    """The describe's URL becomes the OIDC audience, GATEWAY_URL, and the job's target."""
    cloud = FakeCloud()
    deploy(cloud, settings())
    by_verb = {" ".join(a[1:4]): " ".join(a) for a in cloud.ran}
    update = by_verb["run services update"]
    assert f"CALLBACK_OIDC_AUDIENCE={GATEWAY_URL}," in update
    assert "CALLBACK_OIDC_SERVICE_ACCOUNTS=presence-sweep@demo-plan.iam" in update
    function = by_verb["functions deploy sweep-expired-sessions"]
    assert f"GATEWAY_URL={GATEWAY_URL}," in function
    assert f"GATEWAY_CALLBACK_AUDIENCE={GATEWAY_URL}" in function
    job = by_verb["scheduler jobs create"]
    assert f"--uri={FUNCTION_URL} " in job
    assert f"--oidc-token-audience={FUNCTION_URL} " in job
    assert "--schedule=* * * * *" in job


def test_a_failed_step_stops_the_run_and_names_it() -> None:
    """A command that fails (its fallback too) ends the run there, with the step and error."""
    cloud = FakeCloud()
    cloud.fail = "builds"
    with pytest.raises(StepFailed, match=r"(?s)Build and push .*PERMISSION_DENIED"):
        deploy(cloud, settings())
    assert not [a for a in cloud.ran if a[1:3] == ("run", "deploy")]


def test_iam_bindings_are_retried_while_a_new_account_propagates() -> None:
    """An IAM binding that fails is tried again after a pause, up to its attempts."""
    calls: list[tuple[str, ...]] = []
    pauses: list[float] = []
    step = next(s for s in plan(settings()) if "add-iam-policy-binding" in s.command)

    def flaky(argv: tuple[str, ...], stdin: str | None, capture: bool) -> Result:
        calls.append(argv)
        return Result(0 if len(calls) == 3 else 1)

    run([step], flaky, say=lambda _: None, pause=pauses.append)
    assert len(calls) == 3
    assert pauses == [10.0, 20.0]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--project=Demo", "--region=europe-west1"], "--project"),
        (["--project=demo-plan", "--region=Europe"], "--region"),
        (["--project=demo-plan", "--region=us-east4", "--pubsub-topic=x"], "--pubsub-topic"),
        (["--project=demo-plan", "--region=us-east4", "--tag=a b"], "--tag"),
        (
            ["--project=demo-plan", "--region=us-east4", "--presence-events-topic=gateway-fanout"],
            "--presence-events-topic",
        ),
        (
            ["--project=demo-plan", "--region=us-east4", "--callback-secret=gateway-admin-token"],
            "--callback-secret",
        ),
    ],
)
def test_a_bad_setting_is_refused_naming_its_flag(argv: list[str], flag: str) -> None:
    """Each unusable value is reported with the flag that gave it, before any step."""
    with pytest.raises(DeployConfigError) as error:
        parse([*argv, "--tag=v1"] if "--tag" not in " ".join(argv) else argv)
    assert error.value.flag == flag
