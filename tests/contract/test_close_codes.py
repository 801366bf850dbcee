"""The close codes the docs promise are exactly the ones the gateway uses
(gateway.protocol.closes)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.protocol.closes import CloseCode

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def documented_codes() -> dict[int, str]:
    """The rows of the table under "### Close codes": code -> name."""
    text = PROTOCOL.read_text()
    section = text[text.index("### Close codes") :]
    section = section[: section.index("\n### ", 1)]
    return {
        int(code): name
        for code, name in re.findall(r"^\| (\d{4}) \| `([A-Z_]+)` \|", section, re.M)
    }


def test_the_docs_table_is_the_gateways_table() -> None:
    assert documented_codes() == {int(code): code.name for code in CloseCode}


def test_the_table_was_read() -> None:
    """The check itself: the parse finds the table's rows."""
    codes = documented_codes()
    assert len(codes) >= 10 and codes[4408] == "SESSION_EXPIRED"
