"""What the benchmark charts show, shaped from a results file (``python -m tests.bench``'s
``results.json``) without drawing anything: ``tests/bench/charts.py`` draws each ``Chart``.

Each shaping function returns ``None`` when the results lack one of its inputs (its scenario
was not run, or ran before the series it needs was recorded); the chart is then left as it
was. ``merge_results`` is how ``make bench`` keeps the committed copy of the results
(``docs/benchmarks/results.json``): a run replaces the scenarios it ran and keeps the others,
and says when each was measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: Where a chart's legend goes (matplotlib's names).
LegendLoc = Literal["best", "upper right", "upper left", "lower right", "lower left"]

#: The scenario sections of a results file, as the runner names them.
SECTIONS = (
    "memory",
    "pongs_sustained",
    "pongs_ceiling",
    "load",
    "timeout",
    "fanout",
    "durable",
    "storm",
    "backpressure",
    "delivery",
    "presence",
    "sweep",
)
#: Issue 5's pong lag target and issue 12's storm target, drawn as reference lines.
PONG_LAG_TARGET_MS = 1000.0
STORM_TARGET_SECONDS = 10.0


@dataclass(frozen=True)
class Line:
    """One series: a line (or, in a ``bars`` chart, one bar per category)."""

    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    #: Drawn as markers only (single measurements beside a series).
    points: bool = False
    #: The colour cycle's index, to match markers to their line (None: the next colour).
    color: int | None = None


@dataclass(frozen=True)
class Chart:
    """Everything a chart shows; ``kind`` is ``lines`` or ``bars`` (``categories`` name the
    bars' x positions 0, 1, ...)."""

    title: str
    subtitle: str
    xlabel: str
    ylabel: str
    lines: tuple[Line, ...]
    kind: str = "lines"
    categories: tuple[str, ...] = ()
    #: Labelled reference lines: horizontal at y, vertical at x.
    hlines: tuple[tuple[str, float], ...] = ()
    vlines: tuple[tuple[str, float], ...] = ()
    ylim_zero: bool = True
    xlim_zero: bool = False
    xlog: bool = False
    legend_loc: LegendLoc = "best"


def merge_results(committed: dict[str, Any] | None, run: dict[str, Any]) -> dict[str, Any]:
    """``committed`` with every scenario section ``run`` has replaced by the run's, and
    ``measured[section]`` saying which run (start time, machine, arguments) each came from."""
    merged: dict[str, Any] = {
        k: v for k, v in (committed or {}).items() if k in SECTIONS or k == "measured"
    }
    measured = dict(merged.get("measured", {}))
    provenance = {k: run.get(k) for k in ("started_at", "machine", "args")}
    for section in SECTIONS:
        if section in run:
            merged[section] = run[section]
            measured[section] = provenance
    merged["measured"] = {k: measured[k] for k in SECTIONS if k in measured}
    return {k: merged[k] for k in ("measured", *SECTIONS) if k in merged}


def _get(results: dict[str, Any], *path: str) -> Any:
    """``results[a][b]...``, or None where a step is missing."""
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def memory_chart(results: dict[str, Any]) -> Chart | None:
    """Memory per idle socket against the sockets held, the gateway beside Node ``ws``."""
    gateway = _get(results, "memory", "series", "points")
    node = _get(results, "load", "node_memory_series", "points")
    if not gateway or not node:
        return None

    def line(label: str, points: list[dict[str, Any]], color: int) -> Line:
        measured = [p for p in points if p["sockets"] and p["per_socket_kb"] is not None]
        return Line(
            label,
            tuple(float(p["sockets"]) for p in measured),
            tuple(float(p["per_socket_kb"]) for p in measured),
            color=color,
        )

    lines = [line("gateway", gateway, 0), line("Node ws", node, 1)]
    single = results["memory"]
    lines.append(
        Line(
            f"gateway, {single['held_by_gateway']:,} at once (scenario A)",
            (float(single["held_by_gateway"]),),
            (float(single["per_connection_kb"]),),
            points=True,
            color=0,
        )
    )
    load = results["load"]
    if "node_memory_kb_per_socket" in load:
        lines.append(
            Line(
                f"Node ws, {load['idle_connections']:,} at once (load scenario)",
                (float(load["idle_connections"]),),
                (float(load["node_memory_kb_per_socket"]),),
                points=True,
                color=1,
            )
        )
    return Chart(
        title="Memory per idle socket",
        subtitle="RSS growth over the baseline / sockets held, sockets added in steps",
        xlabel="idle sockets held",
        ylabel="KB per socket",
        lines=tuple(lines),
        xlim_zero=True,
        legend_loc="lower right",
    )


def window_buckets(start: dict[str, int], end: dict[str, int]) -> list[tuple[str, int]]:
    """Pongs per lag bucket (upper bound in ms, ``+Inf`` last) between two snapshots of the
    gateway's cumulative histogram."""
    bounds = list(end)
    cumulative = [end[b] - start.get(b, 0) for b in bounds]
    counts = [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]], strict=True)]
    return list(zip(bounds, counts, strict=True))


