"""Reads against the Firestore emulator: single-document reads on the async client leave no
BatchGetDocuments stream open (google-cloud-firestore's own ``AsyncDocumentReference.get``
does), and the raw batched reads on the event loop answer and fail as the blocking client."""

from __future__ import annotations

import gc
import inspect
import os
import uuid
from datetime import UTC, datetime

import pytest

from emulator import procs
from gateway.storage.firestore_store import LOOP_READ_MAX, FirestoreStore
from gateway.storage.firestore_streams import FirestoreStreamStore
from gateway.storage.schema import INSTANCES, MEMBERS
from gateway.storage.store import Write

READS = 30


def open_streams() -> int:
    """gRPC response streams suspended at a ``yield``: each is a call nobody finished."""
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if inspect.isasyncgen(o)
        and o.ag_frame is not None
        and o.ag_frame.f_code.co_name == "_fetch_stream_responses"
    )


async def test_member_reads_and_durable_appends_leave_no_stream_open(
    store: FirestoreStore,
) -> None:
    """Thirty member reads (found and missing) and thirty appends (each reading the stream's
    head in a transaction) leave no gRPC stream behind them."""
    streams = FirestoreStreamStore(store.client, ttl=3600)
    user = f"u-{uuid.uuid4().hex[:12]}"
    before = open_streams()
    for n in range(READS):
        assert await store.get_member(f"nobody-{n}", timeout=5) is None
        epoch, offset = await streams.append(user, f'{{"n": {n}}}', datetime.now(UTC))
        assert offset == n + 1 and epoch
    assert open_streams() - before == 0


async def test_small_member_reads_on_the_loop_answer_as_the_blocking_client(
    store: FirestoreStore,
) -> None:
    """A member read small enough for the event loop (raw BatchGetDocuments, or GetDocument for
    one id) returns the same documents, values and absences as the worker thread's blocking
    get_all, and so does the instance registry read."""
    users = [f"m-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    stamp = datetime(2026, 1, 1, 12, 30, 5, 123456, tzinfo=UTC)
    await store.commit(
        [
            Write(MEMBERS, users[0], {"text": "a", "at": stamp, "nested": {"s1": {"n": 3}}}),
            Write(MEMBERS, users[1], {"flag": True, "none": None, "ratio": 0.5}),
            Write(INSTANCES, "inst-x", {"url": "http://gw", "at": stamp}),
        ]
    )
    asked = [*users, "absent-1"]
    assert len(asked) <= LOOP_READ_MAX
    on_loop = await store.get_members(asked, timeout=5)
    blocking = store._get_members_blocking(asked, 5)
    assert on_loop == blocking
    assert sorted(on_loop) == sorted(users[:2])
    assert on_loop[users[0]] == {"text": "a", "at": stamp, "nested": {"s1": {"n": 3}}}
    for one in (users[0], "absent-2"):  # one id: the unary GetDocument
        assert await store.get_members([one], timeout=5) == store._get_members_blocking([one], 5)
    assert await store.get_members([users[1]], timeout=5) == {users[1]: blocking[users[1]]}
    assert await store.get_instances(["inst-x", "inst-gone"], timeout=5) == {
        "inst-x": {"url": "http://gw", "at": stamp}
    }


async def test_member_reads_fail_alike_on_the_loop_and_in_the_thread(project_id: str) -> None:
    """With Firestore unreachable, small member reads (on the loop, one id and two) and a
    large one (in the worker thread) raise the same library exception."""
    from google.api_core import exceptions

    saved = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{procs.free_port()}"
    try:
        down = FirestoreStore(project_id)
    finally:
        if saved is not None:
            os.environ["FIRESTORE_EMULATOR_HOST"] = saved
    try:
        raised: list[type[BaseException]] = []
        for ids in (["one"], ["one", "two"], [f"u{n}" for n in range(LOOP_READ_MAX + 1)]):
            with pytest.raises(exceptions.GoogleAPICallError) as caught:
                await down.get_members(ids, timeout=2)
            raised.append(type(caught.value))
        assert raised[0] is raised[1] is raised[2]
    finally:
        await down.close()
