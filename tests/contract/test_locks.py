"""The hashed locks against what they are resolved from, offline: a requirement added to
pyproject.toml or functions/requirements.in without `make lock` fails here, not in an image
build. And every install in the Makefile and the Dockerfiles goes through a lock."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DEV_LOCK = ROOT / "requirements" / "dev.txt"
GATEWAY_LOCK = ROOT / "requirements" / "gateway.txt"
FUNCTIONS_LOCK = ROOT / "functions" / "requirements.txt"
FUNCTIONS_IN = ROOT / "functions" / "requirements.in"
LOCKS = (DEV_LOCK, GATEWAY_LOCK, FUNCTIONS_LOCK)

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)\s*\\?$")
_HASH = re.compile(r"^\s+--hash=sha256:[0-9a-f]{64}\s*\\?$")


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: frozenset[str]


def read_lock(path: Path) -> dict[str, Pin]:
    """``name==version`` entries and their hashes; anything else that is not a comment fails."""
    pins: dict[str, Pin] = {}
    name: str | None = None
    version = ""
    hashes: set[str] = set()

    def close() -> None:
        if name is not None:
            assert hashes, f"{path.name}: {name}=={version} has no hash"
            pins[name] = Pin(version, frozenset(hashes))

    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if pin := _PIN.match(line):
            close()
            name, version, hashes = canonicalize_name(pin[1]), pin[2], set()
            assert name not in pins, f"{path.name}:{number}: {name} pinned twice"
        elif _HASH.match(line):
            assert name is not None, f"{path.name}:{number}: a hash before any pin"
            hashes.add(line.split("=", 1)[1].rstrip(" \\"))
        else:
            pytest.fail(f"{path.name}:{number}: not a hashed pin: {line!r}")
    close()
    return pins


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements_in(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def runtime_requirements() -> list[Requirement]:
    project = pyproject()
    build = project["build-system"]
    deps = project["project"]
    assert isinstance(build, dict) and isinstance(deps, dict)
    return [Requirement(r) for r in [*build["requires"], *deps["dependencies"]]]


def dev_requirements() -> list[Requirement]:
    deps = pyproject()["project"]
    assert isinstance(deps, dict)
    return [Requirement(r) for r in deps["optional-dependencies"]["dev"]]


def assert_locked(requirements: list[Requirement], lock: Path) -> None:
    pins = read_lock(lock)
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {lock.relative_to(ROOT)}: run make lock"
        version = pins[name].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.relative_to(ROOT)} pins {name}=={version}, outside {requirement}: run make lock"
        )


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_lock_entry_is_pinned_with_hashes(lock: Path) -> None:
    """Nothing but ``name==version`` with its sha256 hashes: pip's --require-hashes mode."""
    assert read_lock(lock)


def test_the_gateway_lock_holds_pyproject_dependencies() -> None:
    """The gateway image installs requirements/gateway.txt: build-system.requires (the project
    is installed without build isolation) and project.dependencies, each within its range."""
    assert_locked(runtime_requirements(), GATEWAY_LOCK)


def test_the_dev_lock_holds_everything_make_installs() -> None:
    """.venv is requirements/dev.txt: the gateway's requirements, the dev extra and the sweep
    function's, as the tests run them all in one environment."""
    assert_locked(
        runtime_requirements() + dev_requirements() + requirements_in(FUNCTIONS_IN), DEV_LOCK
    )


def test_the_function_lock_holds_its_direct_requirements() -> None:
    """Cloud Functions and functions/Dockerfile install functions/requirements.txt, resolved
    from functions/requirements.in (functions-framework included: it serves the function)."""
    direct = requirements_in(FUNCTIONS_IN)
    assert "functions-framework" in {canonicalize_name(r.name) for r in direct}
    assert_locked(direct, FUNCTIONS_LOCK)


