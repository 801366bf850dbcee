"""What ``firebase deploy --only functions`` would deploy, found the way the CLI finds it.

``scripts/functions_discover.py`` builds ``functions/venv`` from ``functions/requirements.txt``
(the first run needs PyPI and takes about half a minute) and runs the pinned firebase-tools'
own discovery: the Firebase Python SDK's admin server in that venv, ``/__/functions.yaml``,
the CLI's parsing and validation. These tests pin what it finds against ``functions/main.py``
and ``firebase.json``, and prove on broken copies of ``functions/`` that a deploy-breaking
change fails here.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "functions_discover.py"
FUNCTIONS = ROOT / "functions"

# The contract the rest of the project relies on (README, the gateway's session timeouts):
# the sweep runs every minute and may take up to nine minutes.
SWEEP = "sweep_expired_sessions"
SWEEP_SCHEDULE = "* * * * *"
SWEEP_TIMEOUT_S = 540

# A cold run builds the venv with pip; later runs take a few seconds.
RUN_TIMEOUT_S = 840
pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 60)


def run_discovery(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def discovered() -> dict[str, Any]:
    done = run_discovery()
    assert done.returncode == 0, f"discovery failed:\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def scheduled_in_source(main_py: Path) -> dict[str, dict[str, Any]]:
    """``@scheduler_fn.on_schedule(...)`` functions in main.py and their literal arguments."""
    found: dict[str, dict[str, Any]] = {}
    for node in ast.parse(main_py.read_text()).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if (
                isinstance(deco, ast.Call)
                and isinstance(deco.func, ast.Attribute)
                and deco.func.attr == "on_schedule"
            ):
                found[node.name] = {
                    k.arg: ast.literal_eval(k.value) for k in deco.keywords if k.arg is not None
                }
    return found


def endpoint(result: dict[str, Any], name: str) -> dict[str, Any]:
    by_name = {e["name"]: e for e in result["endpoints"]}
    assert name in by_name, f"{name} not discovered; found {sorted(by_name)}"
    found: dict[str, Any] = by_name[name]
    return found


def test_sweep_is_discovered_as_a_scheduled_function(discovered: dict[str, Any]) -> None:
    """The CLI finds sweep_expired_sessions as a gen-2 scheduled function, every minute, 540 s."""
    sweep = endpoint(discovered, SWEEP)
    assert sweep["trigger"] == "scheduled"
    assert sweep["platform"] == "gcfv2"
    assert sweep["entryPoint"] == SWEEP
    assert sweep["schedule"] == SWEEP_SCHEDULE
    assert sweep["timeoutSeconds"] == SWEEP_TIMEOUT_S
    assert sweep["codebase"] == "default"
    assert not [w for w in discovered["warnings"] if SWEEP in w], discovered["warnings"]


def test_discovered_schedules_match_the_decorators_in_main_py(discovered: dict[str, Any]) -> None:
    """Each on_schedule function in main.py is discovered with its declared schedule and timeout."""
    declared = scheduled_in_source(FUNCTIONS / "main.py")
    assert declared[SWEEP] == {"schedule": SWEEP_SCHEDULE, "timeout_sec": SWEEP_TIMEOUT_S}
    for name, kwargs in declared.items():
        found = endpoint(discovered, name)
        assert found["trigger"] == "scheduled"
        assert found["schedule"] == kwargs["schedule"]
        assert found["timeoutSeconds"] == kwargs.get("timeout_sec")
        assert found["timeZone"] == kwargs.get("timezone")


def test_upload_is_the_source_without_the_venv(discovered: dict[str, Any]) -> None:
    """firebase.json uploads functions/ as python311 with its code but not venv or caches."""
    config = json.loads((ROOT / "firebase.json").read_text())["functions"]
    entries = config if isinstance(config, list) else [config]
    assert [(e["source"], e.get("codebase"), e["runtime"]) for e in entries] == [
        ("functions", "default", "python311")
    ]
    assert "venv" in entries[0]["ignore"]

    [codebase] = discovered["codebases"]
    assert (codebase["source"], codebase["runtime"]) == ("functions", "python311")
    assert codebase["ignore"] == entries[0]["ignore"]
    upload = set(codebase["upload"])
    # The venv the discovery ran in is there, thousands of files, and none of it ships.
    assert (FUNCTIONS / "venv" / "pyvenv.cfg").is_file()
    assert not [p for p in upload if p.split("/")[0] in {"venv", ".venv"}]
    assert not [p for p in upload if "__pycache__" in p.split("/")]
    # Everything main.py needs at run time does ship.
    code = {
        p.relative_to(FUNCTIONS).as_posix()
        for p in FUNCTIONS.rglob("*.py")
        if not {"venv", ".venv", "__pycache__"} & set(p.relative_to(FUNCTIONS).parts)
    }
    assert {"main.py", "presence_sweep/__init__.py"} <= code
    assert code | {"requirements.txt"} <= upload


def _syntax_error(main: Path) -> None:
    main.write_text(main.read_text() + "\ndef broken(:\n")


def _unlisted_import(main: Path) -> None:
    text = main.read_text()
    main.write_text(text.replace("import json\n", "import json\nimport not_in_requirements\n", 1))


def _no_schedule(main: Path) -> None:
    text = main.read_text()
    decorator = f'@scheduler_fn.on_schedule(schedule="{SWEEP_SCHEDULE}", timeout_sec=540)\n'
    assert decorator in text
    main.write_text(text.replace(decorator, ""))


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (_syntax_error, ["could not be analyzed", "SyntaxError"]),
        (_unlisted_import, ["could not be analyzed", "No module named 'not_in_requirements'"]),
        (_no_schedule, ["no functions discovered"]),
    ],
    ids=["syntax-error", "import-not-in-requirements", "no-scheduled-function"],
)
def test_broken_functions_fail_discovery_with_a_clear_message(
    discovered: dict[str, Any],
    tmp_path: Path,
    breakage: Callable[[Path], None],
    expected: list[str],
) -> None:
    """A main.py that a deploy cannot load, or that deploys nothing, fails with the reason."""
    # A copy of the project that shares the real venv (already built by `discovered`).
    shutil.copy(ROOT / "firebase.json", tmp_path / "firebase.json")
    shutil.copytree(
        FUNCTIONS,
        tmp_path / "functions",
        ignore=shutil.ignore_patterns("venv", ".venv", "__pycache__"),
    )
    (tmp_path / "functions" / "venv").symlink_to(FUNCTIONS / "venv", target_is_directory=True)
    breakage(tmp_path / "functions" / "main.py")

    done = run_discovery("--project-dir", str(tmp_path))

    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    for text in expected:
        assert text in done.stderr
    # The SDK's admin server was stopped: nothing runs from the copy any more.
    left = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        cwd = proc.info["cwd"] or ""
        if cwd.startswith(str(tmp_path)) or str(tmp_path) in " ".join(proc.info["cmdline"] or []):
            left.append(proc.info)
    assert left == []
