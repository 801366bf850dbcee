"""Every product module stays within 350 lines, so each one keeps to one concern."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 350
#: The product code: the gateway, the Python client, the sweep function's package and the local
#: stack's launcher (its own modules only, not what npm installs under it).
MODULES = sorted(
    [
        *(ROOT / "gateway").rglob("*.py"),
        *(ROOT / "clients" / "python" / "presence_client").rglob("*.py"),
        *(ROOT / "functions" / "presence_sweep").rglob("*.py"),
        *(ROOT / "emulator").glob("*.py"),
    ]
)


def test_the_product_code_is_found() -> None:
    """The globs reach every wing of the product code (a moved folder would pass silently)."""
    names = {path.relative_to(ROOT).parts[0] for path in MODULES}
    assert names == {"gateway", "clients", "functions", "emulator"}
    assert any(path.parent.name == "presence_client" for path in MODULES)
    assert len(MODULES) > 50


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_at_most_350_lines(path: Path) -> None:
    """A module over the limit is split along a seam of its own, not trimmed of its reasons."""
    lines = len(path.read_text().splitlines())
    assert lines <= LIMIT, f"{path.relative_to(ROOT)}: {lines} lines (at most {LIMIT})"
