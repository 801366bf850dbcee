"""gateway/protocol/protocol.json against both clients: the Python client's close codes and its
reaction to each (decide_close), frame kinds, events, room errors and backoff; the JavaScript
client's frozen tables, the frame types its logic switches on, the events it emits and the
frames it sends; its .d.ts declarations. clients/js/test/protocol.test.js drives the
JavaScript client itself through every close code of the file."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import pytest

from gateway.protocol.messages import encode
from gateway.protocol.session import CANONICAL_PONG
from presence_client import closing, events, frames
from presence_client.closing import Action, Backoff, CloseCode, backoff_delay, decide_close
from tests.contract.protocol_description import (
    JS_CLIENT,
    ROOT,
    all_close_codes,
    client_close_names,
    js_frozen,
    js_frozen_array,
    js_nested_frozen,
    js_set,
    load,
    resend_codes,
    ts_const,
    ts_interface_keys,
    ts_union,
)

DESCRIPTION = load()
PYTHON_CLIENT = ROOT / "clients" / "python" / "presence_client"
RECONNECT = DESCRIPTION["client_reconnect"]
ROOM_ERRORS = {code for code, e in DESCRIPTION["error_codes"].items() if e.get("room")}
#: Error codes a server error frame can carry (message_too_large is a close reason only).
FRAME_ERRORS = [c for c, e in DESCRIPTION["error_codes"].items() if e["effect"] != "close"]
SIGNED_OUT_REASON = next(
    s["values"][0]
    for s in DESCRIPTION["server_frames"]["signed_out"]["fields"]
    if s["name"] == "reason"
)
#: The client's state after each action.
STATES = {
    "reconnect": "reconnecting",
    "sign_out": "signed_out",
    "auth_error": "auth_error",
    "stop": "closed",
}


# --- the Python client --------------------------------------------------------------------


def test_python_close_codes_are_the_description() -> None:
    """presence_client's CloseCode is every close code and alias of the file, by number."""
    assert {n: int(c) for n, c in CloseCode.__members__.items()} == client_close_names(DESCRIPTION)


def expected_delay(kind: str, attempt: int, random: float) -> tuple[float, int]:
    """The file's reconnect schedule: (delay in seconds, the next attempt count)."""
    cap = min(RECONNECT["max_seconds"], RECONNECT["min_seconds"] * 2**attempt)
    return {
        "backoff": (random * cap, attempt + 1),
        "rate_limited": (RECONNECT["rate_limited_seconds"] + random * cap, attempt + 1),
        "restart_jitter": (random * RECONNECT["restart_jitter_seconds"], attempt),
        "immediate": (0.0, attempt),
    }[kind]


@pytest.mark.parametrize("entry", all_close_codes(DESCRIPTION), ids=lambda e: str(e["code"]))
def test_python_reacts_to_each_close_code_as_described(entry: dict[str, Any]) -> None:
    """decide_close does the file's action, delay, refresh, resend, error for each code."""
    client, code = entry["client"], entry["code"]
    decision = decide_close(code, attempt=2, auth_retried=False, random=lambda: 0.5)
    assert decision.action == Action(client["action"])
    assert STATES[client["action"]] == client.get("state", "reconnecting")
    assert decision.resend_unacked == client["resend_unacked"]
    assert decision.force_refresh == client.get("refresh_token", False)
    assert decision.error_code == client.get("error_event")
    if decision.action is Action.RECONNECT:
        delay, attempt = expected_delay(client["delay"], 2, 0.5)
        assert (decision.delay, decision.attempt) == (pytest.approx(delay), attempt)
    again = decide_close(code, attempt=2, auth_retried=decision.auth_retried, random=lambda: 0.5)
    assert again.action == Action(client.get("again", client["action"]))


def test_python_resend_codes_and_backoff_are_the_description() -> None:
    """RESEND_AFTER and Backoff's defaults are the file's resend codes and schedule."""
    assert set(closing.RESEND_AFTER) == resend_codes(DESCRIPTION)
    assert Backoff() == Backoff(
        minimum=RECONNECT["min_seconds"],
        maximum=RECONNECT["max_seconds"],
        rate_limited=RECONNECT["rate_limited_seconds"],
        restart_jitter=RECONNECT["restart_jitter_seconds"],
        reset_after=RECONNECT["reset_after_seconds"],
    )
    assert backoff_delay(30, random=lambda: 1.0) == RECONNECT["max_seconds"]


