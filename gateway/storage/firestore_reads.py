"""One document read on the async Firestore client, without leaving its stream open.

google-cloud-firestore's ``AsyncDocumentReference.get`` reads through a BatchGetDocuments
stream and returns from inside its ``async for`` at the first response, so the stream is never
iterated to its end nor closed: the gRPC call and two async generators suspended at their
``yield`` stay alive for good. Every durable send's append (a read of the stream's head in a
transaction) left one behind: the soak's memory probes found 70 such streams on each instance
after a two-minute run, which is most of its +13 % (docs/soak.md). ``read_document`` asks for
the same document through ``AsyncClient.get_all`` and reads the stream to its end.
"""

from __future__ import annotations

from typing import Any


async def read_document(
    client: Any,
    ref: Any,
    *,
    transaction: Any | None = None,
    timeout: float | None = None,
) -> Any:
    """The document's snapshot (``exists`` False when there is none), read in ``transaction``
    when given; no retry, as every read of the gateway (its callers decide)."""
    found = None
    async for snapshot in client.get_all(
        [ref], transaction=transaction, retry=None, timeout=timeout
    ):
        found = snapshot
    if found is None:  # get_all yields a snapshot for a missing document too
        raise LookupError(f"no answer for {ref.path}")
    return found
