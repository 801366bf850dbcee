"""Token extraction and the admission decision, without Firebase; the verifier's batching with
emulator-style (unsigned, locally checked) tokens."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.exceptions import AuthError, ConfigError
from gateway.instance.auth import Identity, authorize, token_from
from gateway.protocol.closes import CloseCode
from gateway.settings import Settings
from gateway.storage.schema import IS_SIGNED_IN, LAST_SIGN_OUT_AT

SIGNED_IN = datetime(2026, 1, 1, 12, tzinfo=UTC)


def identity(uid: str = "u1") -> Identity:
    return Identity(uid=uid, auth_time=SIGNED_IN, expires_at=0)


def test_query_token_wins_over_the_header() -> None:
    """Browsers send ?token=; other clients may send Authorization: Bearer."""
    assert token_from(b"token=abc&x=1", {b"authorization": b"Bearer zzz"}) == "abc"
    assert token_from(b"", {b"authorization": b"Bearer zzz"}) == "zzz"
    assert token_from(b"", {b"authorization": b"Basic zzz"}) is None
    assert token_from(b"other=1", {}) is None


def test_the_token_must_be_for_the_paths_user() -> None:
    """A valid token for another uid is refused with 4403."""
    with pytest.raises(AuthError) as caught:
        authorize(identity("u2"), "u1", None)
    assert caught.value.close_code == CloseCode.FORBIDDEN


def test_a_token_from_before_the_last_sign_out_is_refused() -> None:
    """auth_time before members/{uid}.last_sign_out_at means the sign-in was revoked."""
    with pytest.raises(AuthError) as caught:
        authorize(identity(), "u1", {LAST_SIGN_OUT_AT: SIGNED_IN + timedelta(seconds=1)})
    assert caught.value.close_code == CloseCode.UNAUTHENTICATED
    authorize(identity(), "u1", {LAST_SIGN_OUT_AT: SIGNED_IN - timedelta(seconds=1)})
    authorize(identity(), "u1", {IS_SIGNED_IN: True})
    authorize(identity(), "u1", None)


def test_auth_can_only_be_switched_off_against_the_emulators() -> None:
    """AUTH_MODE=off is refused unless FIRESTORE_EMULATOR_HOST is set."""
    base = {"GATEWAY_ADMIN_TOKEN": "t" * 20, "GOOGLE_CLOUD_PROJECT": "prod"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**base, "AUTH_MODE": "off"})
    assert caught.value.name == "AUTH_MODE"
    assert Settings.from_env(base).auth.required
    # An emulator needs an emulator-only (demo-) project.
    emulated = {
        **base,
        "GOOGLE_CLOUD_PROJECT": "demo-prod",
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080",
        "AUTH_MODE": "off",
    }
    assert not Settings.from_env(emulated).auth.required


async def test_tokens_of_connects_waiting_at_once_are_verified_in_one_trip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A storm's tokens go to the worker thread together (one trip for all of them), and each
    connect still gets its own outcome: valid, malformed, expired, or a duplicate."""
    import time
    import uuid

    from gateway.instance.auth import FirebaseVerifier
    from tests.support import unsigned_token

    # Emulator tokens are unsigned and checked locally: no network in this test.
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9")
    project = f"demo-unit-{uuid.uuid4().hex[:6]}"
    verifier = FirebaseVerifier(project)
    good = [unsigned_token(project, f"u{i}") for i in range(40)]
    expired = unsigned_token(project, "old", exp=int(time.time()) - 600, iat=1, auth_time=1)
    tokens = [*good, "not-a-jwt", expired, good[0]]
    outcomes = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert [o.uid for o in outcomes[:40] if isinstance(o, Identity)] == [f"u{i}" for i in range(40)]
    assert isinstance(outcomes[42], Identity) and outcomes[42].uid == "u0"
    for refused in outcomes[40:42]:
        assert isinstance(refused, AuthError) and refused.close_code == CloseCode.UNAUTHENTICATED
    assert verifier._batches.batches == 1


@pytest.mark.parametrize(
    "times",
    [
        {"exp": 2**64, "auth_time": 1},
        {"exp": 2**53, "auth_time": 1},
        {"exp": float("inf"), "auth_time": 1},
        {"exp": 4_000_000_000, "auth_time": 10**30},
        {"exp": 4_000_000_000, "auth_time": 2**63},
        {"exp": "soon", "auth_time": 1},
    ],
    ids=["exp-2^64", "exp-2^53", "exp-inf", "auth_time-10^30", "auth_time-2^63", "exp-text"],
)
def test_claims_with_times_no_date_can_hold_are_an_invalid_token(times: dict[str, Any]) -> None:
    """An exp or auth_time beyond any date (possible in the Auth emulator's unsigned tokens)
    refuses the token with 4401 instead of failing the socket later with 1011."""
    from gateway.instance.auth import identity_from

    with pytest.raises(AuthError) as caught:
        identity_from({"uid": "u", **times})
    assert caught.value.close_code == CloseCode.UNAUTHENTICATED
