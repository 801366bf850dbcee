"""Rooms: names, grants, limits and the registry (gateway.protocol.rooms), the join/leave frames,
the service's analytics, and room send / membership across instances over a loopback broker.

The same behaviour with real gateway processes, tokens and Pub/Sub is in
tests/e2e/test_rooms.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from gateway.exceptions import ConfigError, ProtocolError
from gateway.instance import auth
from gateway.instance.auth import identity_from
from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.protocol.frames import JoinRoom, LeaveRoom, decode_frame
from gateway.protocol.messages import utc_now
from gateway.protocol.rooms import (
    MAX_GRANTS,
    MAX_ROOM_NAME,
    RoomRefused,
    RoomRegistry,
    allows,
    grants_from_claims,
    refused_grants,
    valid_prefix,
    valid_room_name,
)
from gateway.settings import Settings
from gateway.storage.store import MemoryStore
from tests.loopback import Cluster, Recorder
from tests.support import unit_settings


def conn(user: str, session: str, grants: tuple[str, ...] | None = None) -> Connection:
    return Connection(user, session, utc_now(), Recorder(), room_grants=grants)


# --- names, grants ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "room", ["lobby", "team-42", "doc:7f3a", "a.b_c@d", "x" * MAX_ROOM_NAME, "0"]
)
def test_room_names_of_the_allowed_characters_and_length_are_valid(room: str) -> None:
    """Letters, digits and ``_ - . : @``, 1 to 128 characters."""
    assert valid_room_name(room)


@pytest.mark.parametrize(
    "room", ["", "x" * (MAX_ROOM_NAME + 1), "a b", "a/b", "team*", "ünï", "a\nb", "a?b", "#x"]
)
def test_room_names_outside_the_rules_are_invalid(room: str) -> None:
    """Empty, too long, spaces, slashes, ``*``, non-ASCII and control characters are refused."""
    assert not valid_room_name(room)


def test_the_rooms_claim_becomes_grants_and_a_malformed_claim_grants_nothing() -> None:
    """Only a list of non-empty strings grants rooms; anything else fails closed."""
    assert grants_from_claims({"rooms": ["a", "b*", 3, "", None]}) == ("a", "b*")
    assert grants_from_claims({"rooms": "a"}) == ()
    assert grants_from_claims({"rooms": {"a": True}}) == ()
    assert grants_from_claims({}) == ()
    assert len(grants_from_claims({"rooms": ["r"] * (MAX_GRANTS + 5)})) == MAX_GRANTS


def test_a_grant_is_an_exact_name_or_a_prefix_ending_in_a_star() -> None:
    """``team-42`` allows that room only; ``doc:*`` the room ``doc`` and every room under
    ``doc:``; public prefixes allow anyone with a token; no token at all (auth off) allows
    everything."""
    grants = ("team-42", "doc:*")
    assert allows("team-42", grants)
    assert not allows("team-420", grants)
    assert allows("doc:7f3a", grants) and allows("doc:", grants) and allows("doc", grants)
    assert not allows("docs", grants)
    assert not allows("lobby", ())
    assert allows("public:lobby", (), ["public:"])
    assert allows("anything", None)


def test_a_prefix_grant_ends_at_a_separator_and_covers_its_own_room_and_those_under_it() -> None:
    """``doc:7f:*`` allows ``doc:7f`` and ``doc:7f:…``, never ``doc:7fX`` (another document)
    nor ``doc:7`` or ``doc``."""
    grants = ("doc:7f:*",)
    assert allows("doc:7f", grants) and allows("doc:7f:comments", grants)
    assert allows("doc:7f:a:b", grants)
    for room in ("doc:7fX", "doc:7f0", "doc:7f-x", "doc:7f.x", "doc:7", "doc", "doc:7e:x"):
        assert not allows(room, grants), room


@pytest.mark.parametrize("grant", ["*", "doc:7f*", "doc*", "team-*", "a.b*", "x@*", "doc:7f:**"])
def test_a_star_grant_whose_prefix_does_not_end_at_a_separator_grants_nothing(grant: str) -> None:
    """A bare ``*`` and ``prefix*`` without the ``:`` grant no room at all, not even the ones
    they start with, and are the grants reported as refused."""
    for room in ("doc:7f", "doc:7fX", "doc:7f:x", "team-42", "a.bc", "x@y", "anything", "doc"):
        assert not allows(room, (grant,)), room
    assert refused_grants((grant, "doc:7f:*", "lobby")) == [grant]


def test_a_refused_grant_leaves_the_tokens_other_grants_working() -> None:
    """A claim mixing a bare ``*`` with good grants still allows what the good ones allow."""
    grants = grants_from_claims({"rooms": ["*", "lobby", "doc:7f:*"]})
    assert allows("lobby", grants) and allows("doc:7f:x", grants)
    assert not allows("other", grants) and not allows("doc:7fX", grants)


def test_a_public_prefix_ends_at_a_separator_like_a_grant() -> None:
    """``public:`` opens ``public`` and ``public:…``, not ``publicity``; a prefix without the
    separator (which settings refuse at start-up) opens nothing."""
    assert allows("public", (), ["public:"]) and allows("public:lobby", (), ["public:"])
    assert not allows("publicity", (), ["public:"])
    assert not allows("publicity", (), ["public"]) and not allows("public:x", (), ["public"])
    assert valid_prefix("public:") and valid_prefix("org-9:team:")
    assert not valid_prefix("public") and not valid_prefix("lobby-") and not valid_prefix(":*")


def test_refused_grants_are_logged_once_each(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verifying tokens whose claims carry ``*`` or ``doc:7f*`` logs one warning per distinct
    refused grant, however many tokens carry it; good grants log nothing; past
    MAX_REPORTED_GRANTS distinct ones, no more are logged (claims cannot grow the set)."""
    monkeypatch.setattr(auth, "_reported_grants", set())
    monkeypatch.setattr(auth, "MAX_REPORTED_GRANTS", 3)
    caplog.set_level(logging.WARNING, logger="gateway.instance.auth")
    claims = {"uid": "u1", "auth_time": 1_700_000_000, "exp": 1_700_003_600}
    for _ in range(3):
        identity_from({**claims, "rooms": ["*", "doc:7f*", "lobby", "doc:7f:*"]})
        identity_from({**claims, "rooms": ["doc:7f*"]})
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway.instance.auth"]
    assert len(logged) == 2, logged
    assert "'*' grants nothing" in logged[0] and "'doc:7f*' grants nothing" in logged[1]
    identity_from({**claims, "rooms": [f"x{n}*" for n in range(5)]})
    assert len([r for r in caplog.records if r.name == "gateway.instance.auth"]) == 3


