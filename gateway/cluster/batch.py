"""The batch send: many ``(user, frame)`` pairs in one request, one directory read for all
of them (coalesced member reads) and at most one publish, carrying only the entries for users
another instance holds. Each entry is answered on its own.
"""

from __future__ import annotations

import asyncio
from typing import Literal, NamedTuple

from gateway.cluster.directory import settled
from gateway.cluster.fanout import Reply, Request
from gateway.cluster.operation import Audience, Context, Gathered, Operation, Scope

#: Entries one batch may carry (``POST /ws/send``): a few hundred, so that a batch's frames
#: stay far under Pub/Sub's message limit and one request does not hold the loop for long.
MAX_BATCH_ENTRIES = 500
#: Largest batch body: the entries' messages together.
MAX_BATCH_BYTES = 1024 * 1024

EntryStatus = Literal["sent", "not_connected", "unreachable", "stored"]


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


class SendBatchOp(Operation[SendBatch, BatchDelivery]):
    """Each entry's frame to every socket of its user, wherever they are."""

    request = SendBatch

    async def here(self, ctx: Context, request: SendBatch) -> Reply:
        service, delivered = ctx.service, []
        for index, user_id, text, offset in request.entries:
            if offset:
                n = await service.streams.send(user_id, text, offset)
            else:
                n = await service.send_text(user_id, text)
            if n:
                delivered.append((index, n))
        return Reply(counts=delivered)

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
        )


SEND_BATCH = SendBatchOp()


def entry_results(
    entries: list[tuple[int, str, str, int]], delivery: BatchDelivery
) -> list[EntryResult]:
    """Every entry's result: its sockets reached, or why none was (a durable entry that no
    socket took is ``stored``; one whose user may be on an instance that did not answer is
    ``unreachable``)."""
    reached = {r.position: r.connections for r in delivery.results}
    unsure = bool(delivery.unreachable)
    results = []
    for index, user_id, _, offset in entries:
        n = reached.get(index, 0)
        status: EntryStatus = (
            "sent" if n else "stored" if offset else "unreachable" if unsure else "not_connected"
        )
        results.append(EntryResult(index, user_id, n, status))
    return results
