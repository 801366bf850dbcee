"""gateway/protocol/protocol.json, loaded, and the readers the protocol tests compare it with:
the gateway's frame Structs and the error codes in its source, the JavaScript client's frozen
tables, the .d.ts declarations, docs/protocol.md's tables.

The readers parse text, not JavaScript or TypeScript: each expects the one plain shape its
source uses (``export const NAME = Object.freeze({ KEY: value, ... });``) and fails loudly,
naming what it looked for, when that shape is gone, rather than finding nothing and passing.
"""

from __future__ import annotations

import ast
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from gateway.protocol import messages, presence
from gateway.protocol.closes import CloseCode
from gateway.storage import streams

ROOT = Path(__file__).resolve().parents[2]
JS_CLIENT = ROOT / "clients" / "js" / "presence-client.js"
JS_TYPES = ROOT / "clients" / "js" / "presence-client.d.ts"
PROTOCOL_DOC = ROOT / "docs" / "protocol.md"


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of two equal keys; in a description that hides an entry."""
    keys = [key for key, _ in pairs]
    duplicates = {key for key in keys if keys.count(key) > 1}
    assert not duplicates, f"protocol.json repeats {sorted(duplicates)}"
    return dict(pairs)


def load() -> dict[str, Any]:
    """The description as the installed gateway package holds it."""
    text = resources.files("gateway.protocol").joinpath("protocol.json").read_text("utf-8")
    description: dict[str, Any] = json.loads(text, object_pairs_hook=_unique)
    return description


def all_close_codes(description: dict[str, Any]) -> list[dict[str, Any]]:
    """The gateway's close codes, then those only a client's WebSocket reports."""
    return [*description["close_codes"], *description["client_close_codes"]]


def client_close_names(description: dict[str, Any]) -> dict[str, int]:
    """Every name a client's close-code table must have: each code's, and its aliases."""
    names: dict[str, int] = {}
    for entry in all_close_codes(description):
        for name in [entry["name"], *entry.get("aliases", [])]:
            names[name] = entry["code"]
    return names


def resend_codes(description: dict[str, Any]) -> set[int]:
    return {e["code"] for e in all_close_codes(description) if e["client"]["resend_unacked"]}


# --- the gateway ----------------------------------------------------------------------------

#: Where the gateway's server frames are declared as msgspec Structs tagged by ``type``.
FRAME_MODULES = (messages, streams, presence)


def json_types(info: msgspec.inspect.Type) -> set[str]:
    """The JSON types a msgspec field type encodes to (None left out: optional is separate)."""
    if isinstance(info, msgspec.inspect.UnionType):
        return set().union(*(json_types(t) for t in info.types))
    names = {
        msgspec.inspect.StrType: {"string"},
        msgspec.inspect.IntType: {"integer"},
        msgspec.inspect.BoolType: {"boolean"},
        msgspec.inspect.FloatType: {"number"},
        msgspec.inspect.NoneType: set(),
        msgspec.inspect.ListType: {"array"},
        msgspec.inspect.DictType: {"object"},
        msgspec.inspect.AnyType: {"any"},
    }
    if isinstance(info, msgspec.inspect.RawType):
        return {"any"}  # pre-encoded JSON: whatever the file says
    return names[type(info)]


def server_structs() -> dict[str, list[msgspec.inspect.StructType]]:
    """Every Struct of the frame modules with a literal ``type`` field, by that tag."""
    found: dict[str, list[msgspec.inspect.StructType]] = {}
    for module in FRAME_MODULES:
        for value in vars(module).values():
            if not (isinstance(value, type) and issubclass(value, msgspec.Struct)):
                continue
            info = msgspec.inspect.type_info(value)
            assert isinstance(info, msgspec.inspect.StructType)
            tag = next((f.type for f in info.fields if f.name == "type"), None)
            if isinstance(tag, msgspec.inspect.LiteralType):
                (kind,) = tag.values
                found.setdefault(kind, []).append(info)
    return found


def own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of a module or function outside the functions it defines."""
    found = []
    for child in ast.iter_child_nodes(scope):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(child)
            found.extend(own_nodes(child))
    return found


#: Where the error code is among a call's positional arguments.
CODE_ARGUMENT = {"ProtocolError": 0, "RoomRefused": 0, "ErrorMessage": 1, "RoomErrorMessage": 1}


def raised_error_codes() -> dict[str, dict[str, Any]]:
    """Every error code gateway/ can send, and how: raised as a ProtocolError (a close when it
    names a close_code) or a RoomRefused (room and id echoed), or built as an ErrorMessage
    (then a close when the function building it names a CloseCode)."""
    found: dict[str, dict[str, Any]] = {}
    for path in (ROOT / "gateway").rglob("*.py"):
        tree = ast.parse(path.read_text())
        scopes = [
            tree,
            *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)),
        ]
        for scope in scopes:
            nodes = own_nodes(scope)
            closes = {
                n.attr
                for n in nodes
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                if n.value.id == "CloseCode"
            }
            for call in (n for n in nodes if isinstance(n, ast.Call)):
                func = call.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if name not in CODE_ARGUMENT:
                    continue
                keywords = {k.arg: k.value for k in call.keywords}
                code = keywords.get("code") or call.args[CODE_ARGUMENT[name]]
                if not isinstance(code, ast.Constant):
                    # A refusal's own code passed on (exc.code): counted where it was raised.
                    assert isinstance(code, ast.Attribute) and code.attr == "code", path
                    continue
                how: dict[str, Any] = {"effect": "reply"}
                if isinstance(close := keywords.get("close_code"), ast.Attribute):
                    how = {"effect": "close", "close_code": int(CloseCode[close.attr])}
                elif name == "ErrorMessage" and closes:
                    assert len(closes) == 1, f"{path}: which close follows {code.value}?"
                    (after,) = closes
                    how = {"effect": "reply_then_close", "close_code": int(CloseCode[after])}
                if name.startswith("Room"):
                    how["room"] = True
                assert found.setdefault(code.value, how) == how, f"{code.value}: two effects"
    return found