# --- the registry ---------------------------------------------------------------------------


def test_join_and_leave_track_members_both_ways() -> None:
    """A socket in two rooms is listed in both; leaving, and closing, take it out; empty
    rooms disappear."""
    registry: RoomRegistry[Connection] = RoomRegistry()
    a, b = conn("u1", "s1"), conn("u2", "s2")
    assert registry.join(a, "r1", None) and registry.join(a, "r2", None)
    assert registry.join(b, "r1", None)
    assert not registry.join(a, "r1", None), "joining twice changes nothing"
    assert registry.rooms_of(a) == ["r1", "r2"]
    assert sorted(c.session_id for c in registry.members("r1")) == ["s1", "s2"]
    assert (registry.total_rooms, registry.total_memberships) == (2, 3)
    assert registry.leave(b, "r1") and not registry.leave(b, "r1")
    assert registry.leave_all(a) == ["r1", "r2"]
    assert registry.rooms() == {} and registry.total_memberships == 0
    assert registry.members("r1") == [] and registry.size("r1") == 0


def test_joins_are_refused_with_the_first_rule_they_break() -> None:
    """Invalid name, then the grants, then the socket's room limit, then the room's member
    limit; a refused join changes nothing."""
    registry: RoomRegistry[Connection] = RoomRegistry(max_rooms_per_socket=2, max_members=2)
    member = conn("u1", "s1")

    def refusal(c: Connection, room: str, grants: tuple[str, ...] | None) -> str:
        with pytest.raises(RoomRefused) as caught:
            registry.join(c, room, grants)
        assert caught.value.room == room[: MAX_ROOM_NAME + 1]
        return caught.value.code

    assert refusal(member, "no spaces", None) == "invalid_room"
    assert refusal(member, "x" * 500, None) == "invalid_room"
    assert refusal(member, "secret", ("lobby",)) == "room_forbidden"
    registry.join(member, "a", None)
    registry.join(member, "b", None)
    assert refusal(member, "c", None) == "too_many_rooms"
    registry.join(conn("u2", "s2"), "a", None)
    assert refusal(conn("u3", "s3"), "a", None) == "room_full"
    assert registry.rooms() == {"a": 2, "b": 1}


