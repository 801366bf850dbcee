"""The files the gateway serves to browsers: the JavaScript client (always) and the demo page
(only with DEMO_DIR, against the emulators)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from emulator.stack import DEMO_DIR
from tests.support import GatewayProc, TokenMinter, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js" / "presence-client.js"


@pytest.fixture(scope="module")
def demo_gateway(
    firestore_host: str, project_id: str, minter: TokenMinter
) -> Iterator[GatewayProc]:
    assert (DEMO_DIR / "index.html").exists(), "build the demo first: make demo"
    proc = start_gateway(firestore_host, project_id, minter, DEMO_DIR=str(DEMO_DIR))
    yield proc
    proc.stop()


async def test_the_client_is_served_cacheable_and_versioned(gateway: GatewayProc) -> None:
    """/client.js is the module itself with a short cache and an ETag (304 when unchanged);
    the versioned path is immutable; another version is 404."""
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        latest = await http.get("/client.js")
        assert latest.status_code == 200
        assert latest.content == CLIENT.read_bytes()
        assert latest.headers["content-type"].startswith("text/javascript")
        assert latest.headers["cache-control"] == "public, max-age=300"
        version = latest.headers["x-client-version"]
        assert f'VERSION = "{version}"' in latest.text
        again = await http.get("/client.js", headers={"If-None-Match": latest.headers["etag"]})
        assert (again.status_code, again.content) == (304, b"")
        pinned = await http.get(f"/client/{version}/presence-client.js")
        assert pinned.status_code == 200 and pinned.content == latest.content
        assert pinned.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert (await http.get("/client/0.0.0-old/presence-client.js")).status_code == 404
        types = await http.get("/client.d.ts")
        assert types.status_code == 200 and b"PresenceClient" in types.content


async def test_each_client_route_names_its_content_type_once(gateway: GatewayProc) -> None:
    """The client's routes send exactly one media type with exactly one charset."""
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        version = (await http.get("/client.js")).headers["x-client-version"]
        for path, expected in (
            ("/client.js", "text/javascript; charset=utf-8"),
            (f"/client/{version}/presence-client.js", "text/javascript; charset=utf-8"),
            ("/client.d.ts", "text/plain; charset=utf-8"),
        ):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert response.headers.get_list("content-type") == [expected], path


async def test_without_demo_dir_there_is_no_demo(gateway: GatewayProc) -> None:
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        page = await http.get("/demo")
    assert page.status_code == 404
    assert "DEMO_DIR" in page.json()["message"]


async def test_the_demo_page_and_its_config(demo_gateway: GatewayProc, project_id: str) -> None:
    """With DEMO_DIR the page, its bundle and its config (project, Auth and Firestore
    emulators) are served."""
    async with httpx.AsyncClient(base_url=demo_gateway.http) as http:
        page = await http.get("/demo")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert b"/demo/demo.js" in page.content
        bundle = await http.get("/demo/demo.js")
        assert bundle.status_code == 200 and len(bundle.content) > 10_000
        config = (await http.get("/demo/config.json")).json()
        assert config == {
            "projectId": project_id,
            "authEmulatorHost": demo_gateway.env["FIREBASE_AUTH_EMULATOR_HOST"],
            "firestoreEmulatorHost": demo_gateway.env["FIRESTORE_EMULATOR_HOST"],
        }
        assert (await http.get("/demo/secrets.txt")).status_code == 404


async def test_each_demo_route_names_its_content_type_once(demo_gateway: GatewayProc) -> None:
    """The demo's page, bundle, style sheet, licences and config each send exactly one
    media type, text ones with exactly one charset."""
    async with httpx.AsyncClient(base_url=demo_gateway.http) as http:
        for path, expected in (
            ("/demo", "text/html; charset=utf-8"),
            ("/demo/demo.js", "text/javascript; charset=utf-8"),
            ("/demo/demo.css", "text/css; charset=utf-8"),
            ("/demo/THIRD_PARTY_LICENSES.txt", "text/plain; charset=utf-8"),
            ("/demo/config.json", "application/json"),
        ):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert response.headers.get_list("content-type") == [expected], path
