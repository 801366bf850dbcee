"""The soak's population: a few hundred Python clients (clients/python) in one event loop,
each recording its timeline.

Roles (:mod:`tests.soak.timeline`): most answer every ping and stay; some go silent at a
seeded moment and must be signed out; some churn (close, wait, connect again); some hold a
durable stream; some are in a room; a third of the steady ones refresh their token now and
then. Every client reconnects with the client's own backoff, capped at 5 s so that the end of
a run does not wait on a 20 s backoff.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from presence_client import (
    AuthError,
    Disconnected,
    Joined,
    PresenceClient,
    Recovery,
    SignedOut,
    State,
    StreamMessage,
    TokenRefreshed,
)
from tests.soak.timeline import (
    AUTH_ERROR,
    CHURN,
    CLOSED,
    CONNECTED,
    DISCONNECTED,
    DURABLE,
    JOINED,
    RECOVERY,
    REFRESHED,
    ROOM,
    ROOM_MESSAGE,
    SIGNED_OUT,
    SILENT,
    STEADY,
    STREAM,
    WENT_SILENT,
    Timeline,
)

#: Share of the population in each role (the rest steady).
SHARES = {SILENT: 0.10, CHURN: 0.15, DURABLE: 0.15, ROOM: 0.15}
ROOMS = tuple(f"public:soak-{n}" for n in range(4))
ROOM_TYPE = "soak_room"
DURABLE_TYPE = "soak_durable"


def assign_roles(count: int, nonce: str) -> dict[str, str]:
    """User id -> role for ``count`` users (deterministic: the i-th user's role is fixed)."""
    users: dict[str, str] = {}
    edges: list[tuple[float, str]] = []
    acc = 0.0
    for role, share in SHARES.items():
        acc += share
        edges.append((acc, role))
    for i in range(count):
        where = (i + 0.5) / count
        role = next((r for edge, r in edges if where < edge), STEADY)
        users[f"soak-{nonce}-{role}-{i}"] = role
    return users


def room_of(user: str) -> str:
    return ROOMS[int(user.rsplit("-", 1)[1]) % len(ROOMS)]


class Population:
    def __init__(
        self,
        url: str,
        users: dict[str, str],
        mint: Callable[[str], str],
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.url = url
        self.users = users
        self.mint = mint
        self.clock = clock
        self.rng = rng
        self.timelines = {user: Timeline(user, role) for user, role in users.items()}
        self.tokens: dict[str, str] = {}
        self.clients: dict[str, PresenceClient] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="soak-mint")

    def mint_all(self) -> None:
        """An ID token for every user, minted up front (the Auth emulator creates each user on
        its first sign-in)."""
        self.tokens = dict(zip(self.users, self._executor.map(self.mint, self.users), strict=True))

    async def _get_token(self, user: str, force: bool) -> str:
        if force or user not in self.tokens:
            loop = asyncio.get_running_loop()
            self.tokens[user] = await loop.run_in_executor(self._executor, self.mint, user)
        return self.tokens[user]

    def _client(self, user: str, role: str) -> PresenceClient:
        timeline = self.timelines[user]

        async def get_token(force: bool) -> str:
            return await self._get_token(user, force)

        client = PresenceClient(
            self.url,
            user,
            get_token,
            backoff_max=5.0,
            recover=role == DURABLE,
            connect_timeout=30.0,
            random=self.rng.random,
        )
        note = timeline.add
        client.on("connected", lambda _e: note(self.clock(), CONNECTED))
        client.on("disconnected", lambda e: self._disconnected(timeline, e))
        client.on("signed_out", lambda e: self._signed_out(timeline, e))
        client.on("auth_error", lambda e: self._auth_error(timeline, e))
        client.on("joined", lambda e: self._joined(timeline, e))
        client.on("stream", lambda e: self._stream(timeline, e))
        client.on("recovery", lambda e: self._recovery(timeline, e))
        client.on("token_refreshed", lambda e: self._refreshed(timeline, e))
        client.on_message(ROOM_TYPE, lambda f: self._room_message(timeline, f))
        if role == ROOM:
            client.join(room_of(user))
        return client

    # Recorders (listeners: synchronous, cheap).

    def _disconnected(self, timeline: Timeline, event: Disconnected) -> None:
        timeline.add(self.clock(), DISCONNECTED, code=event.code, reason=event.reason[:60])

    def _signed_out(self, timeline: Timeline, event: SignedOut) -> None:
        timeline.add(self.clock(), SIGNED_OUT, code=event.code, message=event.message)

    def _auth_error(self, timeline: Timeline, event: AuthError) -> None:
        timeline.add(self.clock(), AUTH_ERROR, code=event.code, reason=event.reason[:60])

    def _joined(self, timeline: Timeline, event: Joined) -> None:
        timeline.add(self.clock(), JOINED, room=event.room)

    def _stream(self, timeline: Timeline, event: StreamMessage) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        timeline.add(
            self.clock(), STREAM, epoch=event.epoch, offset=event.offset, seq=data.get("seq")
        )

    def _recovery(self, timeline: Timeline, event: Recovery) -> None:
        timeline.add(
            self.clock(),
            RECOVERY,
            recovered=event.recovered,
            epoch=event.epoch,
            offset=event.offset,
            missed=event.missed,
            reason=event.reason,
        )

    def _refreshed(self, timeline: Timeline, _event: TokenRefreshed) -> None:
        timeline.add(self.clock(), REFRESHED)

    def _room_message(self, timeline: Timeline, frame: dict[str, Any]) -> None:
        timeline.add(self.clock(), ROOM_MESSAGE, room=frame.get("room"), seq=frame.get("seq"))

    # Driving.

    async def connect_all(self, per_second: float = 100.0) -> None:
        """Start every client, paced, and wait until they are all connected."""
        for n, (user, role) in enumerate(self.users.items()):
            self.clients[user] = client = self._client(user, role)
            await client.start()
            if n % 10 == 9:
                await asyncio.sleep(10 / per_second)
        waits = [c.wait_for_state(State.CONNECTED, timeout=60) for c in self.clients.values()]
        await asyncio.gather(*waits)

    async def leave_and_return(self, between: Callable[[], Awaitable[None]]) -> None:
        """Close every client, run ``between`` (the memory baseline is taken there), connect
        them all again."""
        await asyncio.gather(*(c.close() for c in self.clients.values()))
        for timeline in self.timelines.values():
            timeline.add(self.clock(), CLOSED)
        await between()
        for n, client in enumerate(self.clients.values()):
            await client.start()
            if n % 10 == 9:
                await asyncio.sleep(0.1)
        waits = [c.wait_for_state(State.CONNECTED, timeout=60) for c in self.clients.values()]
        await asyncio.gather(*waits)

    def run(self, seconds: float, silent_by: float, stop: asyncio.Event) -> None:
        """Start the roles' behaviour: silences (each at a seeded moment before ``silent_by``),
        churn and token refreshes, until ``stop``."""
        start = self.clock()
        for user, role in self.users.items():
            client = self.clients[user]
            if role == SILENT:
                at = self.rng.uniform(3.0, max(3.0, silent_by))
                self._spawn(self._go_silent(client, self.timelines[user], start + at))
            elif role == CHURN:
                self._spawn(self._churn(client, self.timelines[user], stop))
            elif role == STEADY and int(user.rsplit("-", 1)[1]) % 3 == 0:
                self._spawn(self._refresh(client, stop))

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _go_silent(self, client: PresenceClient, timeline: Timeline, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.clock()))
        client.answer_pings = False
        timeline.add(self.clock(), WENT_SILENT)

    async def _churn(self, client: PresenceClient, timeline: Timeline, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await _wait(stop, self.rng.uniform(4.0, 12.0)):
                return
            await client.close()
            timeline.add(self.clock(), CLOSED)
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await client.start()

    async def _refresh(self, client: PresenceClient, stop: asyncio.Event) -> None:
        while not await _wait(stop, self.rng.uniform(8.0, 20.0)):
            if client.state is State.CONNECTED:
                user = client.user_id
                await self._get_token(user, True)
                await client.refresh_token()

    async def settle(self, timeout: float) -> list[str]:
        """After ``stop``: every client that should be connected is (churners started again);
        the users still not connected after ``timeout``."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for user, role in self.users.items():
            client = self.clients[user]
            if role != SILENT and client.state is State.CLOSED:
                await client.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = self.not_connected()
            if not missing:
                return []
            await asyncio.sleep(0.5)
        return self.not_connected()

    async def reconnect(self, role: str, timeout: float) -> None:
        """Close and start again every client of ``role``: a durable client's next connect
        recovers what was stored while no socket of it took messages live."""
        users = [u for u, r in self.users.items() if r == role]

        async def again(user: str) -> None:
            await self.clients[user].close()
            self.timelines[user].add(self.clock(), CLOSED)
            await self.clients[user].start()

        await asyncio.gather(*(again(u) for u in users))
        waits = [self.clients[u].wait_for_state(State.CONNECTED, timeout=timeout) for u in users]
        await asyncio.gather(*waits, return_exceptions=True)

    def not_connected(self) -> list[str]:
        return [
            u
            for u, role in self.users.items()
            if role != SILENT and self.clients[u].state is not State.CONNECTED
        ]

    def open_by_user(self) -> dict[str, int]:
        """Sockets open per user, as the clients see them (one socket per client)."""
        return {u: 1 for u, c in self.clients.items() if c.state is State.CONNECTED}

    async def close_all(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
        self._executor.shutdown(wait=False)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop``; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
