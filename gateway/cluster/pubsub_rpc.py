"""Publish and StreamingPull as raw protobuf bytes on the GAPIC clients' own gRPC channels.

Why: the asyncio GAPIC client wraps every call in proto-plus marshalling, api_core's retry,
timeout and error-remapping wrappers and a fresh metadata tuple. Measured on the emulator
(docs/benchmarks.md, "Cross-instance delivery, profiled"), a one-message Publish cost the
process 0.56 ms of CPU through ``PublisherAsyncClient.publish`` and 0.26 ms as bytes on the
same channel; every cross-instance send makes two (the request and its receipt), and every
instance reads and acknowledges every message on its pull stream.

The channels are built by ``gateway.cluster.pubsub_clients`` as the clients' own (the
emulator's insecure channel, or Google's credentials and endpoint): the subscriber client's
for the pull, a twin of the publisher client's for Publish (``publisher_with_channel``). Only
the marshalling changes, not where calls go or how they authenticate. The requests are built
with the raw (upb, C-implemented) classes under the library's proto-plus types, so their field
numbers are the library's. Admin calls (create, delete) stay on the GAPIC clients: they are
rare.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PUBLISH_METHOD = "/google.pubsub.v1.Publisher/Publish"
STREAMING_PULL_METHOD = "/google.pubsub.v1.Subscriber/StreamingPull"


@dataclass(frozen=True, slots=True)
class RawTypes:
    """The raw protobuf classes of the messages sent and read here."""

    PublishRequest: Any
    PubsubMessage: Any
    StreamingPullRequest: Any
    StreamingPullResponse: Any


@functools.cache
def raw_types() -> RawTypes:
    """The classes, imported on first use like every client library of the gateway."""
    from google.pubsub_v1 import types

    return RawTypes(
        PublishRequest=types.PublishRequest.pb(),
        PubsubMessage=types.PubsubMessage.pb(),
        StreamingPullRequest=types.StreamingPullRequest.pb(),
        StreamingPullResponse=types.StreamingPullResponse.pb(),
    )


def _client_metadata() -> tuple[tuple[str, str], ...]:
    """The ``x-goog-api-client`` header the generated clients send with every call."""
    from google.pubsub_v1.services.publisher.transports.base import DEFAULT_CLIENT_INFO

    return (DEFAULT_CLIENT_INFO.to_grpc_metadata(),)  # type: ignore[no-untyped-call]


def is_not_found(exc: BaseException) -> bool:
    """Whether a raw call failed with NOT_FOUND (the topic or subscription is missing)."""
    import grpc

    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.NOT_FOUND


class Publisher:
    """``Publish`` to one topic on ``channel``, bytes in; the response (the message ids) is not
    read."""

    def __init__(self, channel: Any, topic_path: str) -> None:
        from google.api_core import gapic_v1

        self.topic_path = topic_path
        self._types = raw_types()
        self._rpc = channel.unary_unary(PUBLISH_METHOD)
        self._metadata = (
            *_client_metadata(),
            # Routes the call by topic, as the generated client does.
            gapic_v1.routing_header.to_grpc_metadata(  # type: ignore[no-untyped-call]
                (("topic", topic_path),)
            ),
        )

    def request(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> bytes:
        """The ``PublishRequest`` bytes for these (data, attributes) messages."""
        message = self._types.PubsubMessage
        serialized: bytes = self._types.PublishRequest(
            topic=self.topic_path,
            messages=[message(data=data, attributes=attributes) for data, attributes in messages],
        ).SerializeToString()
        return serialized

    async def publish(
        self, messages: Sequence[tuple[bytes, Mapping[str, str]]], timeout: float
    ) -> None:
        """Publish; raises the call's ``grpc.RpcError`` (``is_not_found`` for a missing topic)."""
        await self._rpc(self.request(messages), metadata=self._metadata, timeout=timeout)


def open_pull(client: Any, first: bytes, requests: AsyncIterator[bytes]) -> Any:
    """A ``StreamingPull`` call on the subscriber client's channel: ``first`` (the
    subscription's request) and then ``requests`` go out as bytes; the responses come back as
    raw ``StreamingPullResponse`` messages. The caller cancels the call when done."""

    async def outgoing() -> AsyncIterator[bytes]:
        yield first
        async for request in requests:
            yield request

    rpc = client.transport.grpc_channel.stream_stream(
        STREAMING_PULL_METHOD,
        response_deserializer=raw_types().StreamingPullResponse.FromString,
    )
    return rpc(outgoing(), metadata=_client_metadata())
