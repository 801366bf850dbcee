"""Every library whose private internals the gateway uses, the release it was tested with, and the
start-up check that refuses any other (``python -m gateway`` runs it before anything else).

A private attribute can change meaning in any release without a deprecation, and the failure is
rarely loud: the trimmed protocol would mis-frame or leak, the bounded handshake would stop
closing silent connections, the wire-byte commit would fail every flush while pongs pile up.
So the installed release must start with the tested prefix (taken from requirements/gateway.txt,
the image's lock; tests/unit/test_versions.py holds the two equal), and each private member the
code reaches for must still be there, which catches a changed internal even under a matching
version. A member set in ``__init__`` is an instance attribute, invisible on the class: it is
looked for among the attribute names that ``__init__``'s code stores (``co_names``).

The check imports the modules it inspects; every one of them is imported at start anyway.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata

#: The override: comma-separated distribution names whose untested release the operator
#: accepts (each is then logged as a WARNING at every start). It never covers a missing member.
ALLOW_UNTESTED = "ALLOW_UNTESTED_LIBRARIES"
#: The socket implementation under which the lean protocol, and so wsproto's internals, are used.
LEAN_IMPLEMENTATION = "wsproto"


@dataclass(frozen=True, slots=True)
class Member:
    """One private (or internal) member the gateway reads: ``module.owner.attribute``."""

    module: str
    owner: str
    attribute: str
    #: Set on instances by ``owner.__init__`` rather than defined on the class.
    in_init: bool = False
    #: Used only by the lean protocol (``WS_IMPLEMENTATION=wsproto``).
    lean_only: bool = False

    def __str__(self) -> str:
        return f"{self.owner}.{self.attribute}"


@dataclass(frozen=True, slots=True)
class Library:
    """A distribution whose internals the gateway uses, and why."""

    name: str
    #: Version prefix of the tested release, "0.54." for 0.54.x.
    tested: str
    uses: str
    members: tuple[Member, ...] = ()
    #: Used only by the lean protocol; another WS_IMPLEMENTATION does not need it.
    lean_only: bool = False


_WSPROTO_IMPL = "uvicorn.protocols.websockets.wsproto_impl"
_HTTPTOOLS_IMPL = "uvicorn.protocols.http.httptools_impl"
_FIRESTORE = "google.cloud.firestore_v1"

LIBRARIES: tuple[Library, ...] = (
    Library(
        "uvicorn",
        "0.54.",
        "gateway.edge.wsproto_lean subclasses WSProtocol and reads and sets its attributes; "
        "gateway.edge.handshake subclasses HttpToolsProtocol, extends its parser callbacks, "
        "replaces its keep-alive timer and reads its transport, loop and pipeline",
        (
            *(
                Member(_WSPROTO_IMPL, "WSProtocol", name, lean_only=True)
                for name in ("handle_connect", "handle_message", "send_500_response", "send")
            ),
            *(
                Member(_WSPROTO_IMPL, "WSProtocol", name, in_init=True, lean_only=True)
                for name in ("queue", "writable", "read_paused", "conn", "close_timer")
            ),
            *(
                Member(_HTTPTOOLS_IMPL, "HttpToolsProtocol", name)
                for name in (
                    "on_message_begin",
                    "on_url",
                    "on_header",
                    "on_headers_complete",
                    "on_response_complete",
                    "_unset_keepalive_if_required",
                    "_start_asgi_task",
                    "timeout_keep_alive_handler",
                )
            ),
            *(
                Member(_HTTPTOOLS_IMPL, "HttpToolsProtocol", name, in_init=True)
                for name in (
                    "transport",
                    "loop",
                    "server_state",
                    "flow",
                    "pipeline",
                    "timeout_keep_alive",
                    "timeout_keep_alive_task",
                )
            ),
        ),
    ),
    Library(
        "wsproto",
        "1.3.",
        "gateway.edge.wsproto_lean reads the frame decoder's state to take small frames itself "
        "and talks to the frame-level Connection once the handshake is done",
        (
            Member("wsproto", "WSConnection", "connection", in_init=True, lean_only=True),
            *(
                Member("wsproto.connection", "Connection", name, in_init=True, lean_only=True)
                for name in ("_proto", "_events")
            ),
            *(
                Member(
                    "wsproto.frame_protocol", "FrameProtocol", name, in_init=True, lean_only=True
                )
                for name in ("_frame_decoder", "_message_decoder")
            ),
            *(
                Member("wsproto.frame_protocol", "FrameDecoder", name, in_init=True, lean_only=True)
                for name in ("header", "buffer")
            ),
            Member(
                "wsproto.frame_protocol", "MessageDecoder", "opcode", in_init=True, lean_only=True
            ),
        ),
        lean_only=True,
    ),
    Library(
        "httptools",
        "0.9.",
        "gateway.edge.handshake counts the request head in the parser's callbacks and stops an "
        "oversized one by raising in them, which the parser must turn into the parse error "
        "uvicorn answers with HTTP 400",
    ),
    Library(
        "google-cloud-firestore",
        "2.34.",
        "gateway.storage.firestore_store sends its commits as wire bytes on the async client's "
        "own gRPC channel, with the client's database name and call metadata",
        (
            *(
                Member(f"{_FIRESTORE}.async_client", "AsyncClient", name)
                for name in ("_firestore_api", "_database_string", "_rpc_metadata")
            ),
            Member(
                f"{_FIRESTORE}.services.firestore.async_client", "FirestoreAsyncClient", "transport"
            ),
            Member(
                f"{_FIRESTORE}.services.firestore.transports.grpc_asyncio",
                "FirestoreGrpcAsyncIOTransport",
                "grpc_channel",
            ),
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one library is not as tested: an untested (or missing) release, or a member gone."""

    library: Library
    installed: str | None
    member: Member | None = None

    @property
    def overridable(self) -> bool:
        """An untested release may run on the operator's word; a missing member cannot work."""
        return self.member is None and self.installed is not None

    def __str__(self) -> str:
        tested = f"tested with {self.library.tested}x"
        if self.installed is None:
            return f"{self.library.name} is not installed ({tested})"
        if self.member is not None:
            return f"{self.library.name} {self.installed} lacks {self.member} ({tested})"
        return f"{self.library.name} {self.installed} ({tested})"


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def has_member(member: Member) -> bool:
    """Whether ``member`` is still there (its module imports and its class has it)."""
    try:
        owner = getattr(importlib.import_module(member.module), member.owner)
    except (ImportError, AttributeError):
        return False
    if not member.in_init:
        return hasattr(owner, member.attribute)
    init = getattr(owner.__init__, "__code__", None)
    return init is not None and member.attribute in init.co_names