def test_a_limit_of_zero_is_no_limit() -> None:
    """With both limits 0, a socket joins many rooms and a room takes many sockets."""
    registry: RoomRegistry[Connection] = RoomRegistry(0, 0)
    for n in range(300):
        registry.join(conn(f"u{n}", f"s{n}"), "big", None)
        registry.join(conn("u0", "s0"), f"r{n}", None)
    assert registry.size("big") == 300 and len(registry.rooms_of(conn("u0", "s0"))) == 301


# --- the frames -----------------------------------------------------------------------------


def test_join_and_leave_frames_decode_with_their_room_and_id() -> None:
    """``join`` and ``leave`` carry a string ``room`` and an optional string/integer ``id``;
    the name's rules are checked later, so that the refusal can echo the room."""
    assert decode_frame('{"type":"join","room":"lobby","id":7}', None, 1000) == JoinRoom("lobby", 7)
    assert decode_frame('{"type":"leave","room":"a b"}', None, 1000) == LeaveRoom("a b", None)


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"join"}',
        '{"type":"join","room":5}',
        '{"type":"leave","room":null}',
        '{"type":"join","room":"a","id":true}',
        '{"type":"join","room":"a","id":[1]}',
    ],
)
def test_join_and_leave_frames_without_a_string_room_or_with_a_bad_id_are_invalid(
    frame: str,
) -> None:
    """A missing or non-string ``room``, or an ``id`` that is not a string or an integer, is
    an ``invalid_field`` error."""
    with pytest.raises(ProtocolError) as caught:
        decode_frame(frame, None, 1000)
    assert caught.value.code == "invalid_field"


# --- settings -------------------------------------------------------------------------------

BASE = {"GATEWAY_ADMIN_TOKEN": "t" * 20, "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080"}


def test_room_settings_have_defaults_and_are_read_from_the_environment() -> None:
    """50 rooms per socket, 10,000 members per room, no public prefixes by default."""
    default = Settings.from_env(BASE)
    assert (default.sockets.max_rooms_per_socket, default.sockets.max_room_members) == (50, 10_000)
    assert default.sockets.public_room_prefixes == ()
    custom = Settings.from_env(
        {
            **BASE,
            "WS_MAX_ROOMS_PER_SOCKET": "3",
            "WS_MAX_ROOM_MEMBERS": "0",
            "WS_PUBLIC_ROOM_PREFIXES": "public:, lobby:",
        }
    )
    assert (custom.sockets.max_rooms_per_socket, custom.sockets.max_room_members) == (3, 0)
    assert custom.sockets.public_room_prefixes == ("public:", "lobby:")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WS_MAX_ROOMS_PER_SOCKET", "-1"),
        ("WS_MAX_ROOMS_PER_SOCKET", "many"),
        ("WS_MAX_ROOM_MEMBERS", "inf"),
        ("WS_PUBLIC_ROOM_PREFIXES", "public/"),
        ("WS_PUBLIC_ROOM_PREFIXES", "ok:,every*"),
        ("WS_PUBLIC_ROOM_PREFIXES", "public"),
        ("WS_PUBLIC_ROOM_PREFIXES", "ok:,lobby-"),
        ("FORWARDED_ALLOW_IPS", "10.0.0.1,proxy.internal"),
        ("FORWARDED_ALLOW_IPS", "10.0.0.0/33"),
    ],
)
def test_invalid_room_and_proxy_settings_name_the_variable(name: str, value: str) -> None:
    """A bad value stops the start with a ConfigError naming the variable."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, name: value})
    assert caught.value.name == name


def test_forwarded_headers_are_believed_from_loopback_locally_and_from_any_peer_on_cloud_run() -> (
    None
):
    """Locally only a proxy on the same host may set X-Forwarded-*; on Cloud Run (K_SERVICE)
    every peer is Google's front end; FORWARDED_ALLOW_IPS overrides both."""
    assert Settings.from_env(BASE).sockets.forwarded_allow_ips == "127.0.0.1,::1"
    assert Settings.from_env({**BASE, "K_SERVICE": "gw"}).sockets.forwarded_allow_ips == "*"
    chosen = "10.0.0.0/8, 192.168.1.7"
    trusted = Settings.from_env({**BASE, "FORWARDED_ALLOW_IPS": chosen}).sockets
    assert trusted.forwarded_allow_ips == chosen