def pong_lag_chart(results: dict[str, Any]) -> Chart | None:
    """The share of a pong run's window in each lag bucket, sustained beside ceiling."""
    runs = [results.get("pongs_sustained"), results.get("pongs_ceiling")]
    if not all(r and "window_start" in r and "window_end" in r for r in runs):
        return None
    shaped: list[tuple[str, list[tuple[str, int]]]] = []
    for run in runs:
        assert run is not None
        buckets = window_buckets(
            run["window_start"]["lag_histogram_ms"], run["window_end"]["lag_histogram_ms"]
        )
        label = (
            f"{run['run']}: {run['connected']:,} sockets at {run['ping_interval']:g} s, "
            f"p99 {run['lag_p99_ms']:g} ms"
        )
        shaped.append((label, buckets))
    bounds = [b for b, _ in shaped[0][1]]
    target = bounds.index(f"{PONG_LAG_TARGET_MS:g}") if f"{PONG_LAG_TARGET_MS:g}" in bounds else 0
    used = [i for i, b in enumerate(bounds) if any(run[i][1] for _, run in shaped)]
    last = max([target, *used])
    categories = tuple(
        f"≤ {float(b):,g}" if b != "+Inf" else f"> {float(bounds[-2]):,g}"
        for b in bounds[: last + 1]
    )
    lines = []
    for label, buckets in shaped:
        total = sum(n for _, n in buckets) or 1
        lines.append(
            Line(
                label,
                tuple(float(i) for i in range(last + 1)),
                tuple(100 * n / total for _, n in buckets[: last + 1]),
            )
        )
    return Chart(
        title="Pong lag, received → committed to Firestore",
        subtitle="share of the steady window's pongs in each lag bucket (bucket upper bounds)",
        xlabel="lag, ms",
        ylabel="% of the window's pongs",
        lines=tuple(lines),
        kind="bars",
        categories=categories,
        vlines=(("target: p99 < 1 s", target + 0.5),),
        legend_loc="upper right",
    )


def load_cpu_chart(results: dict[str, Any]) -> Chart | None:
    """CPU per ping/pong cycle over the load window, the gateway against Node ``ws``."""
    gateway = _get(results, "load", "gateway")
    node = _get(results, "load", "node")
    if not gateway or not node or "samples" not in gateway or "samples" not in node:
        return None
    lines = []
    hlines = []
    for label, side in (("gateway (pongs persisted)", gateway), ("Node ws", node)):
        samples = side["samples"]
        lines.append(
            Line(
                label,
                tuple(float(s["t"]) for s in samples),
                tuple(float(s["cpu_us_per_cycle"]) for s in samples),
            )
        )
        hlines.append((f"{label.split(' ')[0]}, whole window", float(side["cpu_us_per_cycle"])))
    load = results["load"]
    return Chart(
        title="CPU per ping/pong cycle, gateway against Node ws",
        subtitle=f"{load['connections']:,} sockets pinged every second; whole-window ratio "
        f"{load['cpu_ratio']:.2f} x (goal ≤ 2 x)",
        xlabel="seconds into the window",
        ylabel="CPU µs per cycle",
        lines=tuple(lines),
        hlines=tuple(hlines),
        legend_loc="lower right",
    )


