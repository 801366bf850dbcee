"""Single-document reads on the async client leave no BatchGetDocuments stream open, against
the Firestore emulator (google-cloud-firestore's own ``AsyncDocumentReference.get`` does)."""

from __future__ import annotations

import gc
import inspect
import uuid
from datetime import UTC, datetime

from gateway.storage.firestore_store import FirestoreStore
from gateway.storage.firestore_streams import FirestoreStreamStore

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
