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
