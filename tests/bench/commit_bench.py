"""The Firestore commit paths compared on the same batches of pong writes (issue 14, part 5).

``FirestoreStore.commit`` sends wire bytes (gateway.storage.firestore_wire) on the client's gRPC
channel. This script measures it against the other paths for the same writes, against a
Firestore emulator:

* ``wire``: ``FirestoreStore.commit`` as it runs;
* ``protobufs``: the path it replaced, each write built as the library's raw protobuf
  ``Write`` and the request sent through the generated client's ``commit``;
* ``public``: ``FirestoreStore.commit_with_batch``, the library's ``AsyncWriteBatch``:
  ``batch.set(ref, fields, merge=True)`` per write, then ``await batch.commit(retry=None)`` (the
  same atomic Commit RPC, built by the library);
* ``bulk_writer``: ``BulkWriter.set(..., merge=True)`` + ``flush()`` on a sync client, in a
  thread (for reference only: BulkWriter is not atomic, so it cannot back ``Store.commit``).

For each path it reports, per write: CPU on the event-loop thread (``time.thread_time``, what
stalls every socket of the instance), CPU of the whole process (``time.process_time``, gRPC's
threads included), and per batch: wall time and the longest event-loop stall seen by a 1 ms
ticker. Paths alternate batch by batch so that drift in the emulator hits them alike.

    .venv/bin/python -m tests.bench.commit_bench [--batches 30] [--size 500]

Starts its own emulator unless ``FIRESTORE_EMULATOR_HOST`` is set. Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

from emulator import procs
from gateway.storage.firestore_store import (
    COMMIT_TIMEOUT,
    FirestoreStore,
    _public_fields,
    _raw_types,
    merge_write,
)
from gateway.storage.store import Write, pong_write

LOG_DIR = procs.ROOT / ".run" / "bench"


def commit_bulk_writer(client: Any, writes: Sequence[Write]) -> None:
    from google.cloud import firestore
    from google.cloud.firestore_v1.bulk_writer import BulkWriterOptions

    # No ramp-up: BulkWriter starts at 500 writes/s by default, which would measure its throttle.
    bulk = client.bulk_writer(
        BulkWriterOptions(initial_ops_per_second=1_000_000, max_ops_per_second=1_000_000)
    )
    for write in writes:
        ref = client.collection(write.collection).document(write.doc_id)
        bulk.set(ref, _public_fields(write.fields, firestore.DELETE_FIELD), merge=True)
    bulk.close()  # flushes and waits


async def commit_protobufs(client: Any, writes: Sequence[Write]) -> None:
    from google.cloud.firestore_v1.types import firestore

    database = client._database_string
    request = firestore.CommitRequest.wrap(
        _raw_types().CommitRequest(
            database=database, writes=[merge_write(database, w) for w in writes]
        )
    )
    await client._firestore_api.commit(
        request=request, metadata=client._rpc_metadata, timeout=COMMIT_TIMEOUT, retry=None
    )


@dataclass
class Samples:
    loop_cpu: list[float] = field(default_factory=list)  # seconds per write
    process_cpu: list[float] = field(default_factory=list)  # seconds per write
    wall: list[float] = field(default_factory=list)  # seconds per batch
    stall: list[float] = field(default_factory=list)  # seconds, longest loop stall per batch


class StallMeter:
    """The longest gap between ticks of a 1 ms ticker: how long the loop was not available."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last - 0.001)
            last = now

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick())

    def reset(self) -> None:
        self.longest = 0.0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def measure(
    commit: Callable[[Sequence[Write]], Awaitable[None]],
    writes: Sequence[Write],
    meter: StallMeter,
    into: Samples,
) -> None:
    await asyncio.sleep(0.005)  # let the ticker run before the batch starts
    meter.reset()
    wall, loop_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
    await commit(writes)
    into.loop_cpu.append((time.thread_time() - loop_cpu) / len(writes))
    into.process_cpu.append((time.process_time() - process_cpu) / len(writes))
    into.wall.append(time.perf_counter() - wall)
    into.stall.append(meter.longest)


def summary(name: str, s: Samples) -> str:
    def us(values: list[float]) -> str:
        return f"{statistics.median(values) * 1e6:7.1f}"

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1e3:7.1f}"

    return (
        f"{name:12} {us(s.loop_cpu)} us {us(s.process_cpu)} us "
        f"{ms(s.wall)} ms {ms(s.stall)} ms ({max(s.stall) * 1e3:.1f})"
    )


async def run(project: str, batches: int, size: int, bulk_writer: bool) -> dict[str, Samples]:
    from google.cloud import firestore

    store = FirestoreStore(project)
    sync_client = firestore.Client(project=project)
    users = [f"u-{i}" for i in range(size)]
    paths: dict[str, Callable[[Sequence[Write]], Awaitable[None]]] = {
        "wire": store.commit,
        "protobufs": lambda writes: commit_protobufs(store.client, writes),
        "public": store.commit_with_batch,
    }
    if bulk_writer:
        paths["bulk_writer"] = lambda writes: asyncio.to_thread(
            commit_bulk_writer, sync_client, writes
        )
    results = {name: Samples() for name in paths}
    meter = StallMeter()
    meter.start()
    try:
        for round_ in range(batches + 3):
            for name, commit in paths.items():
                writes = [pong_write(u, datetime.now(UTC)) for u in users]
                sink = results[name] if round_ >= 3 else Samples()  # 3 warm-up rounds
                await measure(commit, writes, meter, sink)
    finally:
        await meter.stop()
        await store.close()
        sync_client.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="measured batches per path")
    parser.add_argument("--size", type=int, default=500, help="writes per batch (max 500)")
    parser.add_argument("--no-bulk-writer", action="store_true", help="skip the BulkWriter path")
    args = parser.parse_args(argv)

    process: procs.Process | None = None
    if not os.environ.get("FIRESTORE_EMULATOR_HOST"):
        port = procs.free_port()
        process = procs.firestore_process("127.0.0.1", port, LOG_DIR)
        process.log_path = LOG_DIR / f"firestore-commit-bench-{port}.log"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        process.start()
        process.wait_ready(60)
        os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{port}"
    try:
        results = asyncio.run(
            run(
                f"demo-commit-bench-{uuid.uuid4().hex[:8]}",
                args.batches,
                args.size,
                not args.no_bulk_writer,
            )
        )
    finally:
        if process is not None:
            process.stop()

    print(
        f"{args.batches} batches of {args.size} pong writes per path, medians; "
        f"Python {platform.python_version()}, google-cloud-firestore "
        f"{version('google-cloud-firestore')}, {os.cpu_count()} CPUs, emulator "
        f"{'started here' if process else os.environ['FIRESTORE_EMULATOR_HOST']}"
    )
    print(f"{'path':12} loop CPU/write proc CPU/write wall/batch stall (max)")
    for name, samples in results.items():
        print(summary(name, samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
