"""``python -m emulator token USER_ID``: print a Firebase ID token for USER_ID from the running
local stack's Auth emulator (what ``make token USER=...`` runs).

The account is created on first use, as a client SDK's sign-in would. Reads the emulator
address and project from the environment or from ``.run/stack.env``, written by ``make up``.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from emulator.exceptions import EmulatorError

STACK_ENV = Path(__file__).resolve().parent.parent / ".run" / "stack.env"


def stack_setting(name: str) -> str:
    if os.environ.get(name):
        return os.environ[name]
    if STACK_ENV.exists():
        for line in STACK_ENV.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if key == name:
                return value
    raise EmulatorError(f"{name} is not set and {STACK_ENV} has none: is `make up` running?")


def id_token(user_id: str) -> str:
    auth_host = stack_setting("FIREBASE_AUTH_EMULATOR_HOST")
    project = stack_setting("GOOGLE_CLOUD_PROJECT")
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = auth_host
    import firebase_admin
    from firebase_admin import auth

    app = firebase_admin.initialize_app(options={"projectId": project}, name="make-token")
    custom = auth.create_custom_token(user_id, app=app)
    request = urllib.request.Request(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/accounts:signInWithCustomToken"
        "?key=local-emulator",
        data=json.dumps({"token": custom.decode(), "returnSecureToken": True}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            token: str = json.loads(response.read())["idToken"]
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            # The usual cause: the stack is not running (or another one's env file is read).
            raise EmulatorError(
                f"nothing answers at {auth_host} (the Auth emulator): is the stack up? "
                "Start it with `make up`"
            ) from exc
        message = f"the Auth emulator at {auth_host} did not issue a token: {exc}"
        raise EmulatorError(message) from exc
    except (OSError, KeyError, ValueError) as exc:
        message = f"the Auth emulator at {auth_host} did not issue a token: {exc}"
        raise EmulatorError(message) from exc
    return token


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0]:
        print("usage: python -m emulator token USER_ID", file=sys.stderr)
        return 2
    try:
        print(id_token(argv[0]))
    except EmulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
