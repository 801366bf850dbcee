"""gateway.cluster.pubsub_clients: the raw Publish calls' channel is built as the publisher
client's own, for Google Cloud as for the emulator."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cluster.pubsub_clients import publisher_with_channel


async def test_the_publish_channel_twins_the_clients_own_for_google_cloud(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the emulator, the Publish channel comes from the transport's create_channel
    with exactly the arguments of the client's own channel (endpoint, credentials, scopes,
    options), and is a channel apart from it (no logging interceptor)."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "p"))
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    real = PublisherGrpcAsyncIOTransport.create_channel

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(PublisherGrpcAsyncIOTransport, "create_channel", spy)
    client, channel = publisher_with_channel()
    try:
        assert len(calls) == 2 and calls[0] == calls[1]
        assert calls[0][0][0] == "pubsub.googleapis.com:443"
        assert channel is not client.transport.grpc_channel
        assert not channel._unary_unary_interceptors
    finally:
        await channel.close()
        await client.transport.close()


async def test_the_publish_channel_goes_to_the_emulator_when_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With PUBSUB_EMULATOR_HOST, both the client and the Publish channel are plain channels
    to the emulator, and the Publish channel is not the client's."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    client, channel = publisher_with_channel()
    try:
        assert channel is not client.transport.grpc_channel
        assert not channel._unary_unary_interceptors
    finally:
        await channel.close()
        await client.transport.close()
