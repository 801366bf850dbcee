"""The throttling proxy the backpressure test and bench put in front of Firestore."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.throttle import ThrottleProxy


@pytest.fixture
def sink() -> Iterator[tuple[str, list[int]]]:
    """A TCP server that reads everything; its address and the bytes it has read so far."""
    server = socket.create_server(("127.0.0.1", 0))
    received = [0]

    def serve() -> None:
        with server:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    received[0] += len(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}", received
    server.close()
    thread.join(5)


def wait_for(received: list[int], want: int, timeout: float) -> float:
    """Seconds until ``received`` reaches ``want``; fail at the deadline."""
    started = time.monotonic()
    while received[0] < want:
        assert time.monotonic() - started < timeout, f"{received[0]} of {want} bytes passed"
        time.sleep(0.01)
    return time.monotonic() - started


def test_the_proxy_paces_bytes_at_its_rate_and_passes_nothing_at_zero(
    sink: tuple[str, list[int]],
) -> None:
    """Unthrottled bytes pass and are counted; at rate 0 nothing passes until the rate is
    lifted; at a rate, what exceeds one second's worth waits its turn."""
    target, received = sink
    proxy = ThrottleProxy(target).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as conn:
            conn.sendall(b"x" * 1000)
            wait_for(received, 1000, 5)
            assert proxy.bytes == proxy.upstream == 1000

            proxy.rate = 0
            conn.sendall(b"y" * 1000)
            time.sleep(0.5)
            assert received[0] == 1000
            proxy.rate = None
            wait_for(received, 2000, 5)

            # 40 KB at 10 KB/s, a second of it banked: at least 3 s on any machine.
            proxy.rate = 10_000
            conn.sendall(b"z" * 40_000)
            assert wait_for(received, 42_000, 30) >= 2.5
    finally:
        proxy.stop()
