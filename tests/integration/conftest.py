"""Fixtures shared by the integration tests against the emulators."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from gateway.storage.firestore_store import FirestoreStore


@pytest.fixture
async def store(firestore_host: str, project_id: str) -> AsyncIterator[FirestoreStore]:
    """The gateway's Firestore store on the session's emulator and project."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    backend = FirestoreStore(project_id)
    yield backend
    await backend.close()
