"""``python -m tests.soak.memreport DIR [--top N]``: compare a soak's memory probes
(``SOAK_MEMPROBE``, :mod:`tests.soak.memprobe`) in DIR, per instance, first against last:
resident memory, glibc's heap, what ``malloc_trim`` gave back, live objects by type and the
tracemalloc growth by traceback. Debug only."""

from __future__ import annotations

import argparse
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

MiB = 2**20


def _mib(value: float) -> str:
    return f"{value / MiB:8.1f} MiB"


def _probes(directory: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.glob("*.json")):
        instance, _, number = path.stem.rpartition("-")
        found.setdefault(instance, []).append(path)
    for paths in found.values():
        paths.sort(key=lambda p: int(p.stem.rpartition("-")[2]))
    return found


def describe(first: dict[str, Any], last: dict[str, Any]) -> list[str]:
    lines = [
        f"  rss             {_mib(first['rss'])} -> {_mib(last['rss'])}"
        f"  ({(last['rss'] - first['rss']) / first['rss']:+.1%})",
    ]
    if "rss_after_trim" in last:
        lines.append(f"  rss after trim  {_mib(last['rss_after_trim'])}")
    for key in ("arena", "uordblks", "fordblks", "hblkhd"):
        a, b = first["mallinfo"].get(key, 0), last["mallinfo"].get(key, 0)
        lines.append(f"  malloc {key:9}{_mib(a)} -> {_mib(b)}")
    if "mallinfo_after_trim" in last:
        free = last["mallinfo_after_trim"]["fordblks"]
        lines.append(f"  malloc fordblks after trim {_mib(free)}")
    if "traced" in first and "traced" in last:
        lines.append(f"  traced          {_mib(first['traced'][0])} -> {_mib(last['traced'][0])}")
        lines.append(
            f"  tracemalloc own {_mib(first['tracemalloc_overhead'])} -> "
            f"{_mib(last['tracemalloc_overhead'])}"
        )
    types_a, types_b = first["types"], last["types"]
    grown = sorted(
        ((types_b.get(t, 0) - types_a.get(t, 0), t) for t in set(types_a) | set(types_b)),
        reverse=True,
    )
    lines.append("  objects by type, growth: " + ", ".join(f"{t} {n:+d}" for n, t in grown[:15]))
    return lines


def snapshot_diff(first: Path, last: Path, top: int, frames: int) -> list[str]:
    old = tracemalloc.Snapshot.load(str(first))
    new = tracemalloc.Snapshot.load(str(last))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    old, new = old.filter_traces(ignore), new.filter_traces(ignore)
    lines = ["  top growth by line:"]
    for stat in new.compare_to(old, "lineno")[:top]:
        lines.append(f"    {stat}")
    lines.append("  top growth by traceback:")
    for stat in new.compare_to(old, "traceback")[:top]:
        lines.append(f"    {stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks")
        for line in stat.traceback.format(limit=frames, most_recent_first=True):
            lines.append(f"      {line}")
    return lines


def snapshot_top(path: Path, top: int, frames: int) -> list[str]:
    snap = tracemalloc.Snapshot.load(str(path))
    total = sum(stat.size for stat in snap.statistics("filename"))
    lines = [f"  allocated since tracing began, still alive: {_mib(total)}", "  top by file:"]
    for stat in snap.statistics("filename")[:top]:
        lines.append(f"    {stat}")
    lines.append("  top by line:")
    for stat in snap.statistics("lineno")[:top]:
        lines.append(f"    {stat}")
    lines.append("  top by traceback:")
    for stat in snap.statistics("traceback")[:top]:
        lines.append(f"    {stat.size / 1024:.1f} KiB, {stat.count} blocks")
        for line in stat.traceback.format(limit=frames, most_recent_first=True):
            lines.append(f"      {line}")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.memreport", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args(argv)
    for instance, paths in _probes(args.directory).items():
        if len(paths) < 2:
            continue
        first, last = (json.loads(p.read_text()) for p in (paths[0], paths[-1]))
        print(f"{instance}: probe {paths[0].stem} against {paths[-1].stem}")
        print("\n".join(describe(first, last)))
        snaps = [p.with_suffix(".snap") for p in (paths[0], paths[-1])]
        if all(s.exists() for s in snaps):
            print("\n".join(snapshot_diff(snaps[0], snaps[1], args.top, args.frames)))
        elif snaps[1].exists():
            # Tracing began at the first probe: the last snapshot is what was allocated since
            # and is still alive.
            print("\n".join(snapshot_top(snaps[1], args.top, args.frames)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
