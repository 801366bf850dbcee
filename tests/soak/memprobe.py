"""A debug-only way to run a gateway: ``python -m tests.soak.memprobe`` is ``python -m gateway``
with memory probes, which the soak uses when ``SOAK_MEMPROBE`` is set (docs/soak.md).

It answers two signals by writing, under ``SOAK_MEMPROBE_DIR``, a file per probe
named after the instance and the probe's number:

- SIGUSR1: resident memory, glibc's ``mallinfo2`` (what the allocator holds against what is in
  use), live objects by type after a full collection, pymalloc's statistics and the
  tracemalloc snapshot;
- SIGUSR2: the same, then ``malloc_trim(0)`` and resident memory again: what the allocator
  gives back is retention, what stays is held.

The first probe starts ``tracemalloc`` with ``SOAK_MEMPROBE`` frames per traceback (0: no
tracing, the other probes only).

Nothing here is imported by the gateway; the product runs without it.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import FrameType

from gateway.instance.idle_trim import libc


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33 and later): sizes in bytes."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


LIBC = libc()


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def mallinfo() -> dict[str, int]:
    if LIBC is None or not hasattr(LIBC, "mallinfo2"):
        return {}
    LIBC.mallinfo2.restype = MallInfo2
    info = LIBC.mallinfo2()
    return {name: int(getattr(info, name)) for name, *_ in MallInfo2._fields_}


def type_counts() -> dict[str, int]:
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    return dict(counts.most_common(200))


def pymalloc_stats(path: Path) -> None:
    """``sys._debugmallocstats()``, which writes to the C stderr: pymalloc's arenas come from
    mmap, not malloc, so ``mallinfo2`` does not see them. Whatever another thread logs in that
    moment lands in the file too."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("wb") as out:
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def malloc_arenas(path: Path) -> None:
    """glibc's ``malloc_info``: each arena's in-use and free sizes (an arena per thread that
    allocated: the main one for the event loop, others for gRPC's threads)."""
    if LIBC is None:
        return
    LIBC.fopen.restype = ctypes.c_void_p
    LIBC.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    LIBC.fclose.argtypes = [ctypes.c_void_p]
    LIBC.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    stream = LIBC.fopen(str(path).encode(), b"w")
    if stream:
        LIBC.malloc_info(0, stream)
        LIBC.fclose(stream)


def suspended() -> dict[str, int]:
    """Async generators and coroutines alive, by where each is suspended: what a pile of
    unfinished reads is waiting on."""
    found: collections.Counter[str] = collections.Counter()
    for o in gc.get_objects():
        if inspect.isasyncgen(o):
            frame = o.ag_frame
        elif inspect.iscoroutine(o):
            frame = o.cr_frame
        else:
            continue
        if frame is not None:
            code = frame.f_code
            where = f"{type(o).__name__} {code.co_qualname} {code.co_filename}:{frame.f_lineno}"
            found[where] += 1
    return dict(found.most_common(40))


def batch_gets() -> dict[str, int]:
    """Live ``BatchGetDocumentsRequest``s by the collection of their first document and
    whether they read in a transaction: which caller's reads are left unfinished."""
    found: collections.Counter[str] = collections.Counter()
    for o in gc.get_objects():
        if type(o).__name__ != "BatchGetDocumentsRequest":
            continue
        try:
            documents = list(o.documents)
            first = documents[0].split("/documents/", 1)[-1] if documents else "?"
            collection = first.split("/", 1)[0]
            transactional = bool(o.transaction) or "new_transaction" in o
            found[f"{collection} x{len(documents)} transaction={transactional}"] += 1
        except Exception as exc:  # a debug probe: never fail the probe itself
            found[f"unreadable {type(exc).__name__}"] += 1
    return dict(found.most_common(20))