def check_versions(
    ws_implementation: str = LEAN_IMPLEMENTATION,
    version: Callable[[str], str | None] | None = None,
    present: Callable[[Member], bool] | None = None,
    libraries: Iterable[Library] = LIBRARIES,
) -> list[Problem]:
    """Every way the installed libraries differ from the tested ones, for the internals that
    ``ws_implementation`` uses (the lean protocol's only under ``wsproto``). ``version`` and
    ``present`` default to this module's ``installed_version`` and ``has_member``."""
    version = version or installed_version
    present = present or has_member
    lean = ws_implementation == LEAN_IMPLEMENTATION
    problems: list[Problem] = []
    for library in libraries:
        if library.lean_only and not lean:
            continue
        installed = version(library.name)
        if installed is None or not installed.startswith(library.tested):
            problems.append(Problem(library, installed))
            if installed is None:
                continue
        problems.extend(
            Problem(library, installed, member)
            for member in library.members
            if (lean or not member.lean_only) and not present(member)
        )
    return problems


def allowed_untested(environ: Mapping[str, str]) -> frozenset[str]:
    """The distribution names ``ALLOW_UNTESTED_LIBRARIES`` lets run untested."""
    raw = environ.get(ALLOW_UNTESTED, "")
    return frozenset(name.strip().lower() for name in raw.split(",") if name.strip())


def refused(problems: Iterable[Problem], environ: Mapping[str, str]) -> list[Problem]:
    """The problems ``ALLOW_UNTESTED_LIBRARIES`` does not let through."""
    allowed = allowed_untested(environ)
    return [p for p in problems if not (p.overridable and p.library.name in allowed)]


def lean_only(problem: Problem) -> bool:
    """Whether only the lean protocol (``WS_IMPLEMENTATION=wsproto``) needs what is wrong."""
    member = problem.member
    return problem.library.lean_only or (member is not None and member.lean_only)


def refusal(problems: Iterable[Problem]) -> tuple[str, str]:
    """The variable to name and the start-up error for ``problems`` (none of them allowed):
    what is not as tested, and the ways out."""
    problems = list(problems)
    variable = ALLOW_UNTESTED
    ways = ["install the tested release (requirements/gateway.txt pins it)"]
    if all(p.overridable for p in problems):
        names = ",".join(sorted({p.library.name for p in problems}))
        ways.append(f"set {ALLOW_UNTESTED}={names} to run it untested")
    if all(lean_only(p) for p in problems):
        # Another socket implementation does not run the lean protocol, so needs none of it.
        variable = "WS_IMPLEMENTATION"
        ways.append("set WS_IMPLEMENTATION=websockets-sansio")
    listed = "; ".join(str(p) for p in problems)
    return variable, f"the gateway uses library internals not as tested: {listed}. " + (
        ", or ".join(ways)
    )
