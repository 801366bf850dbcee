"""Every declared cross-instance operation through the one scatter/gather, over a loopback bus:
a healthy bus, every message delivered twice, an instance whose requests are lost, and an
instance whose receipts are lost.

Three instances: user ``u`` has a socket on B and one on C, user ``v`` one on A; all three
sockets are in room ``r``. Every operation is asked of A. A new operation without a scenario
here fails ``test_every_declared_operation_has_a_scenario``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
import pytest

from gateway.cluster import console
from gateway.cluster.batch import SendBatch
from gateway.cluster.deployment import Deployment
from gateway.cluster.fanout import Reply, Request
from gateway.cluster.operation import Delivery
from gateway.cluster.operations import (
    NOTICES,
    OPERATIONS,
    Broadcast,
    RoomMembers,
    RoomSend,
    Send,
    SignOut,
    Stats,
    Timeout,
)
from gateway.cluster.presence import PresenceSync
from gateway.protocol.closes import CloseCode
from gateway.protocol.messages import RoomResponse, StatsResponse
from tests.loopback import Cluster, LoopbackBus, Recorder

SOCKETS = {("b", "u", "s1"), ("c", "u", "s2"), ("a", "v", "s3")}


def texts(wire: Recorder) -> int:
    return len(wire.texts())


def closes(code: int) -> Callable[[Recorder], int]:
    def count(wire: Recorder) -> int:
        return sum(1 for m in wire.sent if m["type"] == "websocket.close" and m["code"] == code)

    return count


def nothing(wire: Recorder) -> int:
    return 0


def delivery(result: Delivery) -> tuple[int, list[str]]:
    return result.connections, result.unreachable


def stats(result: StatsResponse) -> tuple[int, list[str]]:
    return result.total_connections, result.unreachable_instances


def room(result: RoomResponse) -> tuple[int, list[str]]:
    return result.connections, result.unreachable_instances


def expired(result: tuple[int, int]) -> tuple[int, list[str]]:
    return result[0], []


class Scenario(NamedTuple):
    #: Asked of instance A.
    act: Callable[[Deployment], Awaitable[Any]]
    #: The answer as (sockets reached, counted or closed; instances named unreachable).
    summary: Callable[[Any], tuple[int, list[str]]]
    #: Sockets the operation acts on, as (instance, session).
    targets: set[tuple[str, str]]
    #: How many times a socket was acted on, from what it was sent.
    effect: Callable[[Recorder], int]


SESSIONS = [("u", "s1"), ("u", "s2"), ("v", "s3")]
SCENARIOS: dict[type[Request], Scenario] = {
    Send: Scenario(
        lambda a: a.send("u", {"type": "x"}), delivery, {("b", "s1"), ("c", "s2")}, texts
    ),
    SignOut: Scenario(
        lambda a: a.close_user("u"),
        delivery,
        {("b", "s1"), ("c", "s2")},
        closes(CloseCode.SIGNED_OUT),
    ),
    Broadcast: Scenario(
        lambda a: a.broadcast({"type": "x"}), delivery, {(i, s) for i, _, s in SOCKETS}, texts
    ),
    RoomSend: Scenario(
        lambda a: a.room_send("r", {"type": "x"}), delivery, {(i, s) for i, _, s in SOCKETS}, texts
    ),
    Timeout: Scenario(
        lambda a: a.expire(SESSIONS),
        expired,
        {(i, s) for i, _, s in SOCKETS},
        closes(CloseCode.SESSION_EXPIRED),
    ),
    Stats: Scenario(lambda a: a.stats(), stats, {(i, s) for i, _, s in SOCKETS}, nothing),
    SendBatch: Scenario(
        lambda a: a.send_batch([(0, "u", '{"type":"x"}'), (1, "v", '{"type":"y"}')]),
        lambda result: (sum(o.connections for o in result[0]), result[1].unreachable),
        {(i, s) for i, _, s in SOCKETS},
        texts,
    ),
    RoomMembers: Scenario(
        lambda a: a.room_members("r"), room, {(i, s) for i, _, s in SOCKETS}, nothing
    ),
}


#: Operations whose effect is on the room presence view rather than on sockets: their lost,
#: duplicated and unanswered messages are played in tests/unit/test_presence_cluster.py.
VIEW_OPERATIONS = {PresenceSync}
#: The console's read-only operations: played the same ways in tests/unit/test_console_ops.py.
CONSOLE_OPERATIONS = {console.ConsoleOverview, console.ConsoleUser, console.ConsoleEvents}


def test_every_declared_operation_has_a_scenario() -> None:
    """Adding an operation to OPERATIONS without a scenario here fails."""
    assert set(SCENARIOS) == set(OPERATIONS) - NOTICES - VIEW_OPERATIONS - CONSOLE_OPERATIONS


async def run(
    kind: type[Request], bus: LoopbackBus
) -> tuple[tuple[int, list[str]], dict[str, int]]:
    scenario = SCENARIOS[kind]
    async with Cluster("a", "b", "c", bus=bus) as cluster:
        wires = {}
        for instance, user, session in sorted(SOCKETS):
            wires[(instance, session)] = cluster.socket(instance, user, session)
            [conn] = cluster.at[instance].service.registry.sockets_of(user)
            cluster.at[instance].service.rooms.join(conn, "r", None)
        answer = await scenario.act(cluster.at["a"])
        await asyncio.sleep(0.05)  # let duplicated and late messages land
        effects = {f"{i}/{s}": scenario.effect(w) for (i, s), w in wires.items()}
        return scenario.summary(answer), effects


def expected_effects(kind: type[Request], lost: set[str]) -> dict[str, int]:
    scenario = SCENARIOS[kind]
    if scenario.effect is nothing:
        return {f"{i}/{s}": 0 for i, _, s in SOCKETS}
    return {f"{i}/{s}": int((i, s) in scenario.targets and i not in lost) for i, _, s in SOCKETS}


def everything(kind: type[Request]) -> int:
    return len(SCENARIOS[kind].targets)


@pytest.mark.parametrize("kind", list(SCENARIOS), ids=lambda k: k.__name__)
async def test_on_a_healthy_bus_every_instance_answers_and_each_socket_is_acted_on_once(
    kind: type[Request],
) -> None:
    """Every target socket, on whichever instance, is reached once; nobody is unreachable."""
    summary, effects = await run(kind, LoopbackBus())
    assert summary == (everything(kind), [])
    assert effects == expected_effects(kind, set())


@pytest.mark.parametrize("kind", list(SCENARIOS), ids=lambda k: k.__name__)
async def test_duplicated_messages_act_once_and_count_once(kind: type[Request]) -> None:
    """Pub/Sub's redeliveries (every request and receipt twice) change neither the answer
    nor what the sockets get."""
    bus = LoopbackBus()
    bus.duplicate = True
    summary, effects = await run(kind, bus)
    assert summary == (everything(kind), [])
    assert effects == expected_effects(kind, set())


@pytest.mark.parametrize("kind", list(SCENARIOS), ids=lambda k: k.__name__)
async def test_an_instance_that_never_hears_the_request_is_named_and_its_sockets_untouched(
    kind: type[Request],
) -> None:
    """Requests to C are lost: the answer counts A's and B's part and names C (a timeout
    counts C's session as not found), and C's socket is not acted on."""
    bus = LoopbackBus()
    bus.deaf.add("c")
    summary, effects = await run(kind, bus)
    named = [] if kind is Timeout else ["c"]
    assert summary == (everything(kind) - 1, named)
    assert effects == expected_effects(kind, {"c"})


@pytest.mark.parametrize("kind", list(SCENARIOS), ids=lambda k: k.__name__)
async def test_a_lost_receipt_names_the_instance_that_did_the_work(kind: type[Request]) -> None:
    """C acts on its socket but its receipt is lost: the answer names C unreachable (its
    sockets may or may not have been reached, and the caller is told so)."""
    bus = LoopbackBus()
    bus.lose_replies_from.add("c")
    summary, effects = await run(kind, bus)
    named = [] if kind is Timeout else ["c"]
    assert summary == (everything(kind) - 1, named)
    assert effects == expected_effects(kind, set())


#: The fields of the single fan-out struct the previous release encoded and decoded: during a
#: rolling deploy, old and new instances read each other's messages only if the tagged union
#: keeps to these names.
PREVIOUS_FIELDS = {
    *("kind", "id", "origin", "user_id", "text", "exclude_user", "sessions", "expect"),
    *("instance", "connections", "users", "user_count", "digests", "closed", "stats"),
    *("room", "offset", "limit"),
}


#: Added since: an instance of the previous release drops a batch as undecodable (and is named
#: unreachable in the answer) and ignores a receipt's ``counts`` and ``pending`` (an entry still
#: being delivered then reads to it as not delivered on that instance).
NEW_FIELDS: dict[type[Any], set[str]] = {
    SendBatch: {"entries"},
    Reply: {"counts", "pending", "presence", "as_of", "console"},
    PresenceSync: {"only"},
    # The console's: an instance of the previous release drops them (named unreachable).
    console.ConsoleEvents: {"event_kind"},
}


def test_the_wire_keeps_the_previous_releases_field_names() -> None:
    """Every request and receipt field is one an instance of the previous release knows, and
    a request it encoded decodes to the declared request."""
    for kind in [*(set(OPERATIONS) - NOTICES), Reply]:
        assert set(kind.__struct_fields__) - NEW_FIELDS.get(kind, set()) <= PREVIOUS_FIELDS, kind
    old = b'{"kind":"send","id":"1","origin":"x","user_id":"u","text":"t","expect":["a"]}'
    decoded = msgspec.json.decode(old, type=Send | Reply)
    assert decoded == Send(id="1", origin="x", user_id="u", text="t", expect=["a"])
