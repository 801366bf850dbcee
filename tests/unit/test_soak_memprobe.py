"""The soak's debug memory probes (tests/soak/memprobe.py) and their comparison
(tests/soak/memreport.py), in this process: what a probe writes and what the report reads."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from tests.soak import memprobe, memreport


def test_a_probe_records_memory_objects_and_the_trim(tmp_path: Path) -> None:
    """A trimming probe writes resident memory, the heap, objects by type and what trim left."""
    memprobe.probe(tmp_path, "soak-0-g1", 1, trim=True)
    record = json.loads((tmp_path / "soak-0-g1-1.json").read_text())
    assert record["rss"] > 0 and record["rss_after_trim"] > 0
    assert record["mallinfo"]["arena"] > 0
    assert record["types"]["dict"] > 0
    assert "arenas allocated current" in (tmp_path / "soak-0-g1-1.pymalloc.txt").read_text()
    assert "<malloc" in (tmp_path / "soak-0-g1-1.malloc.xml").read_text()


def test_the_report_names_what_was_allocated_since_tracing_began(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A last snapshot alone (tracing began at the first probe) is reported by traceback."""
    memprobe.probe(tmp_path, "soak-0-g1", 1, trim=False)
    tracemalloc.start(5)
    try:
        kept = [bytearray(4096) for _ in range(64)]
        memprobe.probe(tmp_path, "soak-0-g1", 2, trim=True)
    finally:
        tracemalloc.stop()
    assert len(kept) == 64
    assert memreport.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "soak-0-g1: probe soak-0-g1-1 against soak-0-g1-2" in out
    assert "allocated since tracing began" in out
    assert "test_soak_memprobe.py" in out