def probe(directory: Path, instance: str, number: int, trim: bool) -> None:
    started = time.monotonic()
    record: dict[str, object] = {"rss": rss(), "mallinfo": mallinfo()}
    record["collected"] = gc.collect()
    record["rss_after_collect"] = rss()
    record["types"] = type_counts()
    record["suspended"] = suspended()
    record["batch_gets"] = batch_gets()
    stem = directory / f"{instance}-{number}"
    if tracemalloc.is_tracing():
        record["traced"] = tracemalloc.get_traced_memory()
        record["tracemalloc_overhead"] = tracemalloc.get_tracemalloc_memory()
        tracemalloc.take_snapshot().dump(str(stem) + ".snap")
    if tracemalloc.is_tracing() and trim:
        # pymalloc's statistics are empty while tracemalloc hooks the allocators; the last
        # probe has its snapshot already.
        tracemalloc.stop()
    pymalloc_stats(stem.with_suffix(".pymalloc.txt"))
    malloc_arenas(stem.with_suffix(".malloc.xml"))
    if trim and LIBC is not None:
        record["trimmed"] = LIBC.malloc_trim(0)
        record["rss_after_trim"] = rss()
        record["mallinfo_after_trim"] = mallinfo()
    record["seconds"] = time.monotonic() - started
    # Written last, whole: its presence tells the harness the probe is done.
    partial = stem.with_suffix(".tmp")
    partial.write_text(json.dumps(record, indent=1))
    partial.rename(stem.with_suffix(".json"))


def enabled() -> bool:
    """Whether the soak runs its gateways under the probes (``SOAK_MEMPROBE`` set)."""
    return bool(os.environ.get("SOAK_MEMPROBE", "").strip())


def request(directory: Path, targets: dict[str, int], trim: bool, timeout: float = 120) -> None:
    """Ask each instance (id: pid) for its next probe and wait until each has written it."""
    before = {i: len(list(directory.glob(f"{i}-*.json"))) for i in targets}
    for pid in targets.values():
        try:
            os.kill(pid, signal.SIGUSR2 if trim else signal.SIGUSR1)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(list(directory.glob(f"{i}-*.json"))) > n for i, n in before.items()):
            return
        time.sleep(0.5)


def attach_heaptrack(directory: Path, targets: dict[str, int]) -> None:
    """With ``SOAK_MEMPROBE_HEAPTRACK`` set: attach heaptrack (through gdb) to each instance,
    which then records every native allocation from now to its exit, with its native
    backtrace; ``heaptrack_print --print-leaks`` on ``heaptrack-<instance>.zst`` lists what
    was allocated after the attach and never freed. Its output goes to ``heaptrack.log``."""
    if not os.environ.get("SOAK_MEMPROBE_HEAPTRACK"):
        return
    with (directory / "heaptrack.log").open("ab") as log:
        for instance, pid in targets.items():
            subprocess.Popen(
                ["heaptrack", "-o", str(directory / f"heaptrack-{instance}"), "-p", str(pid)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
    # gdb injects the library in a few seconds; allocations before that are not seen.
    time.sleep(20)


def main() -> int:
    directory = Path(os.environ["SOAK_MEMPROBE_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    instance = os.environ.get("GATEWAY_INSTANCE_ID", str(os.getpid()))
    probes = iter(range(1, 1000))

    frames = int(os.environ.get("SOAK_MEMPROBE") or 0)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        probe(directory, instance, next(probes), trim=signum == signal.SIGUSR2)
        if frames > 0 and not tracemalloc.is_tracing():
            # Tracing starts at the first probe (the baseline), not at start-up: the imports'
            # allocations, lazy ones included, cost a minute of CPU traced at 25 frames, which
            # outlasts the harness's start-up deadline. A later snapshot then holds exactly
            # what was allocated since the baseline and is still alive.
            tracemalloc.start(frames)

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)
    from gateway.serving import main as gateway_main

    return gateway_main()


if __name__ == "__main__":
    sys.exit(main())
