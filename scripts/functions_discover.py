#!/usr/bin/env python3
"""Discover the Cloud Functions ``firebase deploy --only functions`` would deploy, offline.

Usage (from anywhere; the repository's own Python is enough, nothing is imported from it)::

    .venv/bin/python scripts/functions_discover.py [--project ID] [--project-dir DIR] [-v]

What it does, per functions codebase in ``firebase.json``:

1. Makes ``<source>/venv`` (``functions/venv``), the virtual environment the Firebase CLI
   insists on: ``python3.11 -m venv venv`` (the interpreter named by the codebase's
   ``runtime``, as the CLI picks it) and ``pip install -r requirements.txt``. A stamp file in
   the venv records the requirements' hash and the interpreter; when either changes, the venv
   is rebuilt from scratch, so a package dropped from requirements.txt cannot linger and hide
   a missing requirement. This is the only step that needs the network (PyPI).
2. Runs the CLI's discovery by calling firebase-tools' own code (the version pinned in
   ``emulator/package.json``) from a small Node driver embedded below, the same calls
   ``firebase deploy --only functions`` makes in ``lib/deploy/functions/prepare.js``:
   ``Config.load`` + ``projectConfig.normalizeAndValidate`` for firebase.json,
   ``runtimes.getRuntimeDelegate`` (the Python delegate), ``supported.guardVersionSupport``,
   the env it gives user code (``functions/.env*``, ``FIREBASE_CONFIG``, ``GCLOUD_PROJECT``,
   ``GOOGLE_CLOUD_QUOTA_PROJECT``), then ``delegate.discoverBuild``. That starts the Firebase
   Python SDK's admin server exactly as a deploy does: ``. venv/bin/activate && python3.11
   .../firebase_functions/private/serving.py`` with ``ADMIN_PORT`` set, fetches
   ``/__/functions.yaml``, asks it to ``/__/quitquitquit`` and parses the YAML into a build.
   The driver then resolves the build into the backend the deploy would send
   (``build.resolveBackend`` non-interactively, default regions, CPU/concurrency defaults,
   ``validate.endpointsAreValid``), and lists the files the deploy would upload with the same
   ignore rules ``prepareFunctionsUpload`` applies (firebase.json ``ignore`` plus the CLI's own
   additions), without building the archive.
3. Prints one JSON document: the endpoints (name, trigger type, schedule, timeout, region, ...),
   per codebase the files that would be uploaded, and any warnings the CLI logged.

Why this path rather than the alternatives: ``firebase deploy --dry-run`` would be the CLI
itself but needs a login and Google APIs before it gets to discovery, and
``firebase emulators:start --only functions`` discovers through the same delegate but also
starts the emulator hub and is only readable from its log. Requiring the CLI's modules runs
the deploy's code for everything from firebase.json to the validated backend and skips only
the steps that talk to Google: enabling APIs, fetching the project's web-app config (replaced
by ``{projectId, storageBucket}``), legacy runtime config, the deployed backend (taken as
empty, so regions fall back to the CLI's default), secrets and IAM. Reading
``/__/functions.yaml`` by hand would skip the CLI's parsing and validation, which is where
version skew between CLI and SDK shows up.

Offline after step 1, with the venv in place it takes a few seconds, and it leaves nothing
running: the CLI stops the SDK server itself; this script gives Node a deadline and, past it,
sends SIGTERM (the CLI then kills the server's process group) and then SIGKILL.

The environment handed to user code is the caller's (as with the CLI) minus ``PYTHONPATH`` and
``PYTHONHOME``, so nothing outside the venv can satisfy an import, plus
``PYTHONDONTWRITEBYTECODE`` so the source tree is left as it was.

Exit status: 0 when at least one function was discovered; 1 when discovery failed (syntax or
import error in main.py, a requirement that does not install, no functions found, a build the
CLI rejects); 2 when a tool it needs is missing (Node, firebase-tools, the Python runtime).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIREBASE_TOOLS = ROOT / "emulator" / "node_modules" / "firebase-tools"
DEFAULT_PROJECT = "demo-presence"
VENV_DIR = "venv"  # firebase-tools: lib/functions/python.js DEFAULT_VENV_DIR
STAMP_NAME = ".functions-discover-stamp"
PIP_TIMEOUT_S = 900
DISCOVERY_TIMEOUT_S = 120
PROG = "functions-discover"

# Runs inside Node with firebase-tools' modules. argv: firebase-tools dir, project dir,
# project id, result file, verbose flag. Writes {"ok": ...} to the result file.
DRIVER_JS = r"""
"use strict";
const fs = require("fs");
const path = require("path");
const util = require("util");
const [ftDir, projectDir, projectId, resultFile, verbose] = process.argv.slice(1);
const lib = (p) => require(path.join(ftDir, "lib", p));
const fromCli = (name) => require(require.resolve(name, { paths: [ftDir] }));
const Transport = fromCli("winston-transport");
const { SPLAT } = fromCli("triple-beam");
const { logger } = lib("logger");
// The CLI's logger has no transport until bin/firebase adds one: collect what it logs (the
// SDK server's stdout/stderr arrive as info/error), and echo it all to stderr with -v.
const log = [];
const plain = (i) =>
  util.stripVTControlCharacters(
    [i.message, ...(i[SPLAT] || [])]
      .filter((v) => v !== undefined)
      .map((v) => (typeof v === "string" ? v : util.inspect(v, { depth: 4 })))
      .join(" "),
  ).replace(/\s+$/, "");
