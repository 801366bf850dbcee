"""gateway/protocol/protocol.json against the gateway and docs/protocol.md: the frames it sends
(its Structs and the hand-built ping), the frames its decoder accepts, every error code it
raises, its close codes, and the page's tables. The clients are held to the same file by
test_protocol_clients.py."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from datetime import UTC, datetime
from typing import Any, get_args

import pytest

from gateway.exceptions import ProtocolError
from gateway.instance.endings import SIGNED_OUT_REASON
from gateway.protocol import frames, messages
from gateway.protocol.closes import CloseCode
from gateway.storage import streams
from tests.contract.protocol_description import (
    ROOT,
    doc_section,
    doc_table,
    doc_tables,
    json_types,
    load,
    raised_error_codes,
    server_structs,
)

DESCRIPTION = load()
SERVER = DESCRIPTION["server_frames"]
CLIENT = DESCRIPTION["client_frames"]
ERRORS = DESCRIPTION["error_codes"]
JSON_TYPES = {"string", "integer", "number", "boolean", "object", "array", "any"}
#: ASGI events are dicts with a "type" too; they are not frames.
ASGI_PREFIXES = ("websocket.", "http.", "lifespan.")


def types_of(spec: dict[str, Any]) -> set[str]:
    kinds = spec["type"]
    return set(kinds) if isinstance(kinds, list) else {kinds}


def test_the_description_ships_with_the_gateway() -> None:
    """pyproject's package data names protocol.json, so an installed gateway carries it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "protocol.json" in pyproject["tool"]["setuptools"]["package-data"]["gateway.protocol"]


def test_the_description_is_well_formed() -> None:
    """Fields have unique names, JSON types, a required flag; reactions are of known kinds."""
    for frame in [*SERVER.values(), *CLIENT.values()]:
        names = [spec["name"] for spec in frame["fields"]]
        assert len(names) == len(set(names)) and "type" not in names
        for spec in frame["fields"]:
            assert types_of(spec) <= JSON_TYPES and isinstance(spec["required"], bool), spec
    delays = {"backoff", "rate_limited", "restart_jitter", "immediate"}
    codes = [e["code"] for e in DESCRIPTION["close_codes"] + DESCRIPTION["client_close_codes"]]
    assert len(codes) == len(set(codes))
    for entry in DESCRIPTION["close_codes"] + DESCRIPTION["client_close_codes"]:
        client = entry["client"]
        assert client["action"] in {"reconnect", "sign_out", "auth_error", "stop"}, entry
        assert (client["action"] == "reconnect") == (client.get("delay") in delays), entry
    for entry in ERRORS.values():
        assert entry["effect"] in {"reply", "reply_then_close", "close"}
        assert ("close_code" in entry) == (entry["effect"] != "reply"), entry


def test_every_server_frame_is_described() -> None:
    """Struct tags and the ping are the file's server frames; gateway/ hand-builds no other."""
    assert set(server_structs()) | {"ping"} == set(SERVER)
    hand_built = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "type":
                        if isinstance(value, ast.Constant) and isinstance(value.value, str):
                            if not value.value.startswith(ASGI_PREFIXES):
                                hand_built.add(value.value)
    assert hand_built == {"ping"}


@pytest.mark.parametrize("kind", sorted(set(SERVER) - {"ping"}))
def test_server_frame_structs_match(kind: str) -> None:
    """A frame's Structs have its fields, order, types and required-ness; optional is omitted."""
    described = {spec["name"]: spec for spec in SERVER[kind]["fields"]}
    order = list(described)
    seen: set[str] = set()
    for info in server_structs()[kind]:
        fields = [f for f in info.fields if f.name != "type"]
        # The wire's names (a field may be renamed on the wire: ``from``).
        names = [f.encode_name for f in fields]
        assert set(names) <= set(order), (info.cls, names)
        assert names == [n for n in order if n in names], f"{info.cls}: order {names}"
        for field in fields:
            spec = described[field.encode_name]
            assert json_types(field.type) <= types_of(spec) or "any" in json_types(field.type)
            if spec["required"]:
                assert field.required, f"{info.cls}.{field.name} is optional"
            elif not field.required:
                assert info.cls.__struct_config__.omit_defaults, info.cls
        seen |= set(names)
        missing = {n for n, s in described.items() if s["required"]} - set(names)
        assert not missing, f"{info.cls} lacks {missing}"
    assert seen == set(order)


