"""``python -m tests.bench.charts``: draw the benchmark charts (SVG) from a results file.

    .venv/bin/python -m tests.bench.charts                      # docs/benchmarks/results.json
    .venv/bin/python -m tests.bench.charts --publish .run/bench/results.json   # make bench

``--publish RUN`` first merges a run's results into the committed copy (``--results``,
``docs/benchmarks/results.json``: the run's scenarios replace those sections, the others stay,
see ``chart_data.merge_results``), then draws from that copy. Every chart of
``chart_data.CHARTS`` whose inputs the results hold is written to ``--out``; one whose inputs
are missing is left as it was, and a line says so.

The same results give the same bytes: matplotlib's SVG backend without pyplot or a display,
a fixed hash salt for the ids it generates, no date, the DejaVu Sans that matplotlib ships
drawn as paths, and a pinned matplotlib (the dev lock). Each SVG's metadata names the results
file it was drawn from (``dc:source``, relative to the repository) and that file's sha256
(``dc:identifier``), which ``tests/contract/test_bench_charts.py`` checks.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

from tests.bench.chart_data import CHARTS, Chart, merge_results

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS = ROOT / "docs" / "benchmarks" / "results.json"
DEFAULT_OUT = ROOT / "docs" / "benchmarks"
#: What makes the output reproducible (and readable without the fonts of the reader's machine).
STYLE: dict[Any, Any] = {
    "svg.hashsalt": "presence-gateway-bench",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8.0,
    "legend.framealpha": 0.9,
}
SIZE_INCHES = (8.0, 4.5)
LINESTYLES = ("-", "--", "-.", ":")


def source_name(path: Path) -> str:
    """How a chart names its results file: relative to the repository when inside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(ROOT).as_posix()
    except ValueError:
        return str(resolved)


def _tick(value: float, _position: int | None) -> str:
    """Tick labels as the docs write numbers: 10,000, 2.5."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"


def render(chart: Chart, source: str, digest: str) -> bytes:
    """One chart as SVG bytes, its metadata naming ``source`` and its sha256 ``digest``."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=SIZE_INCHES)
        axes = figure.add_subplot()
        figure.suptitle(chart.title, fontsize=11, fontweight="bold", x=0.01, ha="left")
        axes.set_title(chart.subtitle, fontsize=8.5, loc="left", color="#444444")
        if chart.kind == "bars":
            width = 0.8 / max(len(chart.lines), 1)
            for i, line in enumerate(chart.lines):
                offset = (i - (len(chart.lines) - 1) / 2) * width
                axes.bar([x + offset for x in line.xs], line.ys, width=width, label=line.label)
            axes.set_xticks(range(len(chart.categories)), chart.categories, rotation=45)
            axes.grid(axis="x", visible=False)
        else:
            for i, line in enumerate(chart.lines):
                color = None if line.color is None else f"C{line.color}"
                if line.points:
                    axes.plot(line.xs, line.ys, "D", markersize=6, color=color, label=line.label)
                else:
                    axes.plot(
                        line.xs,
                        line.ys,
                        marker="o" if len(line.xs) <= 12 else "",
                        markersize=3.5,
                        linewidth=1.6,
                        # Lines that coincide (admitted and pinged in a storm) stay visible.
                        linestyle=LINESTYLES[i % len(LINESTYLES)],
                        color=color,
                        label=line.label,
                    )
        for i, (label, y) in enumerate(chart.hlines):
            axes.axhline(y, linestyle="--", linewidth=1.0, color=f"C{i}", alpha=0.8, label=label)
        for label, x in chart.vlines:
            axes.axvline(x, linestyle=":", linewidth=1.2, color="#aa0000", label=label)
        if chart.xlog:
            axes.set_xscale("log")
        elif chart.kind != "bars":  # bars keep their category labels
            axes.xaxis.set_major_formatter(FuncFormatter(_tick))
        axes.yaxis.set_major_formatter(FuncFormatter(_tick))
        if chart.ylim_zero:
            axes.set_ylim(bottom=0)
        if chart.xlim_zero:
            axes.set_xlim(left=0)
        axes.set_xlabel(chart.xlabel)
        axes.set_ylabel(chart.ylabel)
        axes.legend(loc=chart.legend_loc)
        figure.tight_layout()
        out = io.BytesIO()
        figure.savefig(
            out,
            format="svg",
            metadata={
                "Title": chart.title,
                "Date": None,
                "Creator": f"python -m tests.bench.charts (matplotlib {matplotlib.__version__})",
                "Source": source,
                "Identifier": f"sha256:{digest}",
                "Description": f"Drawn from {source} (sha256 {digest}).",
            },
        )
    return out.getvalue()


def draw_all(results_path: Path, out_dir: Path) -> dict[str, str]:
    """Draw every chart whose inputs ``results_path`` holds into ``out_dir``; what happened to
    each, by file name: ``written``, ``unchanged`` or ``left as it was: ...``."""
    raw = results_path.read_bytes()
    results = json.loads(raw)
    digest = hashlib.sha256(raw).hexdigest()
    source = source_name(results_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, str] = {}
    for name, shape in CHARTS.items():
        chart = shape(results)
        target = out_dir / name
        if chart is None:
            outcome[name] = f"left as it was: {source} lacks its inputs"
            continue
        svg = render(chart, source, digest)
        if target.exists() and target.read_bytes() == svg:
            outcome[name] = "unchanged"
        else:
            target.write_bytes(svg)
            outcome[name] = "written"
    return outcome


def publish(run_path: Path, committed_path: Path) -> None:
    """Merge a run's results into the committed copy (written only when it changes)."""
    run = json.loads(run_path.read_text())
    committed = json.loads(committed_path.read_text()) if committed_path.exists() else None
    text = json.dumps(merge_results(committed, run), indent=2, sort_keys=False) + "\n"
    if not committed_path.exists() or committed_path.read_text() != text:
        committed_path.parent.mkdir(parents=True, exist_ok=True)
        committed_path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.charts", description="Draw the benchmark charts (SVG)."
    )
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--publish",
        type=Path,
        metavar="RUN",
        help="merge this run's results.json into --results first (what make bench does)",
    )
    args = parser.parse_args(argv)
    if args.publish is not None:
        if not args.publish.exists():
            print(f"charts: no results at {args.publish}; nothing published", file=sys.stderr)
            return 2
        publish(args.publish, args.results)
        print(f"charts: {args.publish} merged into {source_name(args.results)}")
    if not args.results.exists():
        print(f"charts: no results at {args.results}", file=sys.stderr)
        return 2
    for name, what in draw_all(args.results, args.out).items():
        print(f"charts: {source_name(args.out / name)}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
