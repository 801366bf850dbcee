"""The service's own loops and decisions with the in-memory store (no sockets, no Firestore)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from gateway.exceptions import DeploymentUnavailable, PeerError, UserNotConnectedError
from gateway.messages import utc_now
from gateway.peers import Instance, Peers
from gateway.registry import Connection
from gateway.service import CLOSE_SESSION_EXPIRED, Delivery, PresenceService
from gateway.settings import Settings
from gateway.store import MemoryStore
from tests.support import eventually


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def settings(**overrides: Any) -> Settings:
    return Settings(admin_tokens=("a" * 20,), project_id="demo-unit", **overrides)


async def test_heartbeat_and_reconcile_run_every_sweep_interval() -> None:
    """The instance document gets heartbeats, and a session signed out in Firestore whose
    callback never came is closed with the timeout message and 4408, once."""
    store = MemoryStore()
    service = PresenceService(settings(sweep_interval=0.05, ping_interval=60), store)
    await service.start()
    try:
        wire = Recorder()
        conn = Connection("u1", "s1", utc_now(), wire)
        service.connected(conn)
        await service.writer.flush_once()
        first_beat = store.docs[("gateway_instances", service.settings.instance_id)]
        started = first_beat["heartbeat_at"]
        store.docs[("sessions", "s1")]["signed_out_at"] = utc_now()

        async def closed() -> bool:
            return any(m["type"] == "websocket.close" for m in wire.sent)

        await eventually(closed, timeout=5)
        kinds = [m["type"] for m in wire.sent]
        assert kinds == ["websocket.send", "websocket.close"]
        assert wire.sent[1]["code"] == CLOSE_SESSION_EXPIRED
        assert '"type":"timeout"' in wire.sent[0]["text"]
        await asyncio.sleep(0.2)  # more reconcile passes: no second timeout
        assert len(wire.sent) == 2

        async def beat_moved() -> bool:
            doc = store.docs[("gateway_instances", service.settings.instance_id)]
            return bool(doc["heartbeat_at"] > started)

        await eventually(beat_moved, timeout=5)
    finally:
        await service.stop()
    assert "stopped_at" in store.docs[("gateway_instances", service.settings.instance_id)]


class FakePeers(Peers):
    """Other instances answering from a table instead of over HTTP."""

    def __init__(
        self,
        sockets: dict[str, dict[str, int]],
        users: dict[str, list[str]] | None = None,
        down: frozenset[str] = frozenset(),
    ) -> None:
        self.sockets, self.users, self.down = sockets, users or {}, down
        self.calls: list[tuple[str, str]] = []

    def _check(self, peer: Instance, what: str) -> None:
        self.calls.append((peer.instance_id, what))
        if peer.instance_id in self.down:
            raise PeerError(peer.instance_id, "unreachable")

    async def send(self, peer: Instance, user_id: str, body: bytes) -> int:
        self._check(peer, f"send {user_id}")
        return self.sockets.get(peer.instance_id, {}).get(user_id, 0)

    async def broadcast(
        self, peer: Instance, body: bytes, exclude_user: str | None
    ) -> tuple[int, list[str]]:
        self._check(peer, "broadcast")
        users = [u for u in self.users.get(peer.instance_id, []) if u != exclude_user]
        return len(users), users

    async def close(self) -> None:
        return None


def register(store: MemoryStore, instance_id: str, *, age: float = 0.0) -> None:
    beat = utc_now() - timedelta(seconds=age)
    store.docs[("gateway_instances", instance_id)] = {
        "internal_url": f"http://{instance_id}",
        "heartbeat_at": beat,
    }


def place(store: MemoryStore, user_id: str, **sessions: str) -> None:
    """Record the user's sessions (session id -> instance id) on the member."""
    store.docs[("members", user_id)] = {
        "active_sessions": {s: {"instance_id": i} for s, i in sessions.items()}
    }


def local_socket(service: PresenceService, user_id: str, session_id: str) -> Recorder:
    wire = Recorder()
    service.registry.add(Connection(user_id, session_id, utc_now(), wire))
    return wire


async def test_send_reaches_this_instance_and_the_live_instances_holding_the_user() -> None:
    """Sockets here get it directly; the live instance in the member's sessions is asked;
    a dead instance in the same record (stale heartbeat) is not."""
    store = MemoryStore()
    register(store, "p1")
    register(store, "dead", age=600)
    place(store, "u", s1="local", s2="p1", s3="dead")
    peers = FakePeers({"p1": {"u": 2}})
    service = PresenceService(settings(instance_id="local"), store, peers=peers)
    wire = local_socket(service, "u", "s1")
    sent = await service.send_to_user("u", {"type": "hello"})
    assert sent == Delivery(3, 1, ["local", "p1"], [], "deployment")
    assert peers.calls == [("p1", "send u")]
    assert wire.sent[0]["text"] == '{"type":"hello"}'


