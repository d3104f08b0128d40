"""Report: the self-contained HTML report assembled from the experiments' sections."""
from .build import ReportConfig, make_report
from .html import provenance_section, render_section, write_report

__all__ = ["ReportConfig", "make_report", "provenance_section", "render_section", "write_report"]
