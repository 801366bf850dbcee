"""The Python client as an integrator gets it: an sdist of clients/python, a wheel built from
that sdist (as ``python -m build`` does), installed with the locked websockets into a clean
virtualenv that has no gateway, and run there against a real gateway process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import UNIT, GatewayProc, TokenMinter

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "clients" / "python"

CLIENT_SCRIPT = """\
import asyncio, importlib.util, json, sys
import presence_client
from presence_client import PresenceClient, State

async def main(url, user, token):
    async def get_token(force_refresh):
        return token
    async with PresenceClient(url, user, get_token) as client:
        answered = asyncio.Event()
        client.on("pong", lambda event: answered.set())
        await client.wait_for_state(State.CONNECTED, timeout=30)
        await asyncio.wait_for(answered.wait(), 30)
        ack = await asyncio.wait_for(client.send({"action": "hello"}), 30)
    print(json.dumps({
        "file": presence_client.__file__,
        "gateway": importlib.util.find_spec("gateway") is not None,
        "ack": ack.id,
    }))

asyncio.run(main(*sys.argv[1:]))
"""


@dataclass(frozen=True)
class Venv:
    python: Path
    wheel: Path
    workdir: Path


def run(argv: list[str | Path], cwd: Path) -> str:
    # No PYTHONPATH: the venv must find nothing of the repository.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    timeout = 120 * UNIT
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def locked_websockets() -> str:
    """The websockets entry of requirements/dev.txt (pin and hashes): the release tests run."""
    lock = (ROOT / "requirements" / "dev.txt").read_text()
    match = re.search(r"^websockets==\S+(?: \\\n\s+--hash=\S+)+", lock, re.M)
    assert match, "websockets is not in requirements/dev.txt"
    return match.group(0) + "\n"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A clean virtualenv holding the built wheel and websockets, nothing else."""
    work = tmp_path_factory.mktemp("python-client")
    # Built from a copy: the project must need nothing outside its folder, and no build
    # directory is left in the repository.
    source = work / "src"
    shutil.copytree(
        PROJECT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    dist = work / "dist"
    sdist_call = f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"
    run([sys.executable, "-c", sdist_call], source)
    (sdist,) = dist.glob("presence_client-*.tar.gz")
    # The build's setuptools is the dev lock's (no isolation), so no download here.
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, sdist], work)
    (wheel,) = dist.glob("presence_client-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", work / "venv"], work)
    python = work / "venv" / "bin" / "python"
    (work / "websockets.txt").write_text(locked_websockets())
    target = [*pip, "--python", python]
    run([*target, "install", "-q", "--require-hashes", "-r", work / "websockets.txt"], work)
    # --no-index: a dependency the wheel declares beyond websockets fails here.
    run([*target, "install", "-q", "--no-index", wheel], work)
    return Venv(python, wheel, work)


def test_the_wheel_holds_the_typed_package_and_depends_on_websockets_only(venv: Venv) -> None:
    """The wheel has presence_client with py.typed, and requires websockets and nothing else."""
    with zipfile.ZipFile(venv.wheel) as wheel:
        names = wheel.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = re.findall(r"^Requires-Dist: (.+)$", wheel.read(metadata).decode(), re.M)
    assert "presence_client/py.typed" in names and "presence_client/client.py" in names
    assert {n.split("/")[0] for n in names if not n.startswith("presence_client-")} == {
        "presence_client"
    }
    assert [r.split(">")[0].split("=")[0].strip() for r in requires] == ["websockets"]
    pip = [sys.executable, "-m", "pip", "--python", venv.python]
    listed = json.loads(run([*pip, "list", "--format=json"], venv.workdir))
    assert {p["name"].lower() for p in listed} == {"presence-client", "websockets"}
    run([*pip, "check"], venv.workdir)


def test_the_installed_client_talks_to_a_gateway(
    venv: Venv, gateway: GatewayProc, minter: TokenMinter
) -> None:
    """In the venv, with no gateway importable, the client connects, answers a ping, gets an ack."""
    user = f"pkg-{uuid.uuid4().hex[:12]}"
    (venv.workdir / "client.py").write_text(CLIENT_SCRIPT)
    url = f"ws://127.0.0.1:{gateway.port}"
    out = run([venv.python, "client.py", url, user, minter(user)], venv.workdir)
    seen = json.loads(out.strip().splitlines()[-1])
    assert not seen["gateway"], "the venv can import the gateway"
    assert Path(seen["file"]).is_relative_to(venv.workdir / "venv")
    assert isinstance(seen["ack"], int)