class Collect extends Transport {
  log(info, callback) {
    const message = plain(info);
    if (verbose === "1") process.stderr.write(`[${info.level}] ${message}\n`);
    if (info.level !== "debug" && message) log.push({ level: info.level, message });
    callback();
  }
}
logger.add(new Collect({ level: "debug" }));

const { Config } = lib("config");
const projectConfig = lib("functions/projectConfig");
const functionsEnv = lib("functions/env");
const runtimes = lib("deploy/functions/runtimes");
const supported = lib("deploy/functions/runtimes/supported");
const build = lib("deploy/functions/build");
const backend = lib("deploy/functions/backend");
const validate = lib("deploy/functions/validate");
const prepare = lib("deploy/functions/prepare");
const experiments = lib("experiments");
const fsAsync = lib("fsAsync");
const CONFIG_DEST_FILE = ".runtimeconfig.json"; // prepareFunctionsUpload.js

function finish(result) {
  result.firebaseTools = require(path.join(ftDir, "package.json")).version;
  result.log = log;
  fs.writeFileSync(resultFile, JSON.stringify(result));
  // detectFromPort leaves a 10 s timer behind; the CLI carries on, this driver is done.
  process.exit(0);
}

function describe(err) {
  const children = (err.children || []).map((c) => (c && c.message) || String(c));
  return { message: (err && err.message) || String(err), children };
}

async function main() {
  const config = Config.load({ cwd: projectDir, projectDir });
  const fnConfig = projectConfig.normalizeAndValidate(config.src.functions);
  const firebaseConfig = { projectId, storageBucket: `${projectId}.appspot.com` };
  const codebases = [];
  const endpoints = [];
  const wantBackends = {};
  for (const cfg of fnConfig) {
    const localCfg = projectConfig.requireLocal(cfg, "Remote sources are not supported.");
    const codebase = localCfg.codebase;
    const sourceDir = config.path(localCfg.source);
    // prepare.js loadCodebases
    const delegate = await runtimes.getRuntimeDelegate({
      projectId, sourceDir, projectDir: config.projectDir, runtime: localCfg.runtime,
    });
    if (!experiments.isEnabled("bypassfunctionsdeprecationcheck")) {
      supported.guardVersionSupport(delegate.runtime);
    }
    await delegate.validate();
    await delegate.build();
    const userEnvOpt = { functionsSource: sourceDir, projectId, projectDir: config.projectDir };
    const configDir = projectConfig.resolveConfigDir(localCfg, codebase);
    if (configDir) userEnvOpt.configDir = config.path(configDir);
    const userEnvs = functionsEnv.loadUserEnvs(userEnvOpt);
    const firebaseEnvs = functionsEnv.loadFirebaseEnvs(firebaseConfig, projectId);
    const wantBuild = await delegate.discoverBuild(
      { firebase: firebaseConfig },
      { ...userEnvs, ...firebaseEnvs, GOOGLE_CLOUD_QUOTA_PROJECT: projectId },
    );
    wantBuild.runtime = localCfg.runtime;
    build.applyEndpointPrefix(wantBuild, localCfg.prefix || "");
    // prepare.js prepare(), minus everything that asks Google (existing backend is empty)
    const { userEnvs: plainEnvs } = prepare.partitionUserEnvs(userEnvs);
    const { backend: wantBackend } = await build.resolveBackend({
      build: wantBuild, firebaseConfig, userEnvs: plainEnvs, codebase,
      nonInteractive: true, isEmulator: false,
      resolveRegions: (b, values) =>
        prepare.resolveDefaultRegionsForBuild(b, backend.empty(), values),
    });
    for (const ep of backend.allEndpoints(wantBackend)) ep.codebase = codebase;
    prepare.resolveCpuAndConcurrency(wantBackend);
    prepare.resolveDefaultTimeout(wantBackend);
    validate.endpointsAreValid(wantBackend, backend.empty());
    wantBackends[codebase] = wantBackend;
    // prepareFunctionsUpload.js packageSource: the files that go into the archive
    const uploadCfg =
      await prepare.stripStaleDartBuildIgnore(wantBuild.runtime, sourceDir, localCfg);
    const ignore = [...(uploadCfg.ignore || ["node_modules", ".git"])];
    ignore.push("firebase-debug.log", "firebase-debug.*.log", CONFIG_DEST_FILE);
    const files = await fsAsync.readdirRecursive({ path: sourceDir, ignoreStrings: ignore });
    const upload = files
      .map((f) => path.relative(sourceDir, f.name).split(path.sep).join("/"))
      .sort();
    codebases.push({
      codebase, source: localCfg.source, runtime: wantBuild.runtime,
      ignore: uploadCfg.ignore || null,
      upload, requiredApis: (wantBuild.requiredAPIs || []).map((a) => a.api),
    });
    for (const ep of backend.allEndpoints(wantBackend).sort(backend.compareFunctions)) {
      endpoints.push({
        name: ep.id, codebase, entryPoint: ep.entryPoint, platform: ep.platform, region: ep.region,
        trigger: backend.endpointTriggerType(ep),
        schedule: ep.scheduleTrigger ? ep.scheduleTrigger.schedule : null,
        timeZone: ep.scheduleTrigger ? ep.scheduleTrigger.timeZone ?? null : null,
        retryConfig: ep.scheduleTrigger ? ep.scheduleTrigger.retryConfig ?? null : null,
        timeoutSeconds: ep.timeoutSeconds ?? null,
        availableMemoryMb: ep.availableMemoryMb ?? null, cpu: ep.cpu ?? null,
        concurrency: ep.concurrency ?? null,
        minInstances: ep.minInstances ?? null, maxInstances: ep.maxInstances ?? null,
      });
    }
  }
  validate.endpointsAreUnique(wantBackends);
  finish({ ok: true, project: projectId, codebases, endpoints });
}

