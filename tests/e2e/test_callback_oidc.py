"""The sweep's callback authenticated by a Google-signed OIDC ID token (Cloud Run's way),
verified against certificates the test publishes from a key it generates."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.support import GatewayProc, TokenMinter, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]

AUDIENCE = "https://gateway.example.run.app"
SWEEPER = "sweeper@demo-presence.iam.gserviceaccount.com"
BODY = {"sessions": [{"user_id": "u", "session_id": "s"}]}


def keypair(name: str) -> tuple[bytes, str]:
    """A private key (PEM) and a self-signed certificate (PEM) for it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private, cert.public_bytes(serialization.Encoding.PEM).decode()


GOOD_KEY, GOOD_CERT = keypair("google")
ROGUE_KEY, _ = keypair("rogue")


def id_token(key: bytes = GOOD_KEY, kid: str = "k1", **claims: Any) -> str:
    from google.auth import crypt, jwt

    now = int(time.time())
    payload = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "email": SWEEPER,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
        "sub": "1234567890",
        **claims,
    }
    signer = crypt.RSASigner.from_string(key, key_id=kid)
    return jwt.encode(signer, payload).decode()


@pytest.fixture(scope="module")
def certs_url() -> Iterator[str]:
    body = json.dumps({"k1": GOOD_CERT}).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def oidc_gateway(
    firestore_host: str, project_id: str, minter: TokenMinter, certs_url: str
) -> Iterator[GatewayProc]:
    proc = start_gateway(
        firestore_host,
        project_id,
        minter,
        CALLBACK_OIDC_AUDIENCE=AUDIENCE,
        CALLBACK_OIDC_SERVICE_ACCOUNTS=f"other@x.iam.gserviceaccount.com,{SWEEPER}",
        CALLBACK_OIDC_CERTS_URL=certs_url,
    )
    yield proc
    proc.stop()


@pytest.mark.parametrize(
    ("make_token", "status"),
    [
        (lambda: id_token(), 200),
        (lambda: id_token(aud="https://someone-else.run.app"), 401),
        (lambda: id_token(email="intruder@x.iam.gserviceaccount.com"), 401),
        (lambda: id_token(email_verified=False), 401),
        (lambda: id_token(iss="https://evil.example"), 401),
        (lambda: id_token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), 401),
        (lambda: id_token(key=ROGUE_KEY), 401),
        (lambda: id_token(key=ROGUE_KEY, kid="unknown"), 401),
        (lambda: "not.a.jwt", 401),
    ],
    ids=[
        "valid",
        "wrong-audience",
        "other-account",
        "unverified-email",
        "wrong-issuer",
        "expired",
        "forged-signature",
        "unknown-key",
        "garbage",
    ],
)
async def test_callback_accepts_only_google_signed_tokens_for_the_sweeper(
    oidc_gateway: GatewayProc, make_token: Any, status: int
) -> None:
    """Signature, audience, issuer, expiry and service account are all checked."""
    async with httpx.AsyncClient(base_url=oidc_gateway.http) as http:
        response = await http.post(
            "/internal/timeout",
            json=BODY,
            headers={"Authorization": f"Bearer {make_token()}"},
        )
    assert response.status_code == status
    if status == 200:
        assert response.json() == {"status": "success", "closed": 0, "not_found": 1}


async def test_the_admin_token_never_opens_the_callback(oidc_gateway: GatewayProc) -> None:
    async with httpx.AsyncClient(base_url=oidc_gateway.http) as http:
        response = await http.post("/internal/timeout", json=BODY, headers=oidc_gateway.auth)
    assert response.status_code == 401
