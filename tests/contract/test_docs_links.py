"""Every relative link in the README and the docs leads somewhere: the file exists and, for a
``#fragment``, the page has a heading with that anchor (GitHub's slugs)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "clients/js/README.md"]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_every_relative_link_resolves() -> None:
    """Links to files and to headings in README.md, docs/ and clients/js/README.md resolve."""
    broken = []
    checked = 0
    for page in PAGES:
        for target in _LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, fragment = target.partition("#")
            goal = (page.parent / path).resolve() if path else page
            checked += 1
            if not goal.exists():
                broken.append((page.name, target, "no such file"))
            elif fragment and goal.suffix == ".md" and fragment not in anchors(goal):
                broken.append((page.name, target, "no such heading"))
    assert checked >= 10, checked
    assert not broken, broken


def test_a_wrong_anchor_is_caught() -> None:
    """The check itself: a heading that exists is found, one that does not is not."""
    operations = anchors(ROOT / "docs" / "operations.md")
    assert "several-instances" in operations
    assert "no-such-section" not in operations
