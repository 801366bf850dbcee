"""Who may call ``/internal/timeout``: a shared secret, or on Google Cloud an OIDC ID token.

On Cloud Run the sweep function calls the gateway with a Google-signed ID token for its
service account (``google.oauth2.id_token.fetch_id_token`` with the gateway's URL as
audience). The gateway verifies the signature against Google's published certificates, the
audience, the issuer, and that the token's ``email`` is one of the configured service accounts.
Locally (and wherever OIDC is not configured) the shared ``GATEWAY_CALLBACK_TOKEN`` is used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from typing import Any

logger = logging.getLogger("gateway.web.callback_auth")

GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
CERTS_TTL = 3600.0
REFETCH_AFTER = 60.0  # an unknown key id may mean Google rotated keys: refetch, at most this often


class OidcVerifier:
    def __init__(self, audience: str, service_accounts: tuple[str, ...], certs_url: str) -> None:
        self.audience = audience
        self.service_accounts = frozenset(service_accounts)
        self.certs_url = certs_url
        self._certs: dict[str, str] = {}
        self._fetched_at = -CERTS_TTL

    async def verify(self, token: str) -> str | None:
        """The caller's service account when the token is acceptable, else None."""
        return await asyncio.to_thread(self._verify, token)

    def _verify(self, token: str) -> str | None:
        from google.auth import exceptions, jwt

        try:
            header = jwt.decode_header(token)  # type: ignore[no-untyped-call]
        except (ValueError, exceptions.GoogleAuthError):
            return None
        certs = self._certificates(str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(  # type: ignore[no-untyped-call]
                token, certs=certs, audience=self.audience, clock_skew_in_seconds=10
            )
        except (ValueError, exceptions.GoogleAuthError) as exc:
            logger.info("callback OIDC token refused: %s", exc)
            return None
        email = claims.get("email")
        if claims.get("iss") not in GOOGLE_ISSUERS or claims.get("email_verified") is not True:
            return None
        return email if email in self.service_accounts else None

    def _certificates(self, kid: str) -> dict[str, str]:
        age = time.monotonic() - self._fetched_at
        if age > CERTS_TTL or (kid not in self._certs and age > REFETCH_AFTER):
            try:
                with urllib.request.urlopen(self.certs_url, timeout=5) as response:
                    self._certs = json.loads(response.read())
                self._fetched_at = time.monotonic()
            except (OSError, ValueError) as exc:
                logger.error("cannot fetch OIDC certificates from %s: %s", self.certs_url, exc)
        return self._certs
