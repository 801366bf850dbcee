"""The fan-out wire between instances: what travels on the topic (a :class:`Request` of one of
the declared operations, or a :class:`Reply`), and the plumbing of requests and receipts over
the broker (``gateway.cluster.broker``).

``Fanout.ask`` publishes a request and gathers the instances' receipts until every expected
instance has replied or ``FANOUT_TIMEOUT`` passes. Inbound, ``Fanout.on_message`` drops what is
not for this instance (another's receipt, our own request, a send for a user held elsewhere)
before decoding, drops Pub/Sub's redeliveries, matches receipts to their requests, and hands each
request to the ``serve`` callback, publishing its receipt to the request's origin. What a request
does is its operation's business (``gateway.cluster.operations``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from hashlib import blake2b
from itertools import islice
from typing import Any, ClassVar

import msgspec

from gateway.cluster.broker import Broker, BrokerUnavailable
from gateway.protocol.console import ConsoleReceipt
from gateway.protocol.messages import StatsResponse

logger = logging.getLogger("gateway.cluster.fanout")

#: How many recent message ids each instance remembers to drop Pub/Sub's redeliveries.
SEEN_IDS = 20_000
#: Requests' durations kept until the console's sampler takes them (a bound, not a window).
MAX_DURATIONS = 10_000

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


class Request(msgspec.Struct, tag_field="kind", omit_defaults=True, kw_only=True):
    """A request on the topic (JSON in the Pub/Sub message's data). Each operation declares
    its own subclass, tagged with its kind (``gateway.cluster.operations``); together with
    :class:`Reply` they form the tagged union an instance decodes."""

    #: A request for one user's sockets: instances that hold none drop it on its attributes,
    #: before decoding (most messages of a large deployment are sends for users held elsewhere).
    routed: ClassVar[bool] = False

    id: str = ""
    origin: str = ""

    def attributes(self) -> dict[str, str]:
        """Pub/Sub attributes beyond kind and origin, read by ``Fanout.on_message``."""
        return {}


class Reply(msgspec.Struct, tag="reply", tag_field="kind", omit_defaults=True, kw_only=True):
    """One instance's receipt for a request, published to the request's origin. Which fields
    an operation fills is its own business (``gateway.cluster.operations``)."""

    id: str = ""
    origin: str = ""
    instance: str = ""
    #: Sockets reached or held.
    connections: int = 0
    #: Users reached or held, up to the request's limit (a send's: its user).
    users: list[str] = []
    #: A receipt's count of the users it reached or holds (beside the capped lists).
    user_count: int = 0
    #: A broadcast or room receipt's users, as ``user_digests``.
    digests: bytes = b""
    #: Sockets closed (timeouts, sign-out).
    closed: int = 0
    #: A room membership receipt's (user, session) pairs, up to the request's limit.
    sessions: list[tuple[str, str]] = []
    stats: StatsResponse | None = None
    #: A batch receipt's sockets reached, by the batch's entry index (entries reaching none
    #: are left out).
    counts: list[tuple[int, int]] = []
    #: A batch receipt's entries still being delivered when it was sent (a socket slow to
    #: take the frame): their sockets there may get it a little later.
    pending: list[int] = []
    #: A presence sync receipt: the instance's own room presence entries
    #: (``gateway.protocol.presence.Wire``) and its newest version then.
    presence: list[tuple[str, str, int, int, dict[str, Any]]] = []
    as_of: int = 0
    #: A console request's receipt (gateway.cluster.console).
    console: ConsoleReceipt | None = None


def kind_of(message: Request | Reply) -> str:
    """The tag a message travels under (``"send"``, ``"reply"``, ...)."""
    return str(type(message).__struct_config__.tag)


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

    def add(self, reply: Reply) -> None:
        blob = reply.digests
        self._seen.update(blob[i : i + DIGEST_BYTES] for i in range(0, len(blob), DIGEST_BYTES))
        self._undigested += max(0, reply.user_count - len(blob) // DIGEST_BYTES)

    def __len__(self) -> int:
        return len(self._seen) + self._undigested


class _Pending:
    """Receipts for one request, complete when every expected instance has replied."""

    def __init__(self, expect: set[str] | None) -> None:
        self.expect = expect
        self.replies: dict[str, Reply] = {}
        self.done = asyncio.Event()
        if expect is not None and not expect:
            self.done.set()

    def add(self, reply: Reply) -> None:
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
        serve: Callable[[Request], Awaitable[Reply | None]],
        holds: Callable[[str], bool],
        requests: Iterable[type[Request]],
    ) -> None:
        self.broker = broker
        self.me = me
        #: FANOUT_TIMEOUT: how long a request waits for its receipts.
        self.timeout = timeout
        #: Does a request's work here; returns the receipt, or None when there is none to send.
        self.serve = serve
        #: Whether this instance holds a socket of the user (sends for others are dropped).
        self.holds = holds
        kinds = tuple(requests)
        #: Every declared request and the reply, as one tagged union.
        self._decode = msgspec.json.Decoder(functools.reduce(operator.or_, kinds, Reply)).decode
        self._routed = frozenset(str(k.__struct_config__.tag) for k in kinds if k.routed)
        self._pending: dict[str, _Pending] = {}
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Messages received, by (kind, outcome): served, replied, dropped, duplicate.
        self.received: Counter[tuple[str, str]] = Counter()
        #: Requests published, by kind and outcome (ok, failed); receipts missing at deadline.
        self.published: Counter[tuple[str, str]] = Counter()
        self.missing_receipts = 0
        #: Seconds each request took to gather its receipts, until the sampler takes them.
        self.durations: list[float] = []

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
            kind in self._routed
            and not self.holds(attributes.get("user_id", ""))
            and self.me not in attributes.get("expect", "").split(",")
        ):
            self.received[(kind, "dropped")] += 1
            return
        try:
            message: Request | Reply = self._decode(data)
        except msgspec.DecodeError as exc:
            logger.warning("undecodable fan-out message dropped: %s", exc)
            self.received[(kind, "undecodable")] += 1
            return
        if isinstance(message, Reply):
            pending = self._pending.get(message.id)
            if pending is not None:
                pending.add(message)
            self.received[(kind, "served" if pending else "late")] += 1
            return
        if message.id in self._seen:
            # Pub/Sub delivers at least once: a repeated request must not reach a socket twice.
            self.received[(kind, "duplicate")] += 1
            return
        self._remember(message.id)
        self.received[(kind, "served")] += 1
        task = asyncio.create_task(self._answer(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _remember(self, event_id: str) -> None:
        self._seen.add(event_id)
        self._seen_order.append(event_id)
        if len(self._seen_order) > SEEN_IDS:
            self._seen.discard(self._seen_order.popleft())

    async def _answer(self, request: Request) -> None:
        reply = await self.serve(request)
        if reply is None:
            return
        reply.id, reply.origin, reply.instance = request.id, self.me, self.me
        try:
            await self.publish(reply, to=request.origin)
        except BrokerUnavailable as exc:
            logger.warning("receipt for %s %s not sent: %s", kind_of(request), request.id, exc)

    async def publish(self, message: Request | Reply, *, to: str | None = None) -> None:
        attributes = {"kind": kind_of(message), "origin": self.me}
        if to is not None:
            attributes["to"] = to
        if isinstance(message, Request):
            attributes.update(message.attributes())
        data = _encode(message)
        if len(data) > PUBSUB_MAX_MESSAGE_BYTES:
            # Pub/Sub would refuse it after a round trip; say why here.
            raise BrokerUnavailable(
                f"{attributes['kind']} message of {len(data):,} bytes is over Pub/Sub's "
                f"{PUBSUB_MAX_MESSAGE_BYTES:,}"
            )
        await self.broker.publish(data, attributes)

    async def tell(self, request: Request) -> None:
        """Publish a notice from this instance; nobody answers. Raises BrokerUnavailable."""
        request.id, request.origin = uuid.uuid4().hex, self.me
        kind = kind_of(request)
        try:
            await self.publish(request)
        except BrokerUnavailable:
            self.published[(kind, "failed")] += 1
            raise
        self.published[(kind, "ok")] += 1

    async def ask(
        self, request: Request, expect: set[str] | None
    ) -> tuple[dict[str, Reply], list[str]]:
        """Publish a request from this instance and gather receipts until ``expect`` (None:
        unknown) have all replied or FANOUT_TIMEOUT passes. Raises BrokerUnavailable when
        publishing fails."""
        request.id, request.origin = uuid.uuid4().hex, self.me
        kind = kind_of(request)
        started = time.monotonic()
        pending = _Pending(expect)
        self._pending[request.id] = pending
        try:
            try:
                await self.publish(request)
            except BrokerUnavailable:
                self.published[(kind, "failed")] += 1
                raise
            self.published[(kind, "ok")] += 1
            try:
                async with asyncio.timeout(self.timeout):
                    await pending.done.wait()
            except TimeoutError:
                pass
        finally:
            del self._pending[request.id]
        if len(self.durations) < MAX_DURATIONS:
            self.durations.append(time.monotonic() - started)
        missing = sorted((expect or set()) - pending.replies.keys())
        self.missing_receipts += len(missing)
        if missing:
            logger.warning("%s: no receipt from %s", kind, ", ".join(missing))
        return pending.replies, missing
