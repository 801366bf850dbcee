"""The benchmark charts' data shaping (tests/bench/chart_data.py and the scenarios' series
helpers): results in, series out, nothing drawn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.bench import chart_data
from tests.bench.charts import draw_all
from tests.bench.memory_series import step_counts
from tests.bench.storm_bench import timeline


def test_step_counts_are_equal_steps_up_to_the_total() -> None:
    """The memory series reads RSS at equal steps ending at the single figure's count."""
    assert step_counts(10_000, 5) == [2_000, 4_000, 6_000, 8_000, 10_000]
    assert step_counts(3, 5) == [1, 2, 3]
    assert step_counts(10_000, 0) == []


def test_storm_timeline_counts_cumulatively_per_bin() -> None:
    """Connects, admissions and first pings are counted by the end of each 0.1 s bin."""
    records: list[list[Any]] = [
        [100.00, 100.05, 100.15, None],
        [100.02, 100.25, 100.31, None],
        [100.03, 0, 0, 4429],  # refused: neither admitted nor pinged
        [100.11, 100.12, 0, None],  # admitted, never pinged
    ]
    got = timeline(records, 0.1)
    assert got["bin_seconds"] == 0.1
    assert got["started"] == [3, 4, 4, 4]
    assert got["admitted"] == [1, 2, 3, 3]
    assert got["pinged"] == [0, 1, 1, 2]
    assert timeline([], 0.1)["admitted"] == []


def _pongs(run: str, start: dict[str, int], end: dict[str, int]) -> dict[str, Any]:
    return {
        "run": run,
        "connected": 2_500,
        "ping_interval": 1.0,
        "lag_p99_ms": 200.0,
        "window_start": {"lag_histogram_ms": start},
        "window_end": {"lag_histogram_ms": end},
    }


BOUNDS = ["100", "200", "1000", "2000", "+Inf"]


def _cumulative(counts: list[int]) -> dict[str, int]:
    total, out = 0, {}
    for bound, n in zip(BOUNDS, counts, strict=True):
        total += n
        out[bound] = total
    return out


def test_window_buckets_are_the_pongs_between_two_snapshots() -> None:
    """Bucket counts come from the difference of two cumulative histograms, bucket by bucket."""
    start = _cumulative([5, 1, 0, 0, 0])
    end = _cumulative([15, 31, 0, 0, 0])
    assert chart_data.window_buckets(start, end) == [
        ("100", 10),
        ("200", 30),
        ("1000", 0),
        ("2000", 0),
        ("+Inf", 0),
    ]


def test_pong_lag_chart_shares_and_target() -> None:
    """Each run's bars are shares of its window's pongs, trimmed after the last used bucket
    but never before the 1 s target, which is marked between its bucket and the next."""
    results = {
        "pongs_sustained": _pongs("sustained", _cumulative([0] * 5), _cumulative([1, 3, 0, 0, 0])),
        "pongs_ceiling": _pongs("ceiling", _cumulative([0] * 5), _cumulative([0, 2, 2, 0, 0])),
    }
    chart = chart_data.pong_lag_chart(results)
    assert chart is not None and chart.kind == "bars"
    assert chart.categories == ("≤ 100", "≤ 200", "≤ 1,000")
    assert [line.ys for line in chart.lines] == [(25.0, 75.0, 0.0), (0.0, 50.0, 50.0)]
    assert chart.vlines == (("target: p99 < 1 s", 2.5),)
    tail = _cumulative([0, 0, 0, 0, 4])
    results["pongs_ceiling"] = _pongs("ceiling", _cumulative([0] * 5), tail)
    chart = chart_data.pong_lag_chart(results)
    assert chart is not None and chart.categories[-1] == "> 2,000"


def test_ecdf_is_the_share_at_or_below_each_value() -> None:
    """The fan-out distributions: sorted values against the % of samples at or below."""
    assert chart_data.ecdf([30.0, 10.0, 20.0, 40.0]) == (
        (10.0, 20.0, 30.0, 40.0),
        (25.0, 50.0, 75.0, 100.0),
    )


def test_merge_replaces_the_run_sections_and_keeps_the_others() -> None:
    """A run's scenarios replace the committed ones; the rest stay, each with its provenance;
    the run's summary and logs, which span only its own scenarios, are not kept."""
    committed = chart_data.merge_results(
        None, {"started_at": "T1", "memory": {"a": 1}, "storm": {"s": 1}, "summary": []}
    )
    assert committed["measured"]["storm"]["started_at"] == "T1"
    assert "summary" not in committed
    merged = chart_data.merge_results(
        committed, {"started_at": "T2", "args": {"only": ["storm"]}, "storm": {"s": 2}}
    )
    assert merged["memory"] == {"a": 1} and merged["storm"] == {"s": 2}
    assert merged["measured"]["memory"]["started_at"] == "T1"
    assert merged["measured"]["storm"] == {
        "started_at": "T2",
        "machine": None,
        "args": {"only": ["storm"]},
    }
    assert list(merged) == ["measured", "memory", "storm"]


@pytest.mark.parametrize("name", sorted(chart_data.CHARTS))
def test_a_chart_without_its_inputs_is_not_shaped(name: str) -> None:
    """Results lacking a chart's scenario give no chart (the SVG is then left as it was)."""
    assert chart_data.CHARTS[name]({"measured": {}, "durable": {}}) is None


def test_memory_chart_needs_both_servers() -> None:
    """The memory chart shows the gateway beside Node: with the gateway's series alone it is
    not drawn; with both, each series starts at its first step, not at the baseline."""
    points = [
        {"sockets": 0, "rss_kb": 80_000, "per_socket_kb": None},
        {"sockets": 5_000, "rss_kb": 110_000, "per_socket_kb": 6.0},
    ]
    memory = {"series": {"points": points}, "held_by_gateway": 10_000, "per_connection_kb": 5.5}
    assert chart_data.memory_chart({"memory": memory}) is None
    load = {
        "node_memory_series": {"points": points},
        "idle_connections": 10_000,
        "node_memory_kb_per_socket": 6.1,
    }
    chart = chart_data.memory_chart({"memory": memory, "load": load})
    assert chart is not None
    assert [(line.xs, line.ys, line.points) for line in chart.lines] == [
        ((5_000.0,), (6.0,), False),
        ((5_000.0,), (6.0,), False),
        ((10_000.0,), (5.5,), True),
        ((10_000.0,), (6.1,), True),
    ]


def test_draw_all_leaves_a_chart_without_inputs_as_it_was(tmp_path: Path) -> None:
    """A results file lacking every chart's scenario rewrites no SVG and says so per chart."""
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"durable": {}}))
    old = tmp_path / "memory.svg"
    old.write_text("<svg>an earlier run</svg>")
    outcome = draw_all(results, tmp_path)
    assert set(outcome) == set(chart_data.CHARTS)
    assert all(what.startswith("left as it was") for what in outcome.values())
    assert old.read_text() == "<svg>an earlier run</svg>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.svg", "results.json"]
