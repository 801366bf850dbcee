"""The deployment commands in docs/deployment.md exist, with every flag they use.

The development machine cannot reach Google Cloud, so the commands cannot run here; what can be
checked offline is that each ``gcloud`` and ``firebase`` command is a real command of the
installed CLIs and that each ``--flag`` appears in its ``--help``. A renamed or misspelled flag
fails here instead of on an operator's terminal.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deployment.md"
FIREBASE = ROOT / "emulator" / "node_modules" / ".bin" / "firebase"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def documented_commands() -> list[list[str]]:
    """Every gcloud/firebase command line in the doc's bash blocks, continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if "| " in line:
                line = line.rsplit("| ", 1)[1]
            words = shlex.split(line) if line else []
            if words[:1] in (["gcloud"], ["firebase"]):
                commands.append(words)
    return commands


def help_text(words: list[str]) -> str:
    """``--help`` of the command named by the words before the first flag."""
    path = [w for w in words if not w.startswith("-")]
    binary = shutil.which("gcloud") if path[0] == "gcloud" else str(FIREBASE)
    assert binary, "gcloud is not installed: the Google Cloud SDK is part of this machine"
    if path[0] == "firebase":
        path = path[:2]  # firebase takes no positional words after the command here
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
    return _ANSI.sub("", text)


def flag_documented(flag: str, text: str) -> bool:
    name = flag.split("=", 1)[0]
    if name in text:
        return True
    bare = name.removeprefix("--no-")
    return f"--[no-]{bare}" in text or (name.startswith("--no-") and f"--{bare}" in text)


def test_every_deployment_command_and_flag_exists() -> None:
    """Each gcloud/firebase command in docs/deployment.md has each flag it uses."""
    commands = documented_commands()
    assert len(commands) >= 15, commands
    assert any(c[:3] == ["gcloud", "run", "deploy"] for c in commands)
    with ThreadPoolExecutor(4) as pool:
        helps = list(pool.map(help_text, commands))
    missing = [
        (" ".join(w for w in words if not w.startswith("-")), flag)
        for words, text in zip(commands, helps, strict=True)
        for flag in words
        if flag.startswith("--") and not flag_documented(flag, text)
    ]
    assert not missing, missing


def test_a_misspelled_flag_is_caught() -> None:
    """The check itself fails on a flag the CLI does not have."""
    text = help_text(["gcloud", "pubsub", "topics", "create", "t"])
    assert flag_documented("--project=P", text)
    assert not flag_documented("--expiration-ttl-days=1", text)