def test_the_ping_is_the_described_frame() -> None:
    """The hand-built ping has the file's fields, in its order, all strings."""
    ping = json.loads(messages.encode_ping(datetime.now(UTC)))
    assert list(ping) == ["type", *(spec["name"] for spec in SERVER["ping"]["fields"])]
    assert all(isinstance(value, str) for value in ping.values())


def test_enumerated_values_are_the_gateways() -> None:
    """Listed values (recovery, signed_out, left reasons) are the ones the gateway sends."""

    def values(kind: str, name: str) -> list[str]:
        spec = next(s for s in SERVER[kind]["fields"] if s["name"] == name)
        found: list[str] = spec["values"]
        return found

    left_reasons = [
        keyword.value.value
        for path in (ROOT / "gateway").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Left")
        for keyword in node.keywords
        if keyword.arg == "reason" and isinstance(keyword.value, ast.Constant)
    ]
    assert values("recovery", "reason") == list(get_args(streams.Reason))
    assert values("signed_out", "reason") == [SIGNED_OUT_REASON]
    assert values("left", "reason") == sorted(set(left_reasons))


def test_frame_limits_are_the_decoders() -> None:
    """The longest type and the largest integer a client may send are the decoder's."""
    assert DESCRIPTION["frame"]["type_max_length"] == frames.MAX_TYPE_LENGTH
    assert DESCRIPTION["frame"]["max_safe_integer"] == frames.MAX_SAFE_INTEGER


def test_the_decoder_knows_exactly_the_described_client_frames() -> None:
    """decode_value knows exactly the file's client types; any other is UnknownType."""
    tree = ast.parse((ROOT / "gateway/protocol/frames.py").read_text())
    decoder = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "decode_value"
    )
    branches = {
        c.value
        for node in ast.walk(decoder)
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
        if node.left.id == "kind"
        for c in node.comparators
        if isinstance(c, ast.Constant)
    }
    assert branches == set(CLIENT)
    assert isinstance(frames.decode_value({"type": "not_described"}), frames.UnknownType)


def sample(spec: dict[str, Any]) -> Any:
    kinds = types_of(spec)
    return "x" if "string" in kinds else 1 if "integer" in kinds else {"k": 1}


def wrong(spec: dict[str, Any]) -> Any:
    """A value of a JSON type the field does not take."""
    kinds = types_of(spec)
    return next(
        v for k, v in [("number", 12.5), ("array", [1]), ("boolean", True)] if k not in kinds
    )


def refused(frame: dict[str, Any]) -> str | None:
    """The decoder's error code for ``frame``, None when it takes it as a known frame."""
    try:
        event = frames.decode_value(frame)
    except ProtocolError as exc:
        return exc.code
    assert not isinstance(event, frames.UnknownType), frame
    return None


@pytest.mark.parametrize("kind", sorted(CLIENT))
def test_the_decoder_takes_the_described_fields(kind: str) -> None:
    """Described fields decode; a missing, mistyped or out-of-bounds one is invalid_field."""
    specs = CLIENT[kind]["fields"]
    base = {"type": kind} | {s["name"]: sample(s) for s in specs if s["required"]}
    assert refused(base) is None
    assert refused(base | {s["name"]: sample(s) for s in specs}) is None
    for spec in specs:
        name = spec["name"]
        if spec["required"]:
            assert refused({k: v for k, v in base.items() if k != name}) == "invalid_field"
        if types_of(spec) != {"any"}:
            assert refused(base | {name: wrong(spec)}) == "invalid_field", name
        if "max_length" in spec:
            assert refused(base | {name: "a" * spec["max_length"]}) is None
            assert refused(base | {name: "a" * (spec["max_length"] + 1)}) == "invalid_field"
        if "min_length" in spec:
            assert refused(base | {name: "a" * spec["min_length"]}) is None
            assert refused(base | {name: "a" * (spec["min_length"] - 1)}) == "invalid_field"
        for bound, step in (("minimum", -1), ("maximum", 1)):
            if bound in spec:
                assert refused(base | {name: spec[bound]}) is None
                assert refused(base | {name: spec[bound] + step}) == "invalid_field"


