"""The main job: run every analysis on a model and its random twin, then write one ``report.html``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..experiments.energy import EnergyConfig, format_table, report_section, run_energy, summary_rows
from ..experiments.provenance import read_json
from .html import provenance_section, write_report


@dataclass
class ReportConfig(EnergyConfig):
    """The report's settings: the energy run's, with the random twins on and its own output folder."""

    random_twins: bool = True
    """Also run a random-weight twin of every pretrained model."""
    out: str = "runs/report"
    """Output folder: report.html, results, figures and per-run data."""
    models: list[str] = field(default_factory=lambda: ["smollm2-135m-instruct"])
    """Model specs: alias, hub id, local directory, .gguf path, or random:<spec>."""


def make_report(cfg: ReportConfig, *, progress: bool = True) -> tuple[Path, str]:
    """Run (or resume) the analyses into ``cfg.out``; returns the report path and a printable summary."""
    out = Path(cfg.out)
    entries = run_energy(cfg, progress=progress)
    sections = [report_section(out, entries), provenance_section(entries, read_json(out / "run.json")["environment"])]
    models = ", ".join(dict.fromkeys(e["model"] for e in entries))
    path = write_report(out / "report.html", "lagrangian-lens report", sections, subtitle=f"models: {models}")
    return path, format_table(summary_rows(entries))
