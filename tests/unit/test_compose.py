"""emulator.compose: the container stack's teardown survives an engine slow to answer."""

from __future__ import annotations

import pytest

from emulator import compose
from emulator.exceptions import StartupError


class FlakyCompose:
    """Stands in for one docker-compose call; fails its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, project: str, environment: object, *args: str) -> None:
        self.calls.append(args)
        if len(self.calls) <= self.failures:
            raise StartupError("Read timed out. (read timeout=60)")


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compose.time, "sleep", lambda _s: None)


def test_a_teardown_the_engine_was_slow_to_answer_is_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two timed-out downs followed by one that answers is a clean teardown."""
    flaky = FlakyCompose(failures=2)
    monkeypatch.setattr(compose, "compose", flaky)
    compose.compose_down("p", {})
    assert len(flaky.calls) == 3 and all(call[0] == "down" for call in flaky.calls)


def test_a_teardown_that_never_answers_fails_after_its_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A down failing every attempt is reported, not swallowed."""
    flaky = FlakyCompose(failures=99)
    monkeypatch.setattr(compose, "compose", flaky)
    with pytest.raises(StartupError):
        compose.compose_down("p", {})
    assert len(flaky.calls) == compose.DOWN_ATTEMPTS


def test_compose_waits_longer_for_the_engine_than_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docker-compose is given more than its default 60 s per answer, unless the caller set one."""
    monkeypatch.delenv("COMPOSE_HTTP_TIMEOUT", raising=False)
    ports = dict.fromkeys(("firestore", "auth", "pubsub", "functions", "gateway"), 1)
    assert int(compose.compose_env({}, ports)["COMPOSE_HTTP_TIMEOUT"]) > 60
    monkeypatch.setenv("COMPOSE_HTTP_TIMEOUT", "90")
    assert compose.compose_env({}, ports)["COMPOSE_HTTP_TIMEOUT"] == "90"