main().catch((err) => finish({ ok: false, error: describe(err) }));
"""


class DiscoverError(Exception):
    """Discovery failed; the message is for the developer. ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def load_codebases(project_dir: Path) -> list[dict[str, Any]]:
    """firebase.json's functions codebases with a local source (the CLI validates the rest)."""
    path = project_dir / "firebase.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DiscoverError(f"cannot read {path}: {exc}", 2) from exc
    functions = config.get("functions")
    if functions is None:
        raise DiscoverError(f'{path} has no "functions" entry: nothing to deploy')
    entries = functions if isinstance(functions, list) else [functions]
    return [e for e in entries if isinstance(e, dict) and e.get("source")]


def python_for(runtime: str | None) -> str:
    """The interpreter the CLI runs for a runtime (python/index.js getPythonBinary)."""
    if not runtime or not runtime.startswith("python3") or not runtime[7:].isdigit():
        raise DiscoverError(f"runtime {runtime!r} in firebase.json is not a python3xx runtime")
    return f"python3.{runtime[7:]}"


def _stamp(requirements: Path, python: str, venv: Path) -> str:
    """What the venv was built from; its activate script also hard-codes where it lives."""
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    facts = {"requirements_sha256": digest, "python": version, "venv": str(venv.resolve())}
    return json.dumps(facts, sort_keys=True)


