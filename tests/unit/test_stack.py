"""``make up``'s launcher (emulator.stack, emulator.procs) before and after it starts anything:
every component's settings are checked first, and a failed child shows this run's log lines."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from emulator import procs, stack

PORTS = {"firestore": 8080, "auth": 9099, "pubsub": 8085, "functions": 8090}


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("PING_INTERVAL", "0", "gateway: PING_INTERVAL"),
        ("GATEWAY_PORT", "99999", "gateway: GATEWAY_PORT"),
        ("GATEWAY_PORT", "http", "gateway: GATEWAY_PORT"),
        ("PONG_TIMEOUT", "-5", "gateway: PONG_TIMEOUT"),
        ("PRESENCE_GRACE", "forever", "gateway: PRESENCE_GRACE"),
    ],
)
def test_a_bad_setting_is_named_before_anything_starts(
    variable: str, value: str, named: str
) -> None:
    """The gateway's check runs on the stack's environment and names the variable."""
    environ = {variable: value}
    problem = stack.check_settings(environ, stack.stack_env(environ, PORTS))
    assert problem is not None and problem.startswith(named), problem


def test_the_stacks_own_settings_pass_both_checks() -> None:
    """The defaults make up starts with are valid for the gateway and the sweep."""
    assert stack.check_settings({}, stack.stack_env({}, PORTS)) is None


def test_up_refuses_a_bad_setting_without_starting_a_child(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``GATEWAY_PORT=99999`` ends in one line naming it, exit status 1, no traceback."""
    assert stack.up({"GATEWAY_PORT": "99999"}) == 1
    assert capsys.readouterr().err.strip() == (
        "error: gateway: GATEWAY_PORT: must be a TCP port, got 99999"
    )


def test_a_childs_log_tail_is_this_runs_lines_only(tmp_path: Path) -> None:
    """A log that earlier runs appended to shows only what this run wrote."""
    log = tmp_path / "child.log"
    log.write_text("old run: the error you fixed yesterday\n" * 14)
    child = procs.Process(
        "child", [sys.executable, "-c", "print('this run')"], "", log, cwd=tmp_path
    )
    child.start()
    assert child.popen is not None and child.popen.wait(10) == 0
    assert child.log_tail() == "this run"


def test_the_env_file_lives_as_long_as_the_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``.run/stack.env`` exists while the stack runs and is gone once it stopped: its
    tokens describe that stack only."""
    env_file = tmp_path / "stack.env"
    seen: list[bool] = []

    def running(env: object, ports: object, banner: str) -> int:
        seen.append(env_file.exists())
        return 0

    monkeypatch.setattr(stack, "ENV_FILE", env_file)
    monkeypatch.setattr(stack.compose, "up", running)
    assert stack.up({}, in_containers=True) == 0
    assert seen == [True] and not env_file.exists()


def test_make_token_with_the_stack_down_says_to_run_make_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing listening at the Auth emulator's address: the error names ``make up``."""
    from emulator import token
    from emulator.exceptions import EmulatorError

    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", f"127.0.0.1:{procs.free_port()}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-token-test")
    with pytest.raises(EmulatorError, match="make up"):
        token.id_token("someone")
