"""The gateway's wings and the direction of their imports: each module imports only from its own
wing or from wings below it, so the layering a reader sees in the folder names is the one the code
keeps. A new module outside every wing fails here until it is given a place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"

#: Highest first. A module may import from its own layer and any layer after it.
LAYERS: list[tuple[str, ...]] = [
    ("gateway.__main__", "gateway.serving"),
    ("gateway.web",),
    ("gateway.cluster",),
    ("gateway.instance",),
    ("gateway.storage",),
    ("gateway.edge",),
    ("gateway.settings", "gateway.component_settings", "gateway.env"),
    ("gateway.protocol",),
    ("gateway.exceptions", "gateway.logs", "gateway"),
]

#: Wings that must stay free of I/O libraries: the protocol is plain decisions.
NO_IO = {"gateway.protocol": ("asyncio", "litestar", "uvicorn", "google", "firebase_admin")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    if best is None:
        raise LookupError(module)
    return best[0]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every absolute import target of ``path``, with its line (the gateway uses no relative
    ones)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            base = node.module or ""
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


MODULES = sorted(GATEWAY.rglob("*.py"))


def test_every_gateway_module_belongs_to_a_layer() -> None:
    """No module sits outside the declared wings (a new one must be placed deliberately)."""
    for path in MODULES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_or_sideways(path: Path) -> None:
    """A module imports from its own wing or a lower one, never from a wing above it."""
    own = layer_of(module_name(path))
    upward = [
        f"line {line}: {target}"
        for line, target in imports_of(path)
        if target.split(".")[0] == "gateway"
        and target != "gateway"
        and _is_module(target)
        and layer_of(target) < own
    ]
    assert not upward, f"{module_name(path)} imports from a higher wing: {upward}"


@pytest.mark.parametrize("wing", sorted(NO_IO))
def test_pure_wings_import_no_io_library(wing: str) -> None:
    """The protocol wing decides; it never touches sockets, event loops or Google clients."""
    for path in (ROOT / wing.replace(".", "/")).rglob("*.py"):
        for line, target in imports_of(path):
            assert target.split(".")[0] not in NO_IO[wing], f"{path}:{line} imports {target}"


def _is_module(target: str) -> bool:
    """Whether ``target`` names a gateway module or package (not a name imported from one)."""
    relative = Path(*target.split("."))
    return (ROOT / relative.with_suffix(".py")).exists() or (ROOT / relative).is_dir()
