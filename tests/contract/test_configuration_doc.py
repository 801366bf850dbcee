"""docs/configuration.md against the code: its gateway table names exactly the variables the
gateway's settings read, and its sweep function table exactly the sweep's, so a setting cannot
be added without its row, nor a row outlive its setting. The README's short table shows a few
of them, each as the reference has it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"

#: Where each component reads its environment.
GATEWAY_SOURCES = (
    "gateway/settings.py",
    "gateway/component_settings.py",
    "gateway/env.py",
    "gateway/edge/versions.py",
)
SWEEP_SOURCES = ("functions/presence_sweep/settings.py",)
#: Read, but not settings anyone sets: Cloud Run's own marker, and an older alias Cloud
#: Functions sets for the project.
NOT_SETTINGS = {"K_SERVICE", "GCLOUD_PROJECT"}

#: A variable name as the first argument of a read: env("X", ...), reader.get("X", ...),
#: items/tokens/limit/positive("X"), number("X", ...), environ.get("X"), _pubsub_topic(r, "X").
_READ = re.compile(
    r'\b(?:env|get|items|tokens|limit|positive|number|_pubsub_topic)\(\s*(?:reader,\s*)?"'
    r'([A-Z][A-Z0-9_]{2,})"'
)
#: Names declared as constants, dictionary keys of variables (EMULATOR_HOSTS) or a reading
#: function's default (``variable: str = "PUBSUB_TOPIC"``).
_DECLARED = re.compile(
    r'^\s*(?:"([A-Z][A-Z0-9_]*_HOST)":|[A-Z_]+(?:: Final)? = "([A-Z][A-Z0-9_]{2,})"$)'
    r'|variable: str = "([A-Z][A-Z0-9_]+)"',
    re.M,
)


def read_by(sources: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    for source in sources:
        text = (ROOT / source).read_text()
        found |= set(_READ.findall(text))
        found |= {a or b or c for a, b, c in _DECLARED.findall(text)}
    return found - NOT_SETTINGS


def table_rows(text: str, heading: str) -> dict[str, str]:
    """The rows of the table under ``heading``, by variable."""
    section = text[text.index(heading) :]
    section = section[: section.find("\n#", len(heading))]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            # A row may name several variables that share a meaning: `A`, `B`.
            names = line.split(" | ")[0].strip("| ")
            rows.update({name: line for name in re.findall(r"`([A-Z0-9_]+)`", names)})
    return rows


def test_the_gateway_table_names_exactly_what_the_gateway_reads() -> None:
    """Every variable the gateway's settings read has a row, and every row a reader."""
    rows = table_rows(DOC.read_text(), "## Gateway")
    assert set(rows) == read_by(GATEWAY_SOURCES)


def test_the_sweep_table_names_exactly_what_the_sweep_reads() -> None:
    """Every variable the sweep function's settings read has a row, and every row a reader."""
    rows = table_rows(DOC.read_text(), "## Sweep function")
    assert set(rows) == read_by(SWEEP_SOURCES)


def test_the_readmes_short_table_repeats_the_reference() -> None:
    """Each row of the README's table is the reference's row, word for word."""
    readme = (ROOT / "README.md").read_text()
    shown = table_rows(readme, "## Configuration")
    reference = table_rows(DOC.read_text(), "## Gateway")
    assert shown and all(reference.get(name) == row for name, row in shown.items())
