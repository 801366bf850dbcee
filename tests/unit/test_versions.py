"""gateway.edge.versions: the one start-up check of every library whose internals the gateway uses,
held to the lock the images install, and ``python -m gateway`` refusing an untested release."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import gateway.serving as entry
from gateway.edge import versions
from gateway.edge.versions import (
    ALLOW_UNTESTED,
    LIBRARIES,
    Library,
    Member,
    Problem,
    check_versions,
    has_member,
    refusal,
    refused,
)
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BY_NAME = {library.name: library for library in LIBRARIES}


def locked_versions(lock: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", lock.read_text(), re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def a_tested_release(name: str) -> str:
    return BY_NAME[name].tested + "9"


def versions_but(**wrong: str | None) -> dict[str, str | None]:
    """A tested release of every library, except those given (a keyword per library, dashes
    as underscores)."""
    found: dict[str, str | None] = {name: a_tested_release(name) for name in BY_NAME}
    found.update({name.replace("_", "-"): version for name, version in wrong.items()})
    return found


def everything_present(member: Member) -> bool:
    return True


def test_the_table_covers_every_library_whose_internals_the_gateway_uses() -> None:
    assert set(BY_NAME) == {"uvicorn", "httptools", "wsproto", "google-cloud-firestore"}


@pytest.mark.parametrize("lock", ["requirements/gateway.txt", "requirements/dev.txt"])
def test_every_library_in_the_table_is_locked_at_a_release_it_accepts(lock: str) -> None:
    """The tested prefixes are the locked releases: the image (gateway.txt) and the tests
    (dev.txt) run exactly what the check lets start."""
    pinned = locked_versions(ROOT / lock)
    for library in LIBRARIES:
        assert library.name in pinned, f"{library.name} is not in {lock}"
        assert pinned[library.name].startswith(library.tested), (
            f"{lock} pins {library.name} {pinned[library.name]}; the table accepts "
            f"{library.tested}x"
        )


@pytest.mark.parametrize("implementation", ["wsproto", "websockets-sansio", "websockets"])
def test_the_installed_libraries_pass(implementation: str) -> None:
    assert check_versions(implementation) == []


def test_every_member_in_the_table_exists_in_the_installed_release() -> None:
    """Also what keeps the table free of typos: each member is found where it says."""
    missing = [f"{m.module}.{m}" for lib in LIBRARIES for m in lib.members if not has_member(m)]
    assert not missing


def test_has_member_sees_attributes_that_init_sets_and_nothing_else() -> None:
    assert has_member(Member("wsproto.connection", "Connection", "_proto", in_init=True))
    # On the class, an instance attribute is invisible: hence in_init.
    assert not has_member(Member("wsproto.connection", "Connection", "_proto"))
    assert not has_member(Member("wsproto.connection", "Connection", "_gone", in_init=True))
    assert not has_member(Member("wsproto.connection", "NoSuchClass", "x"))
    assert not has_member(Member("no_such_module_here", "Connection", "x"))


def test_an_untested_release_is_named_with_installed_and_tested_versions() -> None:
    """The check reads every version; each one off its tested prefix is named, with the
    installed and the tested release."""
    found = versions_but(uvicorn="0.55.0", wsproto="1.4.0", google_cloud_firestore="2.35.0")
    problems = check_versions("wsproto", found.get, everything_present)
    assert [str(p) for p in problems] == [
        "uvicorn 0.55.0 (tested with 0.54.x)",
        "wsproto 1.4.0 (tested with 1.3.x)",
        "google-cloud-firestore 2.35.0 (tested with 2.34.x)",
    ]
    assert all(p.overridable for p in problems)


def test_a_missing_library_is_named() -> None:
    [problem] = check_versions("wsproto", versions_but(httptools=None).get, everything_present)
    assert str(problem) == "httptools is not installed (tested with 0.9.x)"
    assert not problem.overridable


def test_a_changed_internal_is_caught_under_a_matching_version() -> None:
    def without_proto(member: Member) -> bool:
        return member.attribute not in {"_proto", "_rpc_metadata"}

    problems = check_versions("wsproto", versions_but().get, without_proto)
    assert [str(p) for p in problems] == [
        "wsproto 1.3.9 lacks Connection._proto (tested with 1.3.x)",
        "google-cloud-firestore 2.34.9 lacks AsyncClient._rpc_metadata (tested with 2.34.x)",
    ]
    assert not any(p.overridable for p in problems)


def test_another_socket_implementation_needs_none_of_the_lean_protocols_internals() -> None:
    """wsproto and uvicorn's WSProtocol are the lean protocol's alone; uvicorn's
    HttpToolsProtocol (the bounded handshake) and Firestore's client are used whatever the
    implementation."""

    def only_http_protocol_gone(member: Member) -> bool:
        return member.owner not in {"WSProtocol", "Connection", "HttpToolsProtocol"}

    found = versions_but(wsproto="1.4.0").get
    problems = check_versions("websockets-sansio", found, only_http_protocol_gone)
    assert {p.member.owner for p in problems if p.member} == {"HttpToolsProtocol"}
    assert all(p.library.name == "uvicorn" for p in problems)


def test_the_override_lets_named_untested_releases_through_and_never_a_missing_member() -> None:
    untested = Problem(BY_NAME["uvicorn"], "0.55.0")
    gone = Problem(BY_NAME["uvicorn"], "0.54.0", BY_NAME["uvicorn"].members[0])
    other = Problem(BY_NAME["google-cloud-firestore"], "2.35.0")
    problems = [untested, gone, other]
    assert refused(problems, {}) == problems
    assert refused(problems, {ALLOW_UNTESTED: " Uvicorn , httptools"}) == [gone, other]
    assert refused(problems, {ALLOW_UNTESTED: "uvicorn,google-cloud-firestore"}) == [gone]


def test_the_refusal_names_the_variable_that_gets_the_gateway_started() -> None:
    wsproto = BY_NAME["wsproto"]
    variable, message = refusal([Problem(wsproto, "1.4.0")])
    assert variable == "WS_IMPLEMENTATION"
    assert "wsproto 1.4.0 (tested with 1.3.x)" in message
    assert "WS_IMPLEMENTATION=websockets-sansio" in message
    assert f"{ALLOW_UNTESTED}=wsproto" in message

    variable, message = refusal([Problem(BY_NAME["httptools"], "0.10.0")])
    assert variable == ALLOW_UNTESTED
    assert f"{ALLOW_UNTESTED}=httptools" in message and "WS_IMPLEMENTATION" not in message

    firestore = BY_NAME["google-cloud-firestore"]
    variable, message = refusal([Problem(firestore, "2.34.1", firestore.members[0])])
    assert "lacks AsyncClient._firestore_api" in message
    assert f"set {ALLOW_UNTESTED}" not in message, "a missing member cannot be overridden"


def _start_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in {
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:1",
        "GATEWAY_ADMIN_TOKEN": "a" * 32,
        **env,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("WS_IMPLEMENTATION", ALLOW_UNTESTED):
        if name not in env:
            monkeypatch.delenv(name, raising=False)


def _installed(monkeypatch: pytest.MonkeyPatch, **wrong: str | None) -> None:
    monkeypatch.setattr(versions, "installed_version", versions_but(**wrong).get)


def test_the_gateway_exits_at_start_on_an_untested_uvicorn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever WS_IMPLEMENTATION: the bounded handshake uses uvicorn's internals too."""
    _start_env(monkeypatch, WS_IMPLEMENTATION="websockets-sansio")
    _installed(monkeypatch, uvicorn="0.99.0")
    assert entry.main() == 2
    error = capsys.readouterr().err
    assert f"configuration error: {ALLOW_UNTESTED}:" in error
    assert "uvicorn 0.99.0 (tested with 0.54.x)" in error


