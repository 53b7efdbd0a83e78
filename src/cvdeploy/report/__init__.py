"""Reports: a self-contained HTML page generated from what the bundle recorded."""

from cvdeploy.report.html import artifact_row, render_report, write_report

__all__ = ["artifact_row", "render_report", "write_report"]
