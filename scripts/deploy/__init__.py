"""``make deploy``: the gateway, the sweep and everything they need, on Google Cloud, in one
command that is safe to run again.

Usage (from the repository root)::

    make deploy PROJECT=my-project REGION=europe-west1 [DRY_RUN=1]
    python -m scripts.deploy --project my-project --region europe-west1 [--dry-run]

``settings`` checks the flags, ``plan`` lists the steps as data (commands and how their outputs
feed later ones), ``runner`` executes or prints them. docs/deployment.md describes each step.
"""