def storm_chart(results: dict[str, Any]) -> Chart | None:
    """The reconnect storm over time: connects started, sockets admitted, sockets pinged."""
    storm = results.get("storm")
    timeline = _get(results, "storm", "timeline")
    if not storm or not timeline or not timeline["admitted"]:
        return None
    step = float(timeline["bin_seconds"])
    lines = []
    for key, label in (
        ("started", "connects started"),
        ("admitted", "admitted (upgrade answered)"),
        ("pinged", "first ping received"),
    ):
        counts = timeline[key]
        lines.append(
            Line(
                label,
                tuple(round(step * (i + 1), 6) for i in range(len(counts))),
                tuple(float(c) for c in counts),
            )
        )
    return Chart(
        title="Reconnect storm: sockets over time",
        subtitle=f"{storm['sockets']:,} sockets with real ID tokens at once; "
        f"{storm['admitted']:,} admitted ({storm['admissions_per_s']:,.0f}/s), "
        f"all pinged after {storm['all_pinged_seconds']:.1f} s",
        xlabel="seconds since the first connect started",
        ylabel="sockets (cumulative)",
        lines=tuple(lines),
        vlines=((f"goal: all pinged < {STORM_TARGET_SECONDS:g} s", STORM_TARGET_SECONDS),),
        legend_loc="lower right",
    )


def ecdf(samples: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The empirical distribution: each sorted value and the % of values at or below it."""
    ordered = sorted(samples)
    n = len(ordered)
    return tuple(ordered), tuple(100 * (i + 1) / n for i in range(n))


def fanout_chart(results: dict[str, Any]) -> Chart | None:
    """Fan-out latency distributions across three instances behind the proxy."""
    fanout = results.get("fanout")
    samples = _get(results, "fanout", "send", "samples_ms")
    if not fanout or not samples:
        return None
    groups = [
        ("send, answered by the user's instance", samples.get("answered_by_holder")),
        ("send, published to the user's instance", samples.get("answered_elsewhere")),
        (
            f"send, {fanout['cpu'].get('concurrency', 32)} in flight",
            fanout["cpu"].get("latency_samples_ms"),
        ),
        (
            f"broadcast to {fanout['sockets']:,}, last socket",
            fanout["broadcast"].get("last_socket_samples_ms"),
        ),
        ("sweep commit → timeout frame", fanout["timeout"].get("latency_samples_ms")),
    ]
    lines = []
    for label, values in groups:
        if values:
            xs, ys = ecdf(values)
            lines.append(Line(f"{label} (n={len(values):,})", xs, ys))
    return Chart(
        title="Fan-out latency, to the client's receipt",
        subtitle=f"{fanout['instances']} instances behind a round-robin proxy, Pub/Sub emulator, "
        f"{fanout['sockets']:,} sockets",
        xlabel="ms (log scale)",
        ylabel="% of messages at or below",
        lines=tuple(lines),
        xlog=True,
        legend_loc="lower right",
    )


#: Every chart: its file name under the output folder and the function shaping it.
CHARTS: dict[str, Callable[[dict[str, Any]], Chart | None]] = {
    "memory.svg": memory_chart,
    "pong-lag.svg": pong_lag_chart,
    "load-cpu.svg": load_cpu_chart,
    "storm.svg": storm_chart,
    "fanout.svg": fanout_chart,
}
