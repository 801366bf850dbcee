"""What a Publish call costs the gateway's process, by messages per call.

``python -m tests.bench.publish_bench`` starts the Pub/Sub emulator, one ``PubSubBroker``
subscribed to its own topic, and publishes 200 single messages one call after another, then 100
calls of 10 messages each, waiting for each message to come back through the streaming pull
(``PB_CALLS=N`` in the environment sets the single messages' count: more for a profile).
It prints the process CPU (every thread: the event loop and gRPC's) per call, receiving
included. The fan-out's publish coalescing (``gateway.cluster.broker``) rests on the result:
the call costs, the message hardly does (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from emulator import procs

#: (messages per call, calls); the bench's own knob, not a gateway setting.
ROUNDS = ((1, int(os.environ.get("PB_CALLS", "200"))), (10, 100))


async def measure() -> None:
    from gateway.cluster.broker import PubSubBroker

    received: list[bytes] = []
    broker = PubSubBroker("publish-bench", "publish-bench", "bench")
    await broker.start(lambda data, attributes: received.append(data))
    while not broker.connected:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    try:
        for per_call, calls in ROUNDS:
            cpu, wall, before = time.process_time(), time.monotonic(), len(received)
            for _ in range(calls):
                await asyncio.gather(
                    *(broker.publish(b"x" * 200, {"kind": "send"}) for _ in range(per_call))
                )
            while len(received) < before + calls * per_call and time.monotonic() - wall < 30:
                await asyncio.sleep(0.05)
            spent = time.process_time() - cpu
            print(
                f"{per_call} message(s) per call: {calls} calls, "
                f"{len(received) - before} received, {1000 * spent / calls:.2f} ms CPU per call"
            )
    finally:
        await broker.stop()


def main() -> None:
    port = procs.free_port()
    with tempfile.TemporaryDirectory() as logs:
        emulator = procs.pubsub_process("127.0.0.1", port, Path(logs))
        emulator.start()
        try:
            emulator.wait_ready(90)
            os.environ["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{port}"
            asyncio.run(measure())
        finally:
            emulator.stop()


if __name__ == "__main__":
    main()
