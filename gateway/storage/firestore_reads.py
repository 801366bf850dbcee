"""One document read on the async Firestore client, without leaving its stream open.

google-cloud-firestore's ``AsyncDocumentReference.get`` reads through a BatchGetDocuments
stream and returns from inside its ``async for`` at the first response, so the stream is never
iterated to its end nor closed: the gRPC call and two async generators suspended at their
``yield`` stay alive for good. Every durable send's append (a read of the stream's head in a
transaction) left one behind: the soak's memory probes found 70 such streams on each instance
after a two-minute run, which is most of its +13 % (docs/soak.md). ``read_document`` asks for
the same document through ``AsyncClient.get_all`` and reads the stream to its end.

``BatchGet`` reads many documents of a collection in one call, as raw protobuf (see there why).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.storage.firestore_wire import call_metadata


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


BATCH_GET_METHOD = "/google.firestore.v1.Firestore/BatchGetDocuments"
GET_METHOD = "/google.firestore.v1.Firestore/GetDocument"


class BatchGet:
    """``BatchGetDocuments`` as raw protobuf on the async client's own channel: the documents
    of one collection that exist, by id, decoded by the library's ``decode_dict`` (the values
    ``DocumentSnapshot.to_dict`` gives). Errors are the library's (``from_grpc_error``), as
    its ``get_all`` raises them.

    Why not ``AsyncClient.get_all``: it wraps the request and every response in proto-plus
    and api_core's stream wrappers, and builds a snapshot per document, on the event loop;
    the member read of a send to a user held elsewhere went through a worker thread and the
    blocking client instead, and the thread hand-offs cost more than the read (23 % of the
    fan-out's CPU, docs/benchmarks.md). Each streamed response takes an event-loop iteration
    here, so ``FirestoreStore.get_members`` keeps the thread for large batches (a storm's).
    One id (most sends' reads) is read with the unary ``GetDocument`` instead, whose missing
    document is a NOT_FOUND status: a unary call cost 0.3 ms of CPU against 0.5 ms for a
    one-document stream (on the emulator). Built at first use: the channel belongs to the
    running event loop.
    """

    def __init__(self, client: Any) -> None:
        from google.cloud.firestore_v1.types import document, firestore

        self._client = client
        database = client._database_string
        self._documents = f"{database}/documents/"
        self._request = firestore.BatchGetDocumentsRequest.pb()
        self._database = database
        response = firestore.BatchGetDocumentsResponse.pb()
        channel = client._firestore_api.transport.grpc_channel
        self._rpc = channel.unary_stream(
            BATCH_GET_METHOD, response_deserializer=response.FromString
        )
        self._get_request = firestore.GetDocumentRequest.pb()
        self._get = channel.unary_unary(
            GET_METHOD, response_deserializer=document.Document.pb().FromString
        )
        self._metadata = call_metadata(client, ("database", database))

    async def read(
        self, collection: str, ids: Sequence[str], timeout: float
    ) -> dict[str, dict[str, Any]]:
        """The documents of ``collection`` among ``ids`` that exist; no retry."""
        import grpc
        from google.api_core import exceptions
        from google.cloud.firestore_v1 import _helpers

        prefix = f"{self._documents}{collection}/"
        if len(ids) == 1:
            return await self._read_one(prefix, ids[0], timeout)
        names = {f"{prefix}{doc_id}": doc_id for doc_id in ids}
        request = self._request(database=self._database, documents=list(names))
        found: dict[str, dict[str, Any]] = {}
        call = self._rpc(request.SerializeToString(), metadata=self._metadata, timeout=timeout)
        try:
            # read() rather than ``async for``: the iterator is an async generator of its own,
            # which cost a third of a small read's CPU.
            while (response := await call.read()) is not grpc.aio.EOF:
                if response.WhichOneof("result") != "found":
                    continue
                document = response.found
                doc_id = names.get(document.name)
                if doc_id is None:  # as the library's get_all: an answer for nothing asked
                    raise ValueError(f"unexpected document {document.name} in the answer")
                data: Any = _helpers.decode_dict(document.fields, self._client)
                found[doc_id] = data or {}
        except grpc.RpcError as exc:
            raise exceptions.from_grpc_error(exc) from exc  # type: ignore[no-untyped-call]
        finally:
            call.cancel()
        return found

    async def _read_one(
        self, prefix: str, doc_id: str, timeout: float
    ) -> dict[str, dict[str, Any]]:
        import grpc
        from google.api_core import exceptions
        from google.cloud.firestore_v1 import _helpers

        name = f"{prefix}{doc_id}"
        request = self._get_request(name=name).SerializeToString()
        # GetDocument routes by the document's name, not the database (the generated client's
        # header for this method).
        metadata = call_metadata(self._client, ("name", name))
        try:
            document = await self._get(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise exceptions.from_grpc_error(exc) from exc  # type: ignore[no-untyped-call]
        data: Any = _helpers.decode_dict(document.fields, self._client)
        return {doc_id: data or {}}