# --- the service: joins, analytics, cleanup ---------------------------------------------------


def service(**overrides: Any) -> PresenceService:
    settings = unit_settings(**overrides)
    return PresenceService(settings, MemoryStore())


def test_joins_and_leaves_are_analytics_events_and_a_closed_socket_leaves_its_rooms(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each join and leave is a ``gateway.events`` entry with the room (and why it left);
    closing the socket leaves every room with reason ``disconnect``; refusals are counted by
    code."""
    svc = service(max_rooms_per_socket=2)
    member = conn("u1", "s1", ("team:*",))
    svc.connected(member)
    caplog.set_level(logging.INFO, logger="gateway.events")
    assert svc.join_room(member, "team:1") and svc.join_room(member, "team:2")
    with pytest.raises(RoomRefused):
        svc.join_room(member, "team:3")
    with pytest.raises(RoomRefused):
        svc.join_room(member, "other")
    assert svc.leave_room(member, "team:1") and not svc.leave_room(member, "team:1")
    svc.disconnected(member, 1000)
    events = [r.event for r in caplog.records if hasattr(r, "event")]  # type: ignore[attr-defined]
    rooms = [(e["kind"], e["room"], e.get("reason")) for e in events if "room" in e]
    assert rooms == [
        ("room_join", "team:1", None),
        ("room_join", "team:2", None),
        ("room_leave", "team:1", "leave"),
        ("room_leave", "team:2", "disconnect"),
    ]
    assert svc.events.counts["room_join"] == 2 and svc.events.counts["room_leave"] == 2
    assert svc.room_refusals == {"too_many_rooms": 1, "room_forbidden": 1}
    assert svc.rooms.total_memberships == 0


async def test_a_refreshed_token_without_the_grant_leaves_the_room_and_says_so() -> None:
    """When a new token no longer grants a room, the socket is taken out of it and told with
    ``left`` and ``reason: "not_allowed"``; rooms still granted, or public, are kept."""
    svc = service(public_room_prefixes=("public:",))
    member = conn("u1", "s1", ("a", "b"))
    svc.connected(member)
    for room in ("a", "b", "public:x"):
        svc.join_room(member, room)
    member.room_grants = ("b",)
    assert await svc.drop_ungranted_rooms(member) == ["a"]
    assert svc.rooms.rooms_of(member) == ["b", "public:x"]
    wire = member._send
    assert isinstance(wire, Recorder)
    [left] = [json.loads(t) for t in wire.texts()]
    assert (left["type"], left["room"], left["reason"]) == ("left", "a", "not_allowed")


# --- across instances (loopback broker) -------------------------------------------------------


async def test_a_room_send_reaches_the_members_on_every_instance_once_and_nobody_else() -> None:
    """A room send answered by A reaches members on A, B and C once each (a user with two
    member sockets counts once in recipients); a non-member socket gets nothing."""
    async with Cluster("a", "b", "c") as cluster:
        wires = {}
        for instance, user, session in [("a", "u1", "1"), ("b", "u1", "2"), ("c", "u2", "3")]:
            wires[session] = cluster.socket(instance, user, session)
            service = cluster.at[instance].service
            [held] = [c for c in service.registry if c.session_id == session]
            held.room_grants = ("team",)
            service.join_room(held, "team")
        outsider = cluster.socket("b", "u3", "4")
        sent = await cluster.at["a"].room_send("team", {"type": "news"})
        assert (sent.connections, sent.recipients, sent.scope) == (3, 2, "deployment")
        assert sorted(sent.instances) == ["a", "b", "c"] and sent.unreachable == []
        for wire in wires.values():
            assert wire.texts() == ['{"type":"news"}']
        assert outsider.texts() == []
        members = await cluster.at["b"].room_members("team")
        assert [(m.user_id, m.session_id, m.instance_id) for m in members.members] == [
            ("u1", "1", "a"),
            ("u1", "2", "b"),
            ("u2", "3", "c"),
        ]
        assert (members.connections, members.users, members.total_users) == (3, ["u1", "u2"], 2)
        assert (members.scope, members.instances) == ("deployment", ["a", "b", "c"])
        alone = await cluster.at["c"].room_members("team", everywhere=False)
        assert (alone.scope, alone.connections, alone.instances) == ("instance", 1, ["c"])
        nobody = await cluster.at["a"].room_send("empty", {"type": "x"})
        assert (nobody.connections, nobody.recipients) == (0, 0)
