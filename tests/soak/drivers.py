"""The backend side of the population: durable sends to the durable clients and room sends,
through the front end like any backend's calls, each recorded with its answer."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Sequence

import httpx

from tests.soak.delivery import DurableSend, RoomSend
from tests.soak.population import DURABLE_TYPE, ROOM_TYPE, ROOMS

#: Durable sends per second (spread over the durable clients) and room sends per second.
DURABLE_RATE = 10
ROOM_RATE = 2


class Drivers:
    def __init__(
        self,
        url: str,
        admin_token: str,
        durable_users: Sequence[str],
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {admin_token}"}
        self.durable_users = list(durable_users)
        self.clock = clock
        self.rng = rng
        self.durable: list[DurableSend] = []
        self.rooms: list[RoomSend] = []
        self._seq = itertools.count(1)

    async def run(self, stop: asyncio.Event) -> None:
        # A fresh connection per call (Connection: close), so calls spread over the instances
        # and a cut drops at most the calls in flight.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=30, limits=limits
        ) as http:
            await asyncio.gather(self._durable_loop(http, stop), self._room_loop(http, stop))

    async def _durable_loop(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        if not self.durable_users:
            return
        while not stop.is_set():
            users = self.rng.sample(self.durable_users, min(DURABLE_RATE, len(self.durable_users)))
            await asyncio.gather(*(self._durable(http, u) for u in users), asyncio.sleep(1.0))

    async def _durable(self, http: httpx.AsyncClient, user: str) -> None:
        seq, t0 = next(self._seq), self.clock()
        body = {"type": DURABLE_TYPE, "seq": seq}
        try:
            answer = await http.post(f"/ws/send/{user}", params={"durable": "true"}, json=body)
            data = answer.json() if answer.status_code == 200 else {}
            status = "sent" if data.get("connections") else "stored"
            if answer.status_code != 200:
                status = f"http {answer.status_code}"
            epoch, offset = data.get("epoch"), data.get("offset")
        except (httpx.HTTPError, ValueError) as exc:
            status, epoch, offset = type(exc).__name__, None, None
        self.durable.append(DurableSend(t0, self.clock(), user, seq, status, epoch, offset))

    async def _room_loop(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.gather(self._room(http), asyncio.sleep(1.0 / ROOM_RATE))

    async def _room(self, http: httpx.AsyncClient) -> None:
        room = self.rng.choice(ROOMS)
        seq, t0 = next(self._seq), self.clock()
        complete = False
        try:
            answer = await http.post(
                f"/ws/rooms/{room}/send", json={"type": ROOM_TYPE, "room": room, "seq": seq}
            )
            data = answer.json() if answer.status_code == 200 else {}
            complete = data.get("scope") == "deployment" and not data.get("unreachable_instances")
        except (httpx.HTTPError, ValueError):
            pass
        self.rooms.append(RoomSend(t0, self.clock(), room, seq, complete))