async def test_send_to_a_user_nowhere_is_404_and_to_an_unreachable_instance_503() -> None:
    store = MemoryStore()
    register(store, "p1")
    register(store, "dead", age=600)
    place(store, "on-dead", s1="dead")
    place(store, "on-p1", s1="p1")
    service = PresenceService(
        settings(instance_id="local"), store, peers=FakePeers({}, down=frozenset({"p1"}))
    )
    with pytest.raises(UserNotConnectedError):
        await service.send_to_user("on-dead", {"type": "x"})
    with pytest.raises(UserNotConnectedError):
        await service.send_to_user("unknown", {"type": "x"})
    with pytest.raises(DeploymentUnavailable, match="did not answer: p1"):
        await service.send_to_user("on-p1", {"type": "x"})


async def test_without_firestore_send_falls_back_to_this_instance_and_says_so() -> None:
    store = MemoryStore()

    async def down(user_id: str, timeout: float) -> None:
        raise ConnectionError("Firestore unavailable")

    store.get_member = down  # type: ignore[method-assign]
    service = PresenceService(settings(instance_id="local"), store, peers=FakePeers({}))
    local_socket(service, "here", "s1")
    assert await service.send_to_user("here", {"type": "x"}) == Delivery(
        1, 1, ["local"], [], "instance"
    )
    with pytest.raises(DeploymentUnavailable, match="cannot tell where"):
        await service.send_to_user("elsewhere", {"type": "x"})


async def test_broadcast_counts_each_user_once_and_names_unreachable_instances() -> None:
    store = MemoryStore()
    for instance in ("p1", "p2"):
        register(store, instance)
    register(store, "stopped")
    store.docs[("gateway_instances", "stopped")]["stopped_at"] = utc_now()
    peers = FakePeers({}, users={"p1": ["u2", "u3", "skip"]}, down=frozenset({"p2"}))
    service = PresenceService(settings(instance_id="local"), store, peers=peers)
    local_socket(service, "u1", "s1")
    local_socket(service, "u2", "s2")
    local_socket(service, "skip", "s3")
    sent = await service.broadcast({"type": "news"}, exclude_user="skip")
    assert sent == Delivery(4, 3, ["local", "p1"], ["p2"], "deployment")
    assert sorted(peers.calls) == [("p1", "broadcast"), ("p2", "broadcast")]
    assert service.peer_calls == {("broadcast", "ok"): 1, ("broadcast", "failed"): 1}


async def test_without_an_internal_credential_everything_stays_on_this_instance() -> None:
    service = PresenceService(settings(instance_id="local"), MemoryStore())
    local_socket(service, "u", "s1")
    assert await service.send_to_user("u", {"type": "x"}) == Delivery(
        1, 1, ["local"], [], "instance"
    )
    assert await service.broadcast({"type": "x"}) == Delivery(1, 1, ["local"], [], "instance")
    assert await service.peer_stats() is None


async def test_every_pong_is_written_by_default() -> None:
    service = PresenceService(settings(), MemoryStore())
    conn = Connection("u", "s1", utc_now(), Recorder())
    for _ in range(3):
        service.pong(conn, utc_now())
    assert (service.writer.pongs_received, service.pongs_unwritten) == (3, 0)


async def test_pong_write_interval_writes_a_user_at_most_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With PONG_WRITE_INTERVAL=60 a user's pongs within 60 s cost one write; the next one
    after 60 s is written; a user's state is dropped with the last socket."""
    clock = [1000.0]
    monkeypatch.setattr("gateway.service.time.monotonic", lambda: clock[0])
    service = PresenceService(settings(pong_write_interval=60.0), MemoryStore())
    a1 = Connection("a", "s1", utc_now(), Recorder())
    a2 = Connection("a", "s2", utc_now(), Recorder())
    b = Connection("b", "s3", utc_now(), Recorder())
    for conn in (a1, a2, b):
        service.registry.add(conn)
    service.pong(a1, utc_now())
    service.pong(a2, utc_now())  # same user, within the interval
    service.pong(b, utc_now())
    clock[0] += 30
    service.pong(a1, utc_now())
    assert (service.writer.pongs_received, service.pongs_unwritten) == (2, 2)
    clock[0] += 31
    service.pong(a2, utc_now())
    assert service.writer.pongs_received == 3
    service.disconnected(a1, 1000)
    service.disconnected(a2, 1000)
    assert "a" not in service._pong_written and "b" in service._pong_written


async def test_an_instance_registered_under_this_instances_url_is_not_called() -> None:
    """Where instances cannot be addressed one by one (Cloud Run without
    GATEWAY_INTERNAL_URL), they all register the same URL: calling it would come back here,
    so it is reported unreachable instead."""
    store = MemoryStore()
    register(store, "twin")
    service_settings = settings(instance_id="local", internal_url="http://twin")
    peers = FakePeers({}, users={"twin": ["elsewhere"]})
    service = PresenceService(service_settings, store, peers=peers)
    local_socket(service, "u1", "s1")
    sent = await service.broadcast({"type": "news"})
    assert sent == Delivery(1, 1, ["local"], ["twin"], "deployment")
    assert peers.calls == []
