"""The batch send: many ``(user, frame)`` pairs in one request, one directory read for all
of them (coalesced member reads) and at most one publish, carrying only the entries for users
another instance holds. Each entry is answered on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Literal, NamedTuple

from gateway.cluster.directory import settled
from gateway.cluster.fanout import Reply, Request
from gateway.cluster.operation import Audience, Context, Gathered, Operation, Scope
from gateway.edge.framing import text_frame

#: Entries one batch may carry (``POST /ws/send``): a few hundred, so that a batch's frames
#: stay far under Pub/Sub's message limit and one request does not hold the loop for long.
MAX_BATCH_ENTRIES = 500
#: Largest batch body: the entries' messages together.
MAX_BATCH_BYTES = 1024 * 1024

logger = logging.getLogger("gateway.cluster.batch")

EntryStatus = Literal["sent", "not_connected", "unreachable", "stored"]

#: How long an instance serving a batch waits for entries whose sockets are slow to take the
#: frame, as a share of FANOUT_TIMEOUT, before it answers with those entries as pending: the
#: receipt must reach the origin before the origin stops waiting.
SLOW_ENTRY_SHARE = 0.5
#: Entries still being delivered after their batch's receipt went (strong references).
_LINGERING: set[asyncio.Future[int]] = set()


def _forget(task: asyncio.Future[int]) -> None:
    """A lingering entry is done: drop it, and its error, which nobody waits for any more."""
    _LINGERING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("batch entry failed after its receipt: %r", task.exception())


class SendBatch(Request, tag="send_batch"):
    #: (index in the caller's batch, user, encoded frame, stream offset or 0).
    entries: list[tuple[int, str, str, int]] = []
    #: Instances that must answer even when they deliver nothing.
    expect: list[str] = []


class EntryResult(NamedTuple):
    """One entry's outcome across the deployment."""

    position: int
    user_id: str
    connections: int
    status: EntryStatus


class BatchDelivery(NamedTuple):
    results: list[EntryResult]
    instances: list[str]
    unreachable: list[str]
    scope: Scope
    #: Entries an instance was still delivering when it answered (a socket slow to take the
    #: frame): their sockets there may get it a little later.
    pending: frozenset[int] = frozenset()


class SendBatchOp(Operation[SendBatch, BatchDelivery]):
    """Each entry's frame to every socket of its user, wherever they are."""

    request = SendBatch

    async def here(self, ctx: Context, request: SendBatch) -> Reply:
        """Each entry to its user's sockets here. An entry whose sockets all take the frame now
        is written at once; the rest (a durable entry, a socket whose client is not reading)
        are sent together, and waited for SLOW_ENTRY_SHARE of FANOUT_TIMEOUT at most: one slow
        client must not hold up the receipt of the other entries (the sends of other callers,
        when they were coalesced) for its WS_SEND_TIMEOUT."""
        service, delivered = ctx.service, []
        later: list[tuple[int, Coroutine[Any, Any, int]]] = []
        for index, user_id, text, offset in request.entries:
            sockets = service.registry.sockets_of(user_id)
            if not sockets:
                continue
            if offset:
                later.append((index, service.streams.send(user_id, text, offset)))
                continue
            if not all(conn.takes_frame_now() for conn in sockets):
                later.append((index, service.send_text(user_id, text)))
                continue
            frame = text_frame(text)
            for conn in sockets:
                conn.push_frame(frame)
            delivered.append((index, len(sockets)))
        pending: list[int] = []
        if later:
            tasks = {asyncio.ensure_future(send): index for index, send in later}
            wait = ctx.service.settings.fanout.fanout_timeout * SLOW_ENTRY_SHARE
            _, slow = await asyncio.wait(tasks, timeout=wait)
            for task in slow:
                # Still delivering: it goes on (its socket may take the frame within
                # WS_SEND_TIMEOUT), and the receipt says so instead of waiting for it.
                pending.append(tasks[task])
                _LINGERING.add(task)
                task.add_done_callback(_forget)
            for task, index in tasks.items():
                if task not in slow and (n := task.result()):
                    delivered.append((index, n))
            delivered.sort()
            pending.sort()
        return Reply(counts=delivered, pending=pending)

    def owed(self, request: SendBatch, reply: Reply, me: str) -> bool:
        return bool(reply.counts) or me in request.expect

    async def audience(self, ctx: Context, request: SendBatch, local: Reply) -> Audience:
        """The users' other instances, read together; only entries for users held elsewhere
        (and durable ones, as a single durable send does) are published."""
        users = sorted({user_id for _, user_id, _, _ in request.entries})
        registry = ctx.service.registry
        found = await asyncio.gather(
            *(
                ctx.directory.user_instances(u, held_here=settled(registry.sockets_of(u)))
                for u in users
            ),
            return_exceptions=True,
        )
        elsewhere: dict[str, set[str]] = {}
        for user_id, where in zip(users, found, strict=True):
            if isinstance(where, BaseException):
                # Firestore could not say: every live instance is asked for this user.
                live = await ctx.directory.live_instances()
                elsewhere[user_id] = set(live or ())
            elif where:
                elsewhere[user_id] = set(where)
        request.entries = [e for e in request.entries if e[1] in elsewhere or e[3]]
        expect = set().union(*elsewhere.values()) if elsewhere else set()
        request.expect = sorted(expect)
        return Audience(expect, publish=bool(request.entries))

    def merge(self, request: SendBatch, gathered: Gathered) -> BatchDelivery:
        # merge() sees the request as published; the caller's entries come back by index.
        counts: dict[int, int] = {}
        reached = [gathered.me] if gathered.local.counts else []
        for reply in gathered.receipts():
            for index, n in reply.counts:
                counts[index] = counts.get(index, 0) + n
        reached += sorted(i for i, r in gathered.replies.items() if r.counts)
        return BatchDelivery(
            [EntryResult(i, "", n, "sent") for i, n in sorted(counts.items())],
            reached,
            gathered.missing,
            gathered.scope,
            frozenset(i for reply in gathered.receipts() for i in reply.pending),
        )


SEND_BATCH = SendBatchOp()


def entry_results(
    entries: list[tuple[int, str, str, int]], delivery: BatchDelivery
) -> list[EntryResult]:
    """Every entry's result: its sockets reached, or why none was (a durable entry that no
    socket took is ``stored``; one whose user may be on an instance that did not answer, or
    whose socket there was still taking it, is ``unreachable``)."""
    reached = {r.position: r.connections for r in delivery.results}
    unsure = bool(delivery.unreachable)
    results = []
    for index, user_id, _, offset in entries:
        n = reached.get(index, 0)
        status: EntryStatus = (
            "sent"
            if n
            else "stored"
            if offset
            else "unreachable"
            if unsure or index in delivery.pending
            else "not_connected"
        )
        results.append(EntryResult(index, user_id, n, status))
    return results