def test_an_untested_wsproto_names_ws_implementation_as_before(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _start_env(monkeypatch)
    _installed(monkeypatch, wsproto="1.4.0")
    assert entry.main() == 2
    error = capsys.readouterr().err
    assert "configuration error: WS_IMPLEMENTATION:" in error
    assert "wsproto 1.4.0 (tested with 1.3.x)" in error
    # The other implementation does not run the lean protocol: no refusal.
    monkeypatch.setenv("WS_IMPLEMENTATION", "websockets-sansio")
    assert entry.check_libraries(Settings.from_env()) == []


def test_the_override_starts_with_a_warning_naming_the_library(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _start_env(monkeypatch, **{ALLOW_UNTESTED: "google-cloud-firestore"})
    _installed(monkeypatch, google_cloud_firestore="2.35.0")
    allowed = entry.check_libraries(Settings.from_env())
    assert [str(p) for p in allowed] == ["google-cloud-firestore 2.35.0 (tested with 2.34.x)"]
    with caplog.at_level(logging.WARNING, logger="gateway"):
        entry.warn_of_untested(allowed)
    [record] = caplog.records
    assert "UNTESTED LIBRARY" in record.getMessage()
    assert "google-cloud-firestore 2.35.0 (tested with 2.34.x)" in record.getMessage()


def test_a_library_entry_is_plain_data() -> None:
    """The table is declarations only: adding a library is one entry, nothing else."""
    extra = Library("example", "1.", "nothing")
    assert check_versions("wsproto", {"example": "1.2"}.get, everything_present, [extra]) == []
    assert [str(p) for p in check_versions("wsproto", {"example": "2.0"}.get, None, [extra])] == [
        "example 2.0 (tested with 1.x)"
    ]