@pytest.mark.parametrize("lock", [GATEWAY_LOCK, FUNCTIONS_LOCK], ids=["gateway", "functions"])
def test_image_locks_run_what_the_tests_ran(lock: Path) -> None:
    """Each image's lock is resolved within the dev lock: the same version and hashes of every
    package, so an image never runs a release the tests did not."""
    dev = read_lock(DEV_LOCK)
    differ = {
        name: (pin.version, dev[name].version if name in dev else None)
        for name, pin in read_lock(lock).items()
        if dev.get(name) != pin
    }
    assert not differ, f"{lock.relative_to(ROOT)} against requirements/dev.txt: {differ}"


def test_the_test_environment_is_the_dev_lock() -> None:
    """The interpreter running the tests has every package of the dev lock at its version:
    make installs .venv from the lock, not from ranges."""
    wrong = {}
    for name, pin in read_lock(DEV_LOCK).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != pin.version:
            wrong[name] = (installed, pin.version)
    assert not wrong, f"installed vs locked (run make deps): {wrong}"


def install_lines() -> list[tuple[str, str]]:
    """(file, command) for every pip or npm install in the Makefile and the Dockerfiles, with
    continuation lines joined."""
    files = [ROOT / "Makefile", *ROOT.glob("*/Dockerfile"), *ROOT.glob("*/containers/*Dockerfile")]
    found = []
    for path in files:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for line in text.splitlines():
            if line.lstrip().startswith("#"):
                continue
            for command in re.split(r"&&|;", line):
                if re.search(r"\b(pip install|npm (install|ci|i)\b)", command):
                    found.append((str(path.relative_to(ROOT)), command.strip()))
    return found


def test_every_install_goes_through_a_lock() -> None:
    """pip installs a hashed lock (--require-hashes -r) or the project alone (--no-deps); npm
    installs package-lock.json as it is (npm ci), never resolving anew."""
    lines = install_lines()
    assert any("gateway/Dockerfile" == f for f, _ in lines)
    for path, command in lines:
        if "pip install" in command:
            locked = re.search(r"--require-hashes .*-r \S+", command) is not None
            assert locked or "--no-deps" in command, f"{path}: {command}"
        else:
            assert re.search(r"\bnpm ci\b", command), f"{path}: {command}"
    # The local stack installs its Node packages on first use, from Python.
    for script in [*ROOT.glob("emulator/*.py"), *ROOT.glob("scripts/*.py")]:
        assert '"npm", "install"' not in script.read_text(), f"{script}: npm install, not npm ci"


@pytest.mark.parametrize(
    ("dockerfile", "lock"),
    [
        ("gateway/Dockerfile", "requirements/gateway.txt"),
        ("functions/Dockerfile", "requirements.txt"),
    ],
)
def test_each_python_image_installs_its_lock(dockerfile: str, lock: str) -> None:
    """The lock copied in is the one installed with --require-hashes (the function's build
    context is functions/, where Cloud Functions finds requirements.txt too)."""
    text = (ROOT / dockerfile).read_text()
    assert f"COPY {lock} /tmp/requirements.txt" in text
    assert "--require-hashes -r /tmp/requirements.txt" in text


def npm_packages() -> list[str]:
    """Folders of the repository's own package.json files (not installed ones)."""
    found = {
        path.parent.relative_to(ROOT).as_posix()
        for pattern in ("*/package.json", "*/*/package.json", "*/*/*/package.json")
        for path in ROOT.glob(pattern)
    }
    skipped = {"node_modules", ".run", ".venv", "venv"}
    return sorted(f for f in found if not skipped & set(f.split("/")))


@pytest.mark.parametrize("package", npm_packages())
def test_every_npm_package_has_its_lock(package: str) -> None:
    """npm ci needs package-lock.json beside package.json, and the Makefile installs with it."""
    assert (ROOT / package / "package-lock.json").is_file()
    assert f"cd {package} && npm ci" in (ROOT / "Makefile").read_text()