# --- JavaScript and TypeScript ------------------------------------------------------------

_ENTRY = re.compile(r"^\s*(\w+)\s*:\s*(.+?)\s*[,;]?\s*$")
_NUMBER = re.compile(r"-?\d[\d_]*(\.\d+)?")


def _literal(text: str) -> Any:
    """A JSON literal, or a JavaScript number with ``_`` separators (``20_000``)."""
    if _NUMBER.fullmatch(text):
        return json.loads(text.replace("_", ""))
    return json.loads(text)


def _entries(body: str, where: str) -> dict[str, Any]:
    """``KEY: value`` lines (comments skipped); values are JSON literals."""
    found: dict[str, Any] = {}
    for line in body.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("//", "/*", "*")):
            continue
        match = _ENTRY.match(line)
        assert match, f"{where}: cannot read {line!r}"
        assert match.group(1) not in found, f"{where}: {match.group(1)} twice"
        found[match.group(1)] = _literal(match.group(2))
    assert found, f"{where}: no entries"
    return found


def js_frozen(name: str) -> dict[str, Any]:
    """``export const NAME = Object.freeze({...});`` of presence-client.js, flat."""
    text = JS_CLIENT.read_text()
    match = re.search(
        rf"^export const {name} = Object\.freeze\(\{{\n(.*?)^\}}\);", text, re.M | re.S
    )
    assert match, f"presence-client.js: no `export const {name} = Object.freeze({{...}})`"
    return _entries(match.group(1), f"presence-client.js {name}")


def js_set(name: str) -> set[Any]:
    """``const NAME = new Set([...]);`` of presence-client.js."""
    match = re.search(rf"const {name} = new Set\((\[.*?\])\);", JS_CLIENT.read_text(), re.S)
    assert match, f"presence-client.js: no `const {name} = new Set([...])`"
    return set(json.loads(match.group(1)))


def js_frozen_array(name: str) -> list[Any]:
    match = re.search(
        rf"export const {name} = Object\.freeze\((\[.*?\])\);", JS_CLIENT.read_text(), re.S
    )
    assert match, f"presence-client.js: no `export const {name} = Object.freeze([...])`"
    items: list[Any] = json.loads(match.group(1))
    return items


def js_nested_frozen(outer: str, inner: str) -> dict[str, Any]:
    """``inner: Object.freeze({ k: v, ... })`` inside ``export const outer``, on one line."""
    text = JS_CLIENT.read_text()
    start = text.index(f"export const {outer} = Object.freeze(")
    match = re.compile(rf"\b{inner}: Object\.freeze\(\{{(.*?)\}}\)", re.S).search(text, start)
    assert match, f"presence-client.js: no {outer}.{inner}"
    body = "\n".join(part.strip() for part in match.group(1).split(","))
    return _entries(body, f"{outer}.{inner}")


def ts_const(name: str) -> dict[str, Any]:
    """``export declare const NAME: Readonly<{...}>;`` of presence-client.d.ts."""
    text = JS_TYPES.read_text()
    match = re.search(
        rf"^export declare const {name}: Readonly<\{{\n(.*?)^\}}>;", text, re.M | re.S
    )
    assert match, f"presence-client.d.ts: no `export declare const {name}: Readonly<{{...}}>`"
    return _entries(match.group(1), f"presence-client.d.ts {name}")


def ts_union(name: str) -> list[str]:
    """The string literals of ``export type NAME = "a" | "b" ...;``."""
    match = re.search(rf"^export type {name} =(.*?);", JS_TYPES.read_text(), re.M | re.S)
    assert match, f"presence-client.d.ts: no `export type {name}`"
    members = [m.strip() for m in match.group(1).split("|") if m.strip()]
    assert all(m.startswith('"') for m in members), f"{name}: not a union of strings"
    return [json.loads(m) for m in members]


def ts_interface_keys(name: str) -> list[str]:
    match = re.search(
        rf"^export interface {name} \{{\n(.*?)^\}}", JS_TYPES.read_text(), re.M | re.S
    )
    assert match, f"presence-client.d.ts: no `export interface {name}`"
    return re.findall(r"^  (\w+)\??:", match.group(1), re.M)


# --- docs/protocol.md ---------------------------------------------------------------------


def doc_section(heading: str) -> str:
    """The text under a ``### heading`` line, up to the next heading of any level."""
    text = PROTOCOL_DOC.read_text()
    start = text.index(f"\n{heading}\n")
    end = re.compile(r"^#{1,3} ", re.M).search(text, start + len(heading) + 2)
    return text[start : end.start() if end else len(text)]


def doc_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table in ``text``: (header cells, rows of cells)."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    lines: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            lines.append(line)
            continue
        if lines:
            cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in lines]
            assert set("".join(cells[1])) <= set("-: "), f"not a table: {lines[:2]}"
            tables.append((cells[0], cells[2:]))
            lines = []
    return tables


def doc_table(header: list[str], text: str | None = None) -> list[list[str]]:
    """The rows of the one table in docs/protocol.md (or ``text``) with this header."""
    found = [rows for head, rows in doc_tables(text or PROTOCOL_DOC.read_text()) if head == header]
    assert len(found) == 1, f"docs/protocol.md: {len(found)} tables headed {header}"
    return found[0]
