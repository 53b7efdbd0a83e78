"""Table, Pareto plot and HTML report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from cvdeploy.bench.report import html_fragment, html_report, pareto_front, pareto_png
from cvdeploy.bench.sweep import SweepReport
from tests.bench.test_sweep import _result


def _report() -> SweepReport:
    rs = [
        _result("fp32", 10.0, 0.40),
        _result("int8", 4.0, 0.39),
        _result("slow", 20.0, 0.35),
        _result("noacc", 3.0, None),
    ]
    return SweepReport(
        bundle="toy",
        results=rs,
        skipped=[],
        recommended="int8",
        recommendation="int8: fastest",
        environment={"python": "3"},
        images=4,
    )


def test_pareto_front() -> None:
    pts = [(10.0, 0.40), (4.0, 0.39), (20.0, 0.35), (5.0, 0.30)]
    assert pareto_front(pts) == [1, 0]


def test_png_and_html(tmp_path: Path) -> None:
    rep = _report()
    png = pareto_png(rep.results)
    assert png.startswith(b"\x89PNG")
    frag = html_fragment(rep)
    assert "<table>" in frag and "data:image/png;base64," in frag and "int8 (recommended)" in frag
    page = html_report(rep)
    assert page.startswith("<!doctype html>") and "Environment" in page
    (tmp_path / "r.html").write_text(page)


def test_table_renders() -> None:
    from cvdeploy.bench.report import results_table

    con = Console(width=200, record=True)
    con.print(results_table(_report()))
    text = con.export_text()
    assert "int8*" in text and "pp%" in text