def test_python_frame_kinds_are_the_described_reactions() -> None:
    """FrameKind is the frames clients react to; room errors and sign-out reason match."""
    reacts = {k for k, v in DESCRIPTION["server_frames"].items() if v["client_reacts"]}
    assert {k.value for k in frames.FrameKind} - {"other"} == reacts
    for kind in DESCRIPTION["server_frames"]:
        expected = kind if kind in reacts else "other"
        assert frames.classify_frame({"type": kind}) == frames.FrameKind(expected)
    assert closing.SIGNED_OUT_BY_SERVICE_REASON == SIGNED_OUT_REASON
    assert frames.ROOM_ERRORS == ROOM_ERRORS


def test_python_events_are_the_description() -> None:
    """EVENTS, and the events the client's modules emit, are the file's Python event names."""
    names = {e["python"] for e in DESCRIPTION["client_events"]}
    assert events.EVENTS == names
    source = "\n".join(p.read_text() for p in PYTHON_CLIENT.glob("*.py"))
    assert set(re.findall(r'\bemit\(\s*"(\w+)"', source)) == names


def python_sent_types() -> set[str]:
    """Frame types the Python client writes: dict literals with a ``type``, the room frames
    and the pong it answers with."""
    found = {json.loads(frames.PONG_FRAME)["type"]}
    for path in PYTHON_CLIENT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "type":
                        if isinstance(value, ast.Constant):
                            found.add(value.value)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "room_frame":
                (kind, _) = node.args
                assert isinstance(kind, ast.Constant), path
                found.add(kind.value)
    return found


def test_python_sends_only_described_frames() -> None:
    """The Python client sends only described frames; its pong is the gateway's fast one."""
    assert python_sent_types() == set(DESCRIPTION["client_frames"]) - {"ping"}
    assert frames.PONG_FRAME == CANONICAL_PONG == encode({"type": "pong"})


# --- the JavaScript client ----------------------------------------------------------------


def test_js_close_codes_are_the_description() -> None:
    """presence-client.js's CloseCode is every close code and alias of the file, by number."""
    assert js_frozen("CloseCode") == client_close_names(DESCRIPTION)


def test_js_server_frame_types_are_the_description() -> None:
    """ServerFrameType is the server frames; the switch's cases are those clients react to."""
    table = js_frozen("ServerFrameType")
    assert set(table.values()) == set(DESCRIPTION["server_frames"])
    assert all(key == value.upper() for key, value in table.items())
    cases = set(re.findall(r"case ServerFrameType\.(\w+):", JS_CLIENT.read_text()))
    reacts = {k for k, v in DESCRIPTION["server_frames"].items() if v["client_reacts"]}
    assert {table[c] for c in cases} == reacts
    assert not re.search(r'case "\w+":', JS_CLIENT.read_text()), "a frame type outside the table"


def test_js_constants_are_the_description() -> None:
    """RESEND_AFTER, backoff, ROOM_ERRORS and the sign-out reason in the JS are the file's."""
    assert js_set("RESEND_AFTER") == resend_codes(DESCRIPTION)
    assert js_nested_frozen("DEFAULTS", "backoff") == {
        "min": RECONNECT["min_seconds"] * 1000,
        "max": RECONNECT["max_seconds"] * 1000,
        "rateLimited": RECONNECT["rate_limited_seconds"] * 1000,
        "restartJitter": RECONNECT["restart_jitter_seconds"] * 1000,
        "resetAfter": RECONNECT["reset_after_seconds"] * 1000,
    }
    assert set(js_frozen_array("ROOM_ERRORS")) == ROOM_ERRORS
    assert f'SIGNED_OUT_BY_SERVICE_REASON = "{SIGNED_OUT_REASON}";' in JS_CLIENT.read_text()


def test_js_events_and_sent_frames_are_the_description() -> None:
    """The JS client emits the file's event names and sends only described client frames."""
    text = JS_CLIENT.read_text()
    emitted = set(re.findall(r'this\.#emit\("(\w+)"', text))
    assert emitted == {e["javascript"] for e in DESCRIPTION["client_events"]}
    sent = set(re.findall(r'JSON\.stringify\(\{ type: "(\w+)"', text))
    sent |= set(re.findall(r"'\{\"type\":\"(\w+)\"\}'", text))
    assert sent == set(DESCRIPTION["client_frames"]) - {"ping"}


def test_js_declarations_are_the_description() -> None:
    """The .d.ts declares the file's close codes, frame types, error codes, refusals, events."""
    assert ts_const("CloseCode") == client_close_names(DESCRIPTION)
    assert ts_const("ServerFrameType") == js_frozen("ServerFrameType")
    assert ts_union("ClientFrameType") == list(DESCRIPTION["client_frames"])
    assert ts_union("ServerErrorCode") == FRAME_ERRORS
    assert set(ts_union("RoomRefusal")) == ROOM_ERRORS
    events_ = [e["javascript"] for e in DESCRIPTION["client_events"]]
    assert ts_interface_keys("PresenceEvents") == events_
