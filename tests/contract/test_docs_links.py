"""Every relative link in the README and the docs leads somewhere: the file exists and, for a
``#fragment``, the page has a heading with that anchor (GitHub's slugs)."""

from __future__ import annotations

import re
import sys
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


_MAKE = re.compile(r"\bmake ([a-z][a-z-]*)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
_SPAN = re.compile(r"`([^`\n]+)`")
_MODULE = re.compile(r"\bpython3? -m ([a-z_][a-z_.]*)")
_PATH = re.compile(
    r"(?<![\w./-])((?:scripts|tests|gateway|functions|emulator|clients|docs)/[\w./-]*\w)"
)
#: Paths the docs name that exist only once something has run (a build, a test run, a login).
_MADE_BY_RUNS = ("emulator/node_modules", "functions/.env", "tests/screenshots")
_OTHER_PROJECTS = ("websockets",)


def code_of(text: str) -> str:
    """What a page shows as code (fenced blocks and inline spans), where commands are."""
    blocks = _FENCE.findall(text)
    spans = _SPAN.findall(_FENCE.sub("", text))
    return "\n".join(blocks + spans)


def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([a-z][a-z-]*)\s*:", line)
        if match:
            targets.add(match.group(1))
    return targets


def test_every_command_and_path_in_the_docs_exists() -> None:
    """``make X`` is a Makefile target, ``python -m X`` a module of this repository (or of
    functions/, or a library it installs), and a path into the repository names a file or
    folder that exists."""
    targets = makefile_targets()
    wrong = []
    seen = 0
    for page in PAGES:
        text = page.read_text()
        for target in _MAKE.findall(code_of(text)):
            seen += 1
            if target not in targets:
                wrong.append((page.name, f"make {target}"))
        for module in _MODULE.findall(code_of(text)):
            seen += 1
            top = module.split(".")[0]
            if top in _OTHER_PROJECTS or top in sys.stdlib_module_names:
                continue
            # The sweep's package is run from functions/, its deployed root.
            paths = [root / Path(*module.split(".")) for root in (ROOT, ROOT / "functions")]
            if not any(
                p.with_suffix(".py").exists() or (p / "__main__.py").exists() for p in paths
            ):
                wrong.append((page.name, f"python -m {module}"))
        for path in _PATH.findall(text):
            seen += 1
            base = page.parent if page.parent.name == "js" else ROOT
            if path.startswith(_MADE_BY_RUNS):
                continue
            if not ((ROOT / path).exists() or (base / path).exists()):
                wrong.append((page.name, path))
    assert seen >= 40, seen
    assert not wrong, wrong


def test_a_missing_make_target_is_caught() -> None:
    targets = makefile_targets()
    assert {"up", "test", "bench", "test-containers"} <= targets
    assert "deploy-everything" not in targets
