"""The benchmark charts in docs/benchmarks/ are the ones their results file draws: each exists,
names a results file committed in the repository with its sha256, and drawing again from that
file gives the same bytes; docs/benchmarks.md shows each of them."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tests.bench.chart_data import CHARTS
from tests.bench.charts import draw_all

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "docs" / "benchmarks"
DOC = ROOT / "docs" / "benchmarks.md"

_SOURCE = re.compile(r"<dc:source>([^<]+)</dc:source>")
_DIGEST = re.compile(r"<dc:identifier>sha256:([0-9a-f]{64})</dc:identifier>")


def named_results(svg: Path) -> tuple[str, str]:
    """The results file an SVG names (relative to the repository) and the sha256 it gives."""
    text = svg.read_text()
    source, digest = _SOURCE.search(text), _DIGEST.search(text)
    assert source and digest, f"{svg.name}: no results file named in its metadata"
    return source[1], digest[1]


@pytest.fixture(scope="module")
def redrawn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every chart drawn again, once per results file the committed charts name."""
    out: dict[str, Path] = {}
    for source in {named_results(CHART_DIR / name)[0] for name in CHARTS}:
        folder = tmp_path_factory.mktemp("charts")
        draw_all(ROOT / source, folder)
        out[source] = folder
    return out


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_chart_names_a_committed_results_file_and_its_digest(name: str) -> None:
    """The chart exists and the results file it names is in the repository (not under the
    ignored .run/) with the sha256 the chart gives."""
    svg = CHART_DIR / name
    assert svg.is_file(), f"{name} missing: run make bench (or python -m tests.bench.charts)"
    source, digest = named_results(svg)
    path = ROOT / source
    assert not Path(source).is_absolute() and not source.startswith(".run/"), source
    assert path.is_file(), f"{name} names {source}, which is not in the repository"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, (
        f"{name} was drawn from another version of {source}: draw the charts again "
        "(python -m tests.bench.charts)"
    )


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_chart_is_what_its_results_file_draws(name: str, redrawn: dict[str, Path]) -> None:
    """Drawing again from the named results file gives the committed chart byte for byte."""
    svg = CHART_DIR / name
    source, _ = named_results(svg)
    again = redrawn[source] / name
    assert again.is_file(), f"{source} no longer holds the inputs of {name}"
    assert again.read_bytes() == svg.read_bytes(), (
        f"{name} differs from what {source} draws: draw the charts again "
        "(python -m tests.bench.charts)"
    )


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_benchmarks_doc_shows_the_chart(name: str) -> None:
    """docs/benchmarks.md embeds each chart."""
    assert f"](benchmarks/{name})" in DOC.read_text()
