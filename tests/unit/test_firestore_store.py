"""FirestoreStore's guard on the private client API its commit uses (the commit itself is proven
against the emulator in tests/integration)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.firestore_store import FirestoreStore


class ClientWithoutPrivateApi:
    """A stand-in for a future google-cloud-firestore AsyncClient that dropped its private
    members; only its type's attributes are looked at."""

    _database_string = "projects/p/databases/(default)"

    def __init__(self, project: str) -> None:
        self.project = project


def test_a_client_without_the_private_commit_api_stops_the_store_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Building the store fails at once, naming each missing member, instead of every flush
    failing later while pongs pile up."""
    from google.cloud import firestore

    monkeypatch.setattr(firestore, "AsyncClient", ClientWithoutPrivateApi)
    with pytest.raises(ImportError, match="lacks _firestore_api, _rpc_metadata") as raised:
        FirestoreStore("demo-guard")
    message = str(raised.value)
    assert "google-cloud-firestore" in message and "commit_with_batch" in message


@pytest.mark.parametrize(
    "fields",
    [
        {"last_pong_at": datetime(2026, 12, 3, 12, 0, 0, 123456, UTC)},
        {"a": datetime(2026, 1, 1, tzinfo=UTC), "b": datetime(2026, 1, 1, tzinfo=UTC), "c": "x"},
        {"a": datetime(2026, 1, 1, tzinfo=UTC), "b": datetime(2025, 6, 1, 1, 2, 3, 4, UTC)},
        {"weird key.with`dots": "v"},
    ],
)
def test_the_flat_fast_path_encodes_exactly_what_the_general_one_does(
    fields: dict[str, object],
) -> None:
    """Pong writes (timestamps and strings only) skip the general encoder; the bytes match."""
    from gateway.firestore_store import _encode_flat, _encode_merge, _raw_types

    general, flat = _raw_types().Write(), _raw_types().Write()
    _encode_merge(fields, (), general.update.fields, general.update_mask.field_paths)
    assert _encode_flat(fields, flat.update.fields, flat.update_mask.field_paths)
    assert flat.SerializeToString(deterministic=True) == general.SerializeToString(
        deterministic=True
    )


@pytest.mark.parametrize("fields", [{"a": {"b": "c"}}, {"a": 1}, {"a": None}, {"a": True}])
def test_anything_else_takes_the_general_encoder(fields: dict[str, object]) -> None:
    from gateway.firestore_store import _encode_flat, _raw_types

    untouched = _raw_types().Write()
    assert not _encode_flat(fields, untouched.update.fields, untouched.update_mask.field_paths)
    assert untouched == _raw_types().Write()
