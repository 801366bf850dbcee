"""The deployment commands in docs/deployment.md exist, with every flag they use.

The development machine cannot reach Google Cloud, so the commands cannot run here; what can be
checked offline is that each ``gcloud`` and ``firebase`` command is a real command of the
installed CLIs and that each ``--flag`` appears in its ``--help`` (tests/cli_flags.py). A
renamed or misspelled flag fails here instead of on an operator's terminal.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.cli_flags import commands_in, flag_documented, help_text, missing_flags

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deployment.md"


def documented_commands() -> list[list[str]]:
    """Every gcloud/firebase command line in the doc's bash blocks, continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    return [words for block in blocks for words in commands_in(block)]


def test_every_deployment_command_and_flag_exists() -> None:
    """Each gcloud/firebase command in docs/deployment.md has each flag it uses."""
    commands = documented_commands()
    assert len(commands) >= 15, commands
    assert any(c[:3] == ["gcloud", "run", "deploy"] for c in commands)
    missing = missing_flags(commands)
    assert not missing, missing


def test_a_misspelled_flag_is_caught() -> None:
    """The check itself fails on a flag the CLI does not have."""
    text = help_text(["gcloud", "pubsub", "topics", "create", "t"])
    assert flag_documented("--project=P", text)
    assert not flag_documented("--expiration-ttl-days=1", text)
