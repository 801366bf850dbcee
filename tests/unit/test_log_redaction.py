"""ID tokens never reach the gateway's log, however a client spells the parameter that
carries them: every spelling the gateway accepts is redacted in the lines that name it."""

from __future__ import annotations

import io
import logging

import pytest

from gateway.instance.auth import token_from
from gateway.serving import RedactTokens

JWT = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZS1zZWNyZXQtdG9rZW4ifQ."
#: What uvicorn logs for each socket (its wsproto, websockets and websockets-sansio
#: implementations alike): the client, then the raw request target in quotes.
ACCEPTED = '%s - "WebSocket %s" [accepted]'


def logged(message: str, *args: object) -> str:
    """What a handler with the gateway's filter writes for one record."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactTokens())
    logger = logging.getLogger(f"test-redaction-{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.warning(message, *args)
    return stream.getvalue()


@pytest.mark.parametrize(
    "query",
    [
        f"token={JWT}",
        f"tok%65n={JWT}",
        f"%74oken={JWT}",
        f"%74%6F%6B%65%6E={JWT}",
        f"since=3&epoch=e1&tok%65n={JWT}",
        f"tok%65n={JWT}&since=3",
    ],
)
def test_every_spelling_the_gateway_accepts_is_redacted_from_the_socket_line(
    query: str,
) -> None:
    """A query the gateway reads a token from (any percent-encoding of the name) leaves no
    part of the token in uvicorn's line for the socket; the path and the user stay."""
    assert token_from(query.encode(), {}) == JWT
    line = logged(ACCEPTED, "10.0.0.1:5000", f"/ws/connect/alice?{query}")
    assert JWT not in line and JWT.split(".")[1] not in line
    assert line == '10.0.0.1:5000 - "WebSocket /ws/connect/alice?[redacted]" [accepted]\n'


@pytest.mark.parametrize(
    "query",
    [f"TOKEN={JWT}", f"id_token={JWT}", f"x=1&to%6Ben={JWT}", f'a="&token={JWT}'],
)
def test_spellings_the_gateway_ignores_are_redacted_too(query: str) -> None:
    """Names the gateway does not read (another case, another parameter) and a quote inside
    the query leave no token either: the socket path's whole query goes."""
    line = logged('%s - "WebSocket %s" 403', "10.0.0.1:5000", f"/ws/connect/bob?{query}")
    assert JWT not in line and JWT.split(".")[1] not in line
    assert line == '10.0.0.1:5000 - "WebSocket /ws/connect/bob?[redacted]" 403\n'


def test_the_websockets_implementations_debug_lines_are_redacted() -> None:
    """With LOG_LEVEL=DEBUG the websockets implementation logs the request line, each header
    and each frame: the query, an Authorization credential and an auth frame's token are
    redacted."""
    request = logged("< GET %s HTTP/1.1", f"/ws/connect/alice?%74oken={JWT}")
    assert request == "< GET /ws/connect/alice?[redacted] HTTP/1.1\n"
    header = logged("< %s: %s", "authorization", f"Bearer {JWT}")
    assert header == "< authorization: [redacted]\n"
    # Its frame lines keep the start and end of a frame: a refreshed token's included.
    frame = logged("< %s", f"""TEXT '{{"type": "auth", "token": "{JWT[:20]}...{JWT[-12:]}"}}'""")
    assert frame == """< TEXT '{"type": "auth", "token": "[redacted]"}'\n"""


def test_a_token_parameter_in_another_path_loses_its_value_only() -> None:
    """Outside the socket path, only the values of parameters whose decoded name holds
    "token" go; the rest of the line is kept."""
    line = logged("fetched %s", f"/other?scope=deployment&access%5Ftoken={JWT}&n=2")
    assert line == "fetched /other?scope=deployment&access%5Ftoken=[redacted]&n=2\n"


def test_lines_without_tokens_are_left_as_they_were() -> None:
    """Ordinary lines, user=... pairs and socket paths without a query are untouched, and
    their arguments are left to the formatter."""
    record = logging.LogRecord(
        "gateway", logging.INFO, __file__, 1, ACCEPTED, ("1.2.3.4:1", "/ws/connect/alice"), None
    )
    assert RedactTokens().filter(record)
    assert record.args == ("1.2.3.4:1", "/ws/connect/alice")
    assert logged("refused socket user=%s: %s", "alice", "invalid token") == (
        "refused socket user=alice: invalid token\n"
    )
