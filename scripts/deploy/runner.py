"""Running the plan's steps, or printing them (``--dry-run``).

Both go through the same ``fill``: a real run substitutes the outputs the commands printed, a
dry run the steps' stand-ins, so the printed commands are the ones a run would execute except
for those values.
"""

from __future__ import annotations

import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from scripts.deploy.settings import ROOT
from scripts.deploy.steps import Step

#: The firebase-tools pinned in emulator/package.json, the one the tests run.
FIREBASE = ROOT / "emulator" / "node_modules" / ".bin" / "firebase"
RETRY_PAUSE_S = 10.0
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_WIDTH = 96


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str = ""
    stderr: str = ""


#: Runs argv with the given stdin; with capture, returns its output instead of showing it.
Executor = Callable[[tuple[str, ...], str | None, bool], Result]


class StepFailed(RuntimeError):
    """A step whose command (and fallback) failed; the run stops there."""


def fill(command: Iterable[str], outputs: dict[str, str]) -> tuple[str, ...]:
    """The command with each ``{name}`` replaced by the output of that name."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in outputs:
            raise StepFailed(f"{{{name}}} is used before a step has produced it")
        return outputs[name]

    return tuple(_PLACEHOLDER.sub(value, word) for word in command)


def run(
    steps: list[Step],
    execute: Executor,
    say: Callable[[str], None] = print,
    new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    pause: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Execute the steps in order; return the outputs. Raise StepFailed at the first failure."""
    outputs: dict[str, str] = {}
    for number, step in enumerate(steps, 1):
        say(f"[{number}/{len(steps)}] {step.title}")
        command = fill(step.command, outputs)
        # A probe (describe, update) that fails is expected: its error is not shown unless
        # the fallback fails too.
        quiet = bool(step.otherwise or step.output)
        for attempt in range(1, step.attempts + 1):
            say("$ " + shlex.join(command))
            result = execute(command, None, quiet)
            if result.returncode == 0 or attempt == step.attempts:
                break
            say(f"  failed; trying again in {RETRY_PAUSE_S * attempt:g} s")
            pause(RETRY_PAUSE_S * attempt)
        if result.returncode != 0 and step.otherwise:
            probe = result
            fallback = fill(step.otherwise, outputs)
            say("$ " + shlex.join(fallback) + ("  < a new random token" if step.new_secret else ""))
            result = execute(fallback, new_token() if step.new_secret else None, False)
            if result.returncode != 0:
                both = "\n".join(e.strip() for e in (probe.stderr, result.stderr) if e.strip())
                result = Result(result.returncode, result.stdout, both)
        if result.returncode != 0:
            detail = result.stderr.strip()[-2000:]
            raise StepFailed(
                f"step {number} ({step.title}) failed with exit status {result.returncode}"
                + (f":\n{detail}" if detail else "")
            )
        if step.output:
            value = result.stdout.strip()
            if not value:
                raise StepFailed(f"step {number} ({step.title}) printed nothing")
            outputs[step.output] = value
            say(f"  {{{step.output}}} = {value}")
    return outputs


def _wrapped(words: tuple[str, ...], indent: str = "    ") -> str:
    """Shell words as lines of at most _WIDTH characters, joined with backslashes."""
    lines = [""]
    for word in map(shlex.quote, words):
        if lines[-1] and len(lines[-1]) + 1 + len(word) > _WIDTH:
            lines.append(indent)
        lines[-1] += ("" if lines[-1].strip() == "" else " ") + word
    return " \\\n".join(lines)


def render(steps: list[Step], heading: str) -> str:
    """The dry run: every command, values resolved, outputs shown as their stand-ins."""
    stand_ins = {step.output: step.stand_in for step in steps if step.output}
    out = [
        heading,
        "# Nothing is run. Values in <angle brackets> stand in for outputs known only once the",
        "# commands before them have run:",
        *(f"#   {{{name}}} = {value}" for name, value in stand_ins.items()),
        "# 'a || b' runs b only when a fails (describe || create, update || create).",
        "# firebase is the firebase-tools pinned in emulator/package.json",
        f"# ({FIREBASE.relative_to(ROOT)}).",
    ]
    for number, step in enumerate(steps, 1):
        note = f" -> {{{step.output}}}" if step.output else ""
        if step.attempts > 1:
            note += f" (tried up to {step.attempts} times)"
        out += ["", f"# {number}. {step.title}{note}", _wrapped(fill(step.command, stand_ins))]
        if step.otherwise:
            out[-1] += " \\\n  || " + _wrapped(fill(step.otherwise, stand_ins))
            if step.new_secret:
                out[-1] += "  # stdin: a new random token, made at run time, never printed"
    return "\n".join(out)


def program(name: str) -> str | None:
    """Where a command's program is: the pinned firebase-tools, else the PATH."""
    if name == "firebase" and FIREBASE.exists():
        return str(FIREBASE)
    return shutil.which(name)


def local(argv: tuple[str, ...], stdin: str | None, capture: bool) -> Result:
    """The real executor: the command in the repository root (firebase.json, functions/)."""
    found = program(argv[0])
    if found is None:
        raise StepFailed(f"{argv[0]} is not installed")
    done = subprocess.run(
        [found, *argv[1:]],
        cwd=ROOT,
        input=stdin,
        # No stdin at all otherwise: a command that would prompt fails instead of waiting.
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=capture,
        text=True,
        check=False,
    )
    return Result(done.returncode, done.stdout or "", done.stderr or "")
