"""The Node packages the local stack runs, pinned in emulator/package.json and installed under
emulator/node_modules on first use: firebase-tools (the Auth emulator) and the Firestore
emulator's fallback for machines without the Google Cloud SDK."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from emulator.exceptions import ToolMissingError

EMULATOR_DIR = Path(__file__).resolve().parent
#: The fallback for machines without the Google Cloud SDK (pinned in emulator/package.json).
FIRESTORE_FALLBACK_PACKAGE = "@firestore-emulator/server"


def ensure_firestore_fallback() -> str:
    """Install the pinned fallback emulator under emulator/ when missing; return ``node``."""
    node = shutil.which("node")
    if node is None:
        raise ToolMissingError(
            "no Firestore emulator: install the Google Cloud SDK's "
            "(`apt-get install google-cloud-cli-firestore-emulator`, needs Java 17+) or "
            f"Node.js 20+ and npm for the {FIRESTORE_FALLBACK_PACKAGE} fallback"
        )
    package = EMULATOR_DIR / "node_modules" / FIRESTORE_FALLBACK_PACKAGE / "package.json"
    if not package.exists():
        fallback = f"the {FIRESTORE_FALLBACK_PACKAGE} fallback Firestore emulator"
        install(FIRESTORE_FALLBACK_PACKAGE, fallback)
    return node


def ensure_firebase_tools() -> Path:
    """Install the pinned firebase-tools under emulator/ when missing; return its binary."""
    binary = EMULATOR_DIR / "node_modules" / ".bin" / "firebase"
    if not binary.exists():
        install("firebase-tools", "firebase-tools")
    return binary


def install(package: str, what: str) -> None:
    """Install emulator/package.json's pinned packages because ``package`` is missing: ``npm
    ci``, exactly the tree emulator/package-lock.json records, as make and the Auth image do."""
    if not shutil.which("npm"):
        raise ToolMissingError(f"npm is required to install {what} (Node.js 20+)")
    print(f"installing {package} (emulator/package.json) ...", file=sys.stderr)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=EMULATOR_DIR,
        check=True,
    )
