"""The JavaScript client as an integrator gets it: ``npm pack`` in clients/js, the tarball
installed offline in a fresh npm project, imported there by Node (ESM, and CommonJS through
Node's require of ES modules), and bundled for a browser page by esbuild."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "js"
#: The demo's esbuild (a dev dependency of clients/js, installed by make deps).
ESBUILD = CLIENT / "node_modules" / ".bin" / "esbuild"
#: What a user needs and nothing else (npm adds package.json itself).
PACKED = {"package.json", "presence-client.js", "presence-client.d.ts", "README.md", "CHANGELOG.md"}

CHECK_SCRIPT = """\
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import Default, * as client from "@presence/client";

const require = createRequire(import.meta.url);
const manifest = require("@presence/client/package.json");
const typesPath = join(dirname(require.resolve("@presence/client/package.json")),
  manifest.exports["."].types);
console.log(JSON.stringify({
  exports: Object.keys(client).sort(),
  defaultIsClass: Default === client.PresenceClient,
  version: client.VERSION,
  required: typeof require("@presence/client").PresenceClient,
  instance: new client.PresenceClient({
    url: "ws://127.0.0.1:1", userId: "u", getToken: async () => "t", WebSocket: class {},
  }).state,
  types: readFileSync(typesPath, "utf8"),
}));
"""

PAGE = """\
import { PresenceClient, VERSION } from "@presence/client";
globalThis.presence = { PresenceClient, VERSION };
"""


@dataclass(frozen=True)
class Installed:
    pack: dict[str, Any]
    project: Path


def run(argv: list[str], cwd: Path, env: Mapping[str, str]) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def npm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # A cache of its own: the tarball never lands in the user's npm cache.
    cache = tmp_path_factory.mktemp("npm-cache")
    return {**os.environ, "npm_config_cache": str(cache), "npm_config_update_notifier": "false"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, npm_env: dict[str, str]) -> Installed:
    """The packed tarball installed, offline, into a fresh npm project."""
    packs = tmp_path_factory.mktemp("pack")
    out = run(["npm", "pack", "--json", "--pack-destination", str(packs)], CLIENT, npm_env)
    (pack,) = json.loads(out)
    project = tmp_path_factory.mktemp("app")
    manifest = {"name": "consumer", "version": "1.0.0", "private": True, "type": "module"}
    (project / "package.json").write_text(json.dumps(manifest))
    tarball = str(packs / pack["filename"])
    install = ["npm", "install", "--offline", "--no-audit", "--no-fund", tarball]
    run(install, project, npm_env)
    return Installed(pack, project)


def test_the_tarball_holds_the_client_and_its_documents_only(installed: Installed) -> None:
    """The tarball has the module, its .d.ts, README, CHANGELOG and package.json, nothing else."""
    assert {f["path"] for f in installed.pack["files"]} == PACKED
    source = (CLIENT / "presence-client.js").read_text()
    assert f'export const VERSION = "{installed.pack["version"]}";' in source


def test_the_manifest_is_publishable() -> None:
    """package.json is public, ESM with exports and types, and has no runtime dependencies."""
    manifest = json.loads((CLIENT / "package.json").read_text())
    assert manifest["name"] == "@presence/client"
    assert "private" not in manifest and manifest["publishConfig"] == {"access": "public"}
    assert re.fullmatch(r"0\.\d+\.\d+", manifest["version"])
    assert manifest["exports"]["."]["types"] == manifest["types"] == "./presence-client.d.ts"
    assert "dependencies" not in manifest and manifest["engines"]["node"]
    changelog = (CLIENT / "CHANGELOG.md").read_text()
    assert f"## {manifest['version']}" in changelog


def test_node_imports_the_installed_package(installed: Installed, npm_env: dict[str, str]) -> None:
    """In the fresh project, import and require give PresenceClient; the types file resolves."""
    (installed.project / "check.mjs").write_text(CHECK_SCRIPT)
    seen = json.loads(run(["node", "check.mjs"], installed.project, npm_env))
    assert {"PresenceClient", "State", "CloseCode", "VERSION", "default"} <= set(seen["exports"])
    assert seen["defaultIsClass"] and seen["version"] == installed.pack["version"]
    assert seen["required"] == "function" and seen["instance"] == "idle"
    assert "export declare class PresenceClient" in seen["types"]


def test_esbuild_bundles_the_installed_package_for_a_page(
    installed: Installed, npm_env: dict[str, str]
) -> None:
    """A page importing @presence/client bundles into one self-contained file with the client."""
    assert ESBUILD.exists(), f"{ESBUILD} is missing: run make deps"
    (installed.project / "page.js").write_text(PAGE)
    bundle, meta = installed.project / "out" / "page.js", installed.project / "out" / "meta.json"
    argv = [str(ESBUILD), "page.js", "--bundle", "--format=esm", "--platform=browser"]
    argv += [f"--outfile={bundle}", f"--metafile={meta}", "--log-level=warning"]
    run(argv, installed.project, npm_env)
    inputs = set(json.loads(meta.read_text())["inputs"])
    assert inputs == {"page.js", "node_modules/@presence/client/presence-client.js"}
    text = bundle.read_text()
    assert "PresenceClient: `url` is required" in text
    assert not re.search(r"^\s*import[\s{*]", text, re.M), "the bundle imports another module"
    # Loading the bundle (as a page would) defines the client it exported.
    probe = f"await import({json.dumps(str(bundle))}); console.log(typeof presence.PresenceClient)"
    out = run(["node", "--input-type=module", "-e", probe], installed.project, npm_env)
    assert out.strip() == "function"
