"""The fan-out wire between instances: what travels on the topic (``Event``), and the
plumbing of requests and receipts over the broker (``gateway.cluster.broker``).

``Fanout.ask`` publishes a request and gathers the instances' receipts until every expected
instance has replied or ``FANOUT_TIMEOUT`` passes. Inbound, ``Fanout.on_message`` drops what is
not for this instance (another's receipt, our own request, a send for a user held elsewhere)
before decoding, drops Pub/Sub's redeliveries, matches receipts to their requests, and hands each
request to the ``serve`` callback, publishing its receipt to the request's origin. What a request
does is the deployment's business (``gateway.cluster.deployment``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from hashlib import blake2b
from itertools import islice
from typing import Any, Literal

import msgspec

from gateway.cluster.broker import Broker, BrokerUnavailable
from gateway.protocol.messages import StatsResponse

logger = logging.getLogger("gateway.cluster.fanout")

#: How many recent message ids each instance remembers to drop Pub/Sub's redeliveries.
SEEN_IDS = 20_000

#: Pub/Sub refuses a larger message. A message over it is not even tried (``Fanout.publish``
#: raises BrokerUnavailable), and the caps below keep every receipt far under it, whatever the
#: number of sockets an instance holds (tests/unit/test_bounded_replies.py measures them).
PUBSUB_MAX_MESSAGE_BYTES = 10_000_000
#: ``?limit=`` of ``/ws/stats`` and ``/ws/rooms/{room}``: how many users and members their
#: lists carry, by default and at most. A receipt carries at most the request's limit of each
#: (user ids are up to 128 characters, session ids 32), so at MAX_LIST_LIMIT a stats receipt
#: is under 10,000 x 131 bytes of ids plus about 1 KB of pong-writer figures (1.3 MB), a room
#: receipt under 10,000 x (131 + 168) bytes (3 MB): a third of Pub/Sub's limit.
DEFAULT_LIST_LIMIT = 1_000
MAX_LIST_LIMIT = 10_000
#: A broadcast or room receipt names the users it reached by 8-byte digests (10.7 characters
#: each in JSON's base64, against up to 131 for the id), so that the origin counts a user on
#: several instances once: up to 250,000 digests (2.7 MB). An instance that reached more
#: counts the rest without digests.
DIGEST_BYTES = 8
MAX_USER_DIGESTS = 250_000

RequestKind = Literal["send", "broadcast", "timeout", "stats", "signout", "room", "room_members"]


class Event(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """One fan-out message (JSON in the Pub/Sub message's data). Requests carry the work;
    a ``reply`` carries one instance's receipt back to the request's origin."""

    kind: Literal[
        "send", "broadcast", "timeout", "stats", "signout", "room", "room_members", "reply"
    ]
    id: str
    origin: str
    user_id: str = ""
    #: The encoded JSON frame for the sockets (send, broadcast): encoded once, by the origin.
    text: str = ""
    exclude_user: str | None = None
    sessions: list[tuple[str, str]] = []
    #: Instances that must answer a send even when they deliver nothing.
    expect: list[str] = []
    instance: str = ""
    connections: int = 0
    users: list[str] = []
    #: A receipt's count of the users it reached or holds (beside the capped lists).
    user_count: int = 0
    #: A broadcast or room receipt's users, as ``user_digests``.
    digests: bytes = b""
    closed: int = 0
    stats: StatsResponse | None = None
    #: The room of a room send or membership request.
    room: str = ""
    #: A durable send's offset in the user's stream (0: a plain send).
    offset: int = 0
    #: A stats or room membership request's ``?limit=``: the most users (and members) each
    #: receipt lists.
    limit: int = DEFAULT_LIST_LIMIT


_decode = msgspec.json.Decoder(Event).decode
_encode = msgspec.json.Encoder().encode


def _digest(user_id: str) -> bytes:
    return blake2b(user_id.encode(), digest_size=DIGEST_BYTES).digest()


def user_digests(users: Iterable[str]) -> bytes:
    """Up to MAX_USER_DIGESTS of the users as 8-byte digests, concatenated. Two users of a
    million share one with odds of about 3 in 100 million: ``recipients`` is then one short."""
    return b"".join(_digest(user_id) for user_id in islice(users, MAX_USER_DIGESTS))


class Recipients:
    """Distinct users reached by a broadcast or room send across instances: this instance's,
    then each receipt's digests and the users it reached beyond them (counted as they come:
    a user among those who also is on another instance counts twice)."""

    def __init__(self, local: Iterable[str]) -> None:
        self._seen = {_digest(user_id) for user_id in local}
        self._undigested = 0

    def add(self, reply: Event) -> None:
        blob = reply.digests
        self._seen.update(blob[i : i + DIGEST_BYTES] for i in range(0, len(blob), DIGEST_BYTES))
        self._undigested += max(0, reply.user_count - len(blob) // DIGEST_BYTES)

    def __len__(self) -> int:
        return len(self._seen) + self._undigested


class _Pending:
    """Receipts for one request, complete when every expected instance has replied."""

    def __init__(self, expect: set[str] | None) -> None:
        self.expect = expect
        self.replies: dict[str, Event] = {}
        self.done = asyncio.Event()
        if expect is not None and not expect:
            self.done.set()

    def add(self, reply: Event) -> None:
        self.replies[reply.instance] = reply
        if self.expect is not None and self.expect <= self.replies.keys():
            self.done.set()


class Fanout:
    """Requests and receipts over the broker, for one instance."""

    def __init__(
        self,
        broker: Broker,
        me: str,
        timeout: float,
        serve: Callable[[Event], Awaitable[Event | None]],
        holds: Callable[[str], bool],
    ) -> None:
        self.broker = broker
        self.me = me
        #: FANOUT_TIMEOUT: how long a request waits for its receipts.
        self.timeout = timeout
        #: Does a request's work here; returns the receipt, or None when there is none to send.
        self.serve = serve
        #: Whether this instance holds a socket of the user (sends for others are dropped).
        self.holds = holds
        self._pending: dict[str, _Pending] = {}
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Messages received, by (kind, outcome): served, replied, dropped, duplicate.
        self.received: Counter[tuple[str, str]] = Counter()
        #: Requests published, by kind and outcome (ok, failed); receipts missing at deadline.
        self.published: Counter[tuple[str, str]] = Counter()
        self.missing_receipts = 0

    async def start(self) -> None:
        await self.broker.start(self.on_message)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broker.stop()

    def on_message(self, data: bytes, attributes: Mapping[str, str]) -> None:
        """Called on the event loop for every message pulled from this instance's
        subscription. Decides cheaply from the attributes first: most messages of a large
        deployment are sends for users held elsewhere."""
        kind = attributes.get("kind", "?")
        to = attributes.get("to")
        if (to is not None and to != self.me) or (
            kind != "reply" and attributes.get("origin") == self.me
        ):
            # A reply for another instance (the emulator ignores the filter), or our own
            # request, already served locally before it was published.
            self.received[(kind, "dropped")] += 1
            return
        if (
            kind in ("send", "signout")
            and not self.holds(attributes.get("user_id", ""))
            and self.me not in attributes.get("expect", "").split(",")
        ):
            self.received[(kind, "dropped")] += 1
            return
        try:
            event = _decode(data)
        except msgspec.DecodeError as exc:
            logger.warning("undecodable fan-out message dropped: %s", exc)
            self.received[(kind, "undecodable")] += 1
            return
        if event.id in self._seen and event.kind != "reply":
            # Pub/Sub delivers at least once: a repeated request must not reach a socket twice.
            self.received[(kind, "duplicate")] += 1
            return
        if event.kind == "reply":
            pending = self._pending.get(event.id)
            if pending is not None:
                pending.add(event)
            self.received[(kind, "served" if pending else "late")] += 1
            return
        self._remember(event.id)
        self.received[(kind, "served")] += 1
        task = asyncio.create_task(self._answer(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _remember(self, event_id: str) -> None:
        self._seen.add(event_id)
        self._seen_order.append(event_id)
        if len(self._seen_order) > SEEN_IDS:
            self._seen.discard(self._seen_order.popleft())

    async def _answer(self, event: Event) -> None:
        reply = await self.serve(event)
        if reply is None:
            return
        try:
            await self.publish(reply, to=event.origin)
        except BrokerUnavailable as exc:
            logger.warning("receipt for %s %s not sent: %s", event.kind, event.id, exc)

    async def publish(self, event: Event, *, to: str | None = None) -> None:
        attributes = {"kind": event.kind, "origin": self.me}
        if to is not None:
            attributes["to"] = to
        if event.user_id:
            attributes["user_id"] = event.user_id
        if event.expect:
            attributes["expect"] = ",".join(event.expect)
        data = _encode(event)
        if len(data) > PUBSUB_MAX_MESSAGE_BYTES:
            # Pub/Sub would refuse it after a round trip; say why here.
            raise BrokerUnavailable(
                f"{event.kind} message of {len(data):,} bytes is over Pub/Sub's "
                f"{PUBSUB_MAX_MESSAGE_BYTES:,}"
            )
        await self.broker.publish(data, attributes)

    async def ask(
        self, event: Event, expect: set[str] | None
    ) -> tuple[dict[str, Event], list[str]]:
        """Publish a request and gather receipts until ``expect`` (None: unknown) have all
        replied or FANOUT_TIMEOUT passes. Raises BrokerUnavailable when publishing fails."""
        pending = _Pending(expect)
        self._pending[event.id] = pending
        try:
            try:
                await self.publish(event)
            except BrokerUnavailable:
                self.published[(event.kind, "failed")] += 1
                raise
            self.published[(event.kind, "ok")] += 1
            try:
                async with asyncio.timeout(self.timeout):
                    await pending.done.wait()
            except TimeoutError:
                pass
        finally:
            del self._pending[event.id]
        missing = sorted((expect or set()) - pending.replies.keys())
        self.missing_receipts += len(missing)
        if missing:
            logger.warning("%s: no receipt from %s", event.kind, ", ".join(missing))
        return pending.replies, missing

    def event(self, kind: RequestKind, **fields: Any) -> Event:
        """A new request from this instance."""
        return Event(kind, uuid.uuid4().hex, self.me, **fields)
