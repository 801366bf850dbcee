"""The Pub/Sub clients every topic of the gateway uses, built the same way: over an insecure
channel to ``PUBSUB_EMULATOR_HOST`` when it is set (the emulator speaks plain gRPC, and the
library's own emulator detection covers only the synchronous clients), with Google's
credentials otherwise. Imported lazily: a gateway without a topic never loads Pub/Sub."""

from __future__ import annotations

import os
from typing import Any


def publisher_client() -> Any:
    """A ``PublisherAsyncClient`` for the emulator or for Google Cloud."""
    from google.pubsub_v1.services.publisher import PublisherAsyncClient

    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not emulator:
        return PublisherAsyncClient()
    import grpc
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

    return PublisherAsyncClient(
        transport=PublisherGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(emulator))
    )


def publisher_with_channel() -> tuple[Any, Any]:
    """A ``PublisherAsyncClient`` as ``publisher_client`` builds it, and a second channel to the
    same endpoint built with the same arguments (credentials, scopes, options), for the raw
    Publish calls (gateway.cluster.pubsub_rpc). Why a second: the client's transport adds a
    logging interceptor to its own channel, which runs every unary call through a task of its
    own (a sixth of a Publish call's CPU). The caller closes both."""
    import grpc
    from google.pubsub_v1.services.publisher import PublisherAsyncClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if emulator:
        return publisher_client(), grpc.aio.insecure_channel(emulator)
    raw: list[Any] = []

    def channel(*args: Any, **kwargs: Any) -> Any:
        # Called once by the transport with what the client resolved (endpoint, credentials).
        raw.append(PublisherGrpcAsyncIOTransport.create_channel(*args, **kwargs))
        return PublisherGrpcAsyncIOTransport.create_channel(*args, **kwargs)

    def transport(**kwargs: Any) -> Any:
        return PublisherGrpcAsyncIOTransport(channel=channel, **kwargs)

    client = PublisherAsyncClient(transport=transport)
    return client, raw[0]


def subscriber_client() -> Any:
    """A ``SubscriberAsyncClient`` for the emulator or for Google Cloud."""
    from google.pubsub_v1.services.subscriber import SubscriberAsyncClient

    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not emulator:
        return SubscriberAsyncClient()
    import grpc
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport

    return SubscriberAsyncClient(
        transport=SubscriberGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(emulator))
    )
