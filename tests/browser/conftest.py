"""What the browser tests share: Debian's Chromium under Playwright, and waiting for the demo
page's connection state."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support import LOG_DIR, UNIT

SCREENSHOTS = LOG_DIR / "screenshots"
#: Chromium's flags for a machine with no network and no display.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WAIT_MS = 30_000 * UNIT


@pytest.fixture(scope="module")
def callback_token() -> str:
    """The sweep's callback credential, shared by the module's gateway and sweep."""
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is missing: scripts/bootstrap.sh installs it"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


async def expect_state(page: Any, state: str) -> None:
    from playwright.async_api import expect

    await expect(page.locator("#state")).to_have_attribute("data-state", state, timeout=WAIT_MS)
