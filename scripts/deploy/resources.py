"""The steps before any code: APIs, topics, service accounts, secrets, IAM, Firestore."""

from __future__ import annotations

from scripts.deploy.settings import (
    GATEWAY_ACCOUNT,
    SCHEDULER_ACCOUNT,
    SWEEP_ACCOUNT,
    DeploySettings,
)
from scripts.deploy.steps import Step, binding, ensure, gcloud

#: The APIs the steps call. Firestore's database and Firebase Auth must already be set up:
#: the database's location is a one-time choice this script does not make.
APIS = (
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "firebaserules.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
)
SECRET_ACCESSOR = "roles/secretmanager.secretAccessor"


def resources(s: DeploySettings) -> list[Step]:
    """APIs, topics, service accounts, secrets and the IAM bindings between them."""
    steps = [Step("Enable the APIs", gcloud("services", "enable", *APIS, s=s))]
    topics = [s.pubsub_topic] + ([s.presence_events_topic] if s.presence_events_topic else [])
    for topic in topics:
        steps.append(ensure(f"Pub/Sub topic {topic}", ("pubsub", "topics"), topic, s=s))
    for account in (GATEWAY_ACCOUNT, SWEEP_ACCOUNT, SCHEDULER_ACCOUNT):
        steps.append(
            Step(
                f"Service account {account}",
                gcloud("iam", "service-accounts", "describe", s.account(account), s=s),
                otherwise=gcloud("iam", "service-accounts", "create", account, s=s),
            )
        )
    for secret in (s.admin_secret, s.callback_secret):
        steps.append(
            ensure(
                f"Secret {secret}, generated once",
                ("secrets",),
                secret,
                "--replication-policy=automatic",
                "--data-file=-",
                s=s,
                new_secret=True,
            )
        )
    grants = [
        # The gateway writes Firestore and creates its own Pub/Sub subscription; the sweep
        # writes Firestore and revokes Firebase Auth tokens.
        (GATEWAY_ACCOUNT, "roles/datastore.user", ("projects", s.project)),
        (GATEWAY_ACCOUNT, "roles/pubsub.editor", ("projects", s.project)),
        (SWEEP_ACCOUNT, "roles/datastore.user", ("projects", s.project)),
        (SWEEP_ACCOUNT, "roles/firebaseauth.admin", ("projects", s.project)),
        (GATEWAY_ACCOUNT, SECRET_ACCESSOR, ("secrets", s.admin_secret)),
        (GATEWAY_ACCOUNT, SECRET_ACCESSOR, ("secrets", s.callback_secret)),
        # The sweep's standby for OIDC (plan.sweep).
        (SWEEP_ACCOUNT, SECRET_ACCESSOR, ("secrets", s.callback_secret)),
    ]
    if s.presence_events_topic:
        # The sweep publishes the transitions of lost instances' users (the gateway's
        # pubsub.editor covers its own).
        grants.append(
            (SWEEP_ACCOUNT, "roles/pubsub.publisher", ("pubsub topics", s.presence_events_topic))
        )
    for account, role, (kind, name) in grants:
        steps.append(
            binding(
                f"{role} for {account} on {kind.split()[-1]} {name}",
                *kind.split(),
                "add-iam-policy-binding",
                name,
                member=s.account(account),
                role=role,
                s=s,
            )
        )
    return steps


def firestore(s: DeploySettings) -> list[Step]:
    # Before the code that queries them (docs/deployment.md): a query whose index is missing
    # fails with FAILED_PRECONDITION. firebase.json names firestore.rules and the indexes.
    command = ("firebase", "deploy", "--only", "firestore", f"--project={s.project}")
    return [Step("Firestore rules and indexes", (*command, "--non-interactive"))]