def ensure_venv(source_dir: Path, runtime: str | None) -> Path:
    """``source_dir/venv`` built from requirements.txt; rebuilt when the stamp is stale."""
    requirements = source_dir / "requirements.txt"
    if not requirements.is_file():
        raise DiscoverError(f"{requirements} is missing: the CLI would not see a Python codebase")
    python_name = python_for(runtime)
    python = shutil.which(python_name)
    if python is None:
        raise DiscoverError(
            f"{python_name} is not on PATH; the Firebase CLI runs {runtime} code with it", 2
        )
    venv = source_dir / VENV_DIR
    # One builder at a time per venv (e.g. two test runs); the lock lives outside the source
    # tree so it never ends up in the upload.
    key = hashlib.sha256(str(venv.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"functions-discover-{key}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = _stamp(requirements, python, venv)
        stamp = venv / STAMP_NAME
        interpreter = venv / "bin" / python_name
        if interpreter.exists() and stamp.is_file() and stamp.read_text() == wanted:
            return venv
        note(f"building {venv} from {requirements.name} with {python_name} (first run or changed)")
        if venv.is_symlink() or venv.is_file():
            venv.unlink()
        elif venv.exists():
            shutil.rmtree(venv)
        steps = [
            [python, "-m", "venv", str(venv)],
            [
                str(interpreter),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                "-r",
                str(requirements),
            ],
        ]
        for step in steps:
            try:
                done = subprocess.run(
                    step, cwd=source_dir, capture_output=True, text=True, timeout=PIP_TIMEOUT_S
                )
            except subprocess.TimeoutExpired as exc:
                raise DiscoverError(
                    f"`{' '.join(step)}` timed out after {PIP_TIMEOUT_S} s"
                ) from exc
            if done.returncode != 0:
                raise DiscoverError(
                    f"`{' '.join(step)}` failed (exit {done.returncode}); a deploy would fail "
                    f"the same way when Cloud Build installs {requirements.name}:\n"
                    + (done.stderr or done.stdout).strip()
                )
        stamp.write_text(wanted)
        return venv


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM first: the CLI's handlers then kill the SDK server's process group."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_driver(project_dir: Path, project: str, firebase_tools: Path, verbose: bool) -> Any:
    node = shutil.which("node")
    if node is None:
        raise DiscoverError("node is not on PATH (the Firebase CLI is a Node program)", 2)
    if not (firebase_tools / "lib" / "deploy" / "functions" / "prepare.js").is_file():
        raise DiscoverError(
            f"firebase-tools not found at {firebase_tools}; install it with "
            "`cd emulator && npm ci` (or `make deps`)",
            2,
        )
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryDirectory(prefix="functions-discover-") as tmp:
        result_file = Path(tmp) / "result.json"
        argv = [node, "-e", DRIVER_JS, str(firebase_tools), str(project_dir), project]
        argv += [str(result_file), "1" if verbose else "0"]
        proc = subprocess.Popen(
            argv,
            cwd=project_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr if verbose else subprocess.DEVNULL,
            stderr=sys.stderr if verbose else subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, stderr = proc.communicate(timeout=DISCOVERY_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            _stop(proc)
            raise DiscoverError(f"discovery did not finish within {DISCOVERY_TIMEOUT_S} s") from exc
        finally:
            if proc.poll() is None:
                _stop(proc)
        if not result_file.is_file():
            raise DiscoverError(
                f"the firebase-tools driver exited with status {proc.returncode} and no result:\n"
                + (stderr or "").strip()
            )
        return json.loads(result_file.read_text())


def report_failure(result: dict[str, Any]) -> str:
    error = result.get("error") or {}
    lines = [
        "discovery failed, as `firebase deploy --only functions` would "
        f"(firebase-tools {result.get('firebaseTools')}):",
        f"  {error.get('message', 'unknown error')}",
    ]
    lines += [f"  - {child}" for child in error.get("children", [])]
    output = [entry["message"] for entry in result.get("log", [])]
    if output:
        lines.append("output of the Firebase Python SDK and the CLI:")
        lines += ["  " + line for chunk in output for line in chunk.splitlines()]
    return "\n".join(lines)


def discover(project_dir: Path, project: str, firebase_tools: Path, verbose: bool) -> Any:
    for codebase in load_codebases(project_dir):
        source_dir = (project_dir / codebase["source"]).resolve()
        if not source_dir.is_dir():
            raise DiscoverError(f"functions source {source_dir} does not exist")
        ensure_venv(source_dir, codebase.get("runtime"))
    result = run_driver(project_dir, project, firebase_tools, verbose)
    if not result.get("ok"):
        raise DiscoverError(report_failure(result))
    if not result["endpoints"]:
        sources = ", ".join(c["source"] for c in result["codebases"])
        raise DiscoverError(
            f"no functions discovered in {sources}: main.py defines no decorated function, so "
            "a deploy would deploy nothing (and offer to delete the deployed functions)"
        )
    # The CLI's own warnings (deprecated runtime, timeout past Cloud Scheduler's deadline, ...);
    # the SDK server's stderr arrives as "error" and is only shown when discovery fails.
    result["warnings"] = [e["message"] for e in result.pop("log") if e["level"] == "warn"]
    del result["ok"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=ROOT,
        help="directory holding firebase.json (default: the repository)",
    )
    parser.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        help=f"project id handed to the code as GCLOUD_PROJECT (default: {DEFAULT_PROJECT})",
    )
    parser.add_argument(
        "--firebase-tools",
        type=Path,
        default=FIREBASE_TOOLS,
        help="firebase-tools package directory (default: emulator/node_modules/firebase-tools)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="stream the CLI's debug log to stderr"
    )
    args = parser.parse_args(argv)
    try:
        result = discover(
            args.project_dir.resolve(), args.project, args.firebase_tools.resolve(), args.verbose
        )
    except DiscoverError as exc:
        note(str(exc))
        return exc.code
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
