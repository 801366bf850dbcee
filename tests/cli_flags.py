"""Checking gcloud and firebase command lines against the installed CLIs, offline.

The development machine cannot reach Google Cloud, so deployment commands cannot run here;
what can be checked is that each ``gcloud`` and ``firebase`` command is a real command of the
installed CLIs and that each ``--flag`` appears in its ``--help``. Used for the commands
docs/deployment.md documents (tests/contract/test_deploy_docs.py) and the ones
``make deploy --dry-run`` prints (tests/contract/test_deploy_script.py).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIREBASE = ROOT / "emulator" / "node_modules" / ".bin" / "firebase"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def commands_in(script: str) -> list[list[str]]:
    """Every gcloud/firebase command of a shell text: continuations joined, comments dropped,
    each side of ``||`` and the last command of a pipe."""
    commands = []
    joined = re.sub(r"\\\n\s*", " ", script)
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("#"):
            continue
        for part in line.split(" || "):
            if "| " in part:
                part = part.rsplit("| ", 1)[1]
            words = shlex.split(part) if part.strip() else []
            if words[:1] in (["gcloud"], ["firebase"]):
                commands.append(words)
    return commands


def command_path(words: list[str]) -> tuple[str, ...]:
    """The words naming the command (those before the flags, positionals included)."""
    path = [w for w in words if not w.startswith("-")]
    if path[0] == "firebase":
        path = path[:2]  # firebase takes no positional words after the command here
    return tuple(path)


def help_text(words: list[str]) -> str:
    """``--help`` of the command named by the words before the first flag."""
    return _help(command_path(words))


#: --help by command, as the help's NAME line spells it (without positional arguments):
#: ``gcloud secrets describe A`` and ``... describe B`` share one help, and each --help of
#: gcloud takes a second or two of CPU.
_HELPS: dict[tuple[str, ...], str] = {}
_LOCK = threading.Lock()


def _help(path: tuple[str, ...]) -> str:
    with _LOCK:
        for command, text in _HELPS.items():
            if path[: len(command)] == command:
                return text
    binary = shutil.which("gcloud") if path[0] == "gcloud" else str(FIREBASE)
    assert binary, "gcloud is not installed: the Google Cloud SDK is part of this machine"
    result = subprocess.run(
        [binary, *path[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "TERM": "dumb", "HOME": "/tmp"},
    )
    assert result.returncode == 0, f"{' '.join(path)}: {result.stderr[-500:]}"
    text = result.stdout
    if path[0] == "firebase":
        # --project is one of the CLI's global options, listed by `firebase --help` only.
        text += subprocess.run(
            [binary, "--help"], capture_output=True, text=True, timeout=120
        ).stdout
    text = _ANSI.sub("", text)
    named = re.search(r"^NAME\n\s+(gcloud [\w -]+?) - ", text, flags=re.M)
    command = tuple(named.group(1).split()) if named else path
    with _LOCK:
        _HELPS[command if path[: len(command)] == command else path] = text
    return text


def flag_documented(flag: str, text: str) -> bool:
    name = flag.split("=", 1)[0]
    if name in text:
        return True
    bare = name.removeprefix("--no-")
    return f"--[no-]{bare}" in text or (name.startswith("--no-") and f"--{bare}" in text)


def missing_flags(commands: Iterable[list[str]]) -> list[tuple[str, str]]:
    """(command, flag) for each flag its command's --help does not list."""
    commands = list(commands)
    paths = list(dict.fromkeys(command_path(words) for words in commands))
    with ThreadPoolExecutor(4) as pool:
        # One path per command first (the last word is a positional argument in most), so
        # that the others find their command's help already there.
        list(pool.map(_help, {path[:-1]: path for path in paths}.values()))
        helps = list(pool.map(help_text, commands))
    return [
        (" ".join(command_path(words)), flag)
        for words, text in zip(commands, helps, strict=True)
        for flag in words
        if flag.startswith("--") and not flag_documented(flag, text)
    ]
