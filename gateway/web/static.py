"""Files the gateway serves to browsers: the JavaScript client and, locally, the demo page.

``GET /client.js`` is the client module (clients/js/presence-client.js), cacheable for five
minutes with an ETag; ``GET /client/{version}/presence-client.js`` is the same file under its
version, cacheable for a year: pages that pin a version never refetch it. ``/client.d.ts`` has
the TypeScript declarations. The files are read once, when the app is built.

``GET /demo`` (with ``demo.js``, ``demo.css`` and ``config.json`` beside it) is the demo page,
served only when ``DEMO_DIR`` names its build (``make up`` builds it and sets it): it signs in
at the Auth emulator, so it has no place in production.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException

logger = logging.getLogger("gateway.web.static")

REPOSITORY_CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "js"
_VERSION = re.compile(r'export const VERSION = "([^"]+)"')
DEMO_FILES = {
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
    "THIRD_PARTY_LICENSES.txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'


@dataclass(frozen=True, slots=True)
class StaticFiles:
    """What ``create_app`` loaded: the client (absent when its folder is not found) and the
    demo (absent unless DEMO_DIR is set)."""

    client: Asset | None
    declarations: Asset | None
    version: str
    demo: dict[str, Asset]
    demo_config: dict[str, Any]


def load(client_dir: str, demo_dir: str, demo_config: dict[str, Any]) -> StaticFiles:
    """Read the client from ``client_dir`` (default: the repository's clients/js) and the demo
    from ``demo_dir``; a missing file is logged and its routes answer 404."""
    folder = Path(client_dir) if client_dir else REPOSITORY_CLIENT_DIR
    client = _read(folder / "presence-client.js", "text/javascript; charset=utf-8")
    declarations = _read(folder / "presence-client.d.ts", "text/plain; charset=utf-8")
    match = _VERSION.search(client.body.decode()) if client else None
    if client is None:
        logger.info("no JavaScript client at %s: /client.js answers 404", folder)
    demo: dict[str, Asset] = {}
    if demo_dir:
        html = _read(Path(demo_dir) / "index.html", "text/html; charset=utf-8")
        if html is None:
            logger.warning("DEMO_DIR=%s has no index.html (build it: make demo)", demo_dir)
        else:
            demo["index.html"] = html
            for name, media_type in DEMO_FILES.items():
                asset = _read(Path(demo_dir) / name, media_type)
                if asset is not None:
                    demo[name] = asset
    return StaticFiles(client, declarations, match.group(1) if match else "", demo, demo_config)


def _read(path: Path, media_type: str) -> Asset | None:
    try:
        return Asset(path.read_bytes(), media_type)
    except OSError:
        return None


def _files(request: Request[Any, Any, Any]) -> StaticFiles:
    files: StaticFiles = request.app.state.static
    return files


def _serve(request: Request[Any, Any, Any], asset: Asset | None, cache: str) -> Response[bytes]:
    if asset is None:
        raise NotFoundException("Not served by this gateway")
    headers = {"Cache-Control": cache, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(b"", status_code=304, headers=headers)
    # The header itself, not media_type=: Litestar appends "; charset=utf-8" to every text/
    # media type, so one that names its charset already was sent with it twice.
    return Response(asset.body, headers={**headers, "Content-Type": asset.media_type})


@get("/client.js", sync_to_thread=False, include_in_schema=False)
def client_js(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The current JavaScript client; short-lived cache, revalidated by ETag."""
    files = _files(request)
    response = _serve(request, files.client, "public, max-age=300")
    response.headers["X-Client-Version"] = files.version
    return response


@get("/client.d.ts", sync_to_thread=False, include_in_schema=False)
def client_declarations(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _serve(request, _files(request).declarations, "public, max-age=300")


@get("/client/{version:str}/presence-client.js", sync_to_thread=False, include_in_schema=False)
def client_versioned(request: Request[Any, Any, Any], version: str) -> Response[bytes]:
    """The client under its version: never changes, cached for a year."""
    files = _files(request)
    if version != files.version:
        raise NotFoundException(f"This gateway serves client version {files.version or 'none'}")
    return _serve(request, files.client, "public, max-age=31536000, immutable")


@get("/demo", sync_to_thread=False, include_in_schema=False)
def demo_page(request: Request[Any, Any, Any]) -> Response[bytes]:
    files = _files(request)
    if not files.demo:
        raise NotFoundException("The demo is not enabled on this gateway (DEMO_DIR)")
    return _serve(request, files.demo["index.html"], "no-cache")


@get("/demo/config.json", sync_to_thread=False, include_in_schema=False)
def demo_config(request: Request[Any, Any, Any]) -> dict[str, Any]:
    files = _files(request)
    if not files.demo:
        raise NotFoundException("The demo is not enabled on this gateway (DEMO_DIR)")
    return files.demo_config


@get("/demo/{name:str}", sync_to_thread=False, include_in_schema=False)
def demo_file(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    files = _files(request)
    if name not in DEMO_FILES:
        raise NotFoundException(f"No such demo file: {name}")
    return _serve(request, files.demo.get(name), "no-cache")


ROUTES = [client_js, client_declarations, client_versioned, demo_page, demo_config, demo_file]
