from __future__ import annotations

import secrets

import pytest


@pytest.fixture(scope="module")
def callback_token() -> str:
    """The sweep's callback credential, shared by the module's gateway and sweep."""
    return secrets.token_urlsafe(24)
