"""Single sends bound for other instances at one moment travel as one ``send_batch`` request.

Why: a cross-instance send cost a request message and a receipt per holding instance, each a
Pub/Sub message that every instance pulls, acknowledges and (the receipt's addressee, or a
holder of the user) decodes; that per-message work was most of a send's CPU across instances
(docs/benchmarks.md, "Cross-instance delivery"). The sends whose directory reads came back
together (the member reads are coalesced, ``gateway.storage.batching``) are ready at the same
moment; here they go out as one ``SendBatch`` (``gateway.cluster.batch``), which every instance
serves entry by entry and answers with one receipt counting each entry's sockets. Each send
then gets what its own ``Send`` would have gathered: the sockets each instance reached for it,
and, of the instances it expected, those that did not answer.

A send alone at its moment is published as the ``Send`` it is: instances that do not hold its
user drop it on its attributes, where a batch is decoded by every instance. Nothing new travels
on the topic (``send_batch`` is served by every release that has the batch send), so instances
of the previous release serve coalesced sends during a rolling deploy.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from gateway.cluster.batch import MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, SendBatch
from gateway.cluster.fanout import Fanout, Reply, Request
from gateway.cluster.operations import Send

#: What ``Fanout.ask`` answers: receipts by instance, and the expected instances not heard.
Answer = tuple[dict[str, Reply], list[str]]


class _Waiting(NamedTuple):
    request: Send
    expect: set[str]
    answer: asyncio.Future[Answer]


def chunks(waiting: list[_Waiting]) -> list[list[_Waiting]]:
    """The sends in order, cut so that no batch is over MAX_BATCH_ENTRIES entries or about
    MAX_BATCH_BYTES of frames (a single send's frame is at most WS_MAX_MESSAGE_BYTES)."""
    out: list[list[_Waiting]] = []
    size = 0
    for item in waiting:
        length = len(item.request.text) + len(item.request.user_id)
        if not out or len(out[-1]) >= MAX_BATCH_ENTRIES or size + length > MAX_BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(item)
        size += length
    return out


def batch_of(chunk: list[_Waiting]) -> tuple[SendBatch, set[str]]:
    """The batch request for these sends (entry k is the k-th send) and whom it waits for:
    every instance any of them expects."""
    expect: set[str] = set().union(*(item.expect for item in chunk))
    entries = [
        (k, w.request.user_id, w.request.text, w.request.offset) for k, w in enumerate(chunk)
    ]
    return SendBatch(entries=entries, expect=sorted(expect)), expect


def split(chunk: list[_Waiting], replies: dict[str, Reply], missing: list[str]) -> list[Answer]:
    """Each send's share of the batch's receipts: per instance, the sockets that instance
    reached for the send's entry (an instance the send expected answers even when it reached
    none, as it would have for the ``Send``); of the instances the send expected, those not
    heard, and any instance still delivering the send's entry when it answered."""
    counts = {instance: dict(reply.counts) for instance, reply in replies.items()}
    pending = {instance: set(reply.pending) for instance, reply in replies.items()}
    answers: list[Answer] = []
    for k, item in enumerate(chunk):
        user = item.request.user_id
        mine: dict[str, Reply] = {}
        slow: list[str] = []
        for instance, by_entry in counts.items():
            n = by_entry.get(k, 0)
            if n or instance in item.expect:
                mine[instance] = Reply(instance=instance, connections=n, users=[user] if n else [])
            if k in pending[instance]:
                # Its socket there was still taking the frame: as if that instance had not
                # answered in time, which is what the send alone would have met.
                slow.append(instance)
        answers.append((mine, sorted({*(m for m in missing if m in item.expect), *slow})))
    return answers


class SendCoalescer:
    """Gathers the sends asked for in one loop iteration and publishes them together."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self._waiting: list[_Waiting] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: Sends that went out inside a batch with others (the rest went alone, as ``Send``).
        self.coalesced = 0

    async def ask(self, request: Send, expect: set[str]) -> Answer:
        """What ``Fanout.ask(request, expect)`` answers; raises BrokerUnavailable likewise."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        self._waiting.append(_Waiting(request, expect, answer))
        if not self._scheduled:
            # Not at once: every send resumed in this loop iteration joins.
            self._scheduled = True
            loop.call_soon(self._flush)
        return await answer

    def _flush(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        for chunk in chunks(waiting):
            task = asyncio.create_task(self._publish(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _publish(self, chunk: list[_Waiting]) -> None:
        request: Request
        if len(chunk) == 1:
            request, expect = chunk[0].request, chunk[0].expect
        else:
            request, expect = batch_of(chunk)
        try:
            replies, missing = await self.fanout.ask(request, expect)
        except asyncio.CancelledError:  # at stop: nobody waits forever
            for item in chunk:
                item.answer.cancel()
            raise
        except Exception as exc:  # BrokerUnavailable, for each send as for its own ask
            for item in chunk:
                if not item.answer.done():
                    item.answer.set_exception(exc)
            return
        if len(chunk) == 1:
            answers = [(replies, missing)]
        else:
            self.coalesced += len(chunk)
            answers = split(chunk, replies, missing)
        for item, answer in zip(chunk, answers, strict=True):
            if not item.answer.done():  # a caller that gave up meanwhile is skipped
                item.answer.set_result(answer)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