def test_every_error_code_the_gateway_sends_is_described() -> None:
    """Every error code gateway/ raises or sends is the file's, with its effect; no other."""
    raised = raised_error_codes()
    assert set(raised) == set(ERRORS)
    for code, how in raised.items():
        described = {k: v for k, v in ERRORS[code].items() if k != "meaning"}
        assert how == described, code


def test_close_codes_are_the_gateways() -> None:
    """CloseCode is the file's close codes, name for number, with no aliases."""
    assert {c.name: int(c) for c in CloseCode} == {
        e["name"]: e["code"] for e in DESCRIPTION["close_codes"]
    }
    assert len(CloseCode.__members__) == len(CloseCode)


# --- docs/protocol.md ---------------------------------------------------------------------


def test_the_page_names_the_description_near_its_top() -> None:
    """docs/protocol.md names protocol.json before its first section, and what holds to it."""
    top = (ROOT / "docs/protocol.md").read_text().split("\n## ", 1)[0]
    assert "gateway/protocol/protocol.json" in top and "both clients" in top


def test_the_page_close_code_tables_are_the_description() -> None:
    """The Close codes tables are the file's codes, names, meanings and client reactions."""
    tables = doc_tables(doc_section("### Close codes"))
    assert [head for head, _ in tables] == [["code", "name", "when", "the clients"]] * 2
    for (_, rows), key in zip(tables, ("close_codes", "client_close_codes"), strict=True):
        assert rows == [
            [str(e["code"]), f"`{e['name']}`", e["meaning"], e["client"]["summary"]]
            for e in DESCRIPTION[key]
        ]


def effect_text(entry: dict[str, Any]) -> str:
    if entry["effect"] == "close":
        return f"close **{entry['close_code']}**"
    if entry["effect"] == "reply_then_close":
        return f"error, then close {entry['close_code']}"
    return "error reply with `room` and `id`" if entry.get("room") else "error reply"


def test_the_page_error_table_is_the_description() -> None:
    """The error table is the file's error codes in order, with meaning and effect."""
    rows = doc_table(["code", "when", "effect"])
    assert rows == [[f"`{c}`", e["meaning"], effect_text(e)] for c, e in ERRORS.items()]


def test_the_page_client_frame_table_is_the_description() -> None:
    """The client → server table shows every client frame type with exactly its fields."""
    shown = {}
    for frame, _ in doc_table(["frame", "what happens"]):
        match = re.match(r'`\{"type": "(\w+)"(.*)\}`$', frame)
        if match:
            shown[match.group(1)] = set(re.findall(r'"(\w+)":', match.group(2)))
    assert shown == {k: {s["name"] for s in v["fields"]} for k, v in CLIENT.items()}


def test_the_page_server_frame_examples_are_the_description() -> None:
    """Each server frame example is described, fields in order; every type has one."""
    text = (ROOT / "docs/protocol.md").read_text()
    block = text[text.index("Server → client:") :]
    start = block.index("```json\n") + len("```json\n")
    block = block[start : block.index("\n```", start)]
    shown = set()
    for line in block.splitlines():
        frame = json.loads(line)
        kind = frame.pop("type")
        order = [spec["name"] for spec in SERVER[kind]["fields"]]
        required = {spec["name"] for spec in SERVER[kind]["fields"] if spec["required"]}
        assert required <= set(frame) and list(frame) == [n for n in order if n in frame], line
        shown.add(kind)
    assert shown == set(SERVER)
