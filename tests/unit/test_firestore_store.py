"""FirestoreStore's guard on the private client API its commit uses (the commit itself is proven
against the emulator in tests/integration)."""

from __future__ import annotations

import pytest

from gateway.storage.firestore_store import FirestoreStore


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
