"""The main job: run every analysis on a model and its random twin, then write one ``report.html``.

The models run once, in the energy experiment, which keeps their trajectories; the geometry analyses
(STP kinematics, hypersphere) then read those trajectories from disk, along the token axis at the site.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.geometry import paths_from_trajectories
from ..experiments import sphere, stp
from ..experiments.energy import HEADLINE, EnergyConfig, report_section, run_energy
from ..experiments.separator import report_section as separator_section
from ..experiments.tables import format_table, summary_rows
from ..provenance import read_json, write_json
from ..trajectories import load_trajectories
from .html import provenance_section, write_report


@dataclass
class ReportConfig(EnergyConfig):
    """The report's settings: the energy run's, with the random twins on and its own output folder."""

    random_twins: bool = True
    """Also run a random-weight twin of every pretrained model."""
    n_permutations: int = 100
    """Shuffles per path for the permutation nulls of the geometry sections."""
    skip_positions: int = 1
    """Geometry: drop the first this-many positions of each path."""
    out: str = "runs/report"
    """Output folder: report.html, results, figures and per-run data."""
    models: list[str] = field(default_factory=lambda: ["smollm2-135m-instruct"])
    """Model specs: alias, hub id, local directory, .gguf path, or random:<spec>."""
    save_trajectories: bool = True
    """Keep the states (the geometry sections read them back)."""
    separator: str | None = None
    """Add the shared-potential separator section from this finished `separator` run folder."""


def _geometry(cfg: ReportConfig, entries: list[dict]) -> tuple[list[dict], list[dict]]:
    """STP and sphere entries for every energy run, from its saved trajectories (token axis)."""
    out = Path(cfg.out)
    conv = {"axis": "token", "site": cfg.site, "trajectory": cfg.trajectory, "skip_positions": cfg.skip_positions,
            "n_permutations": cfg.n_permutations, "source": "the energy runs' trajectories"}
    stp_entries, sphere_entries = [], []
    for entry in entries:
        trajectories = load_trajectories(out / entry["run"] / "trajectories")
        paths = paths_from_trajectories(trajectories, "token", cfg.site, cfg.skip_positions)
        for name, analyse, kwargs, sink in (
            ("stp", stp.analyse_stp, {}, stp_entries),
            ("sphere", sphere.analyse_sphere, {}, sphere_entries),
        ):
            metrics, arrays = analyse(paths, n_permutations=cfg.n_permutations, seed=cfg.seed, **kwargs)
            run_dir = out / name / entry["run"]
            run_dir.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(run_dir / ("triplets.npz" if name == "stp" else "sphere.npz"), **arrays)
            sink.append({"run": entry["run"], "model": entry["model"], "weights": entry["weights"],
                         "metrics": metrics, "conventions": conv})
    for name, sink, figures in (("stp", stp_entries, stp.stp_figures), ("sphere", sphere_entries, sphere.sphere_figures)):
        write_json(out / name / "results.json", {"experiment": name, "runs": sink})
        figures(out / name, sink)
    return stp_entries, sphere_entries


def make_report(cfg: ReportConfig, *, progress: bool = True) -> tuple[Path, str]:
    """Run (or resume) the analyses into ``cfg.out``; returns the report path and a printable summary."""
    if not cfg.save_trajectories:
        raise ValueError("the report's geometry sections read the saved trajectories: keep --save-trajectories on")
    out = Path(cfg.out)
    entries = run_energy(cfg, progress=progress)
    stp_entries, sphere_entries = _geometry(cfg, entries)
    sections = [report_section(out, entries), stp.report_section(out / "stp", stp_entries),
                sphere.report_section(out / "sphere", sphere_entries),
                provenance_section(entries, read_json(out / "run.json")["environment"])]
    if cfg.separator:
        sep = Path(cfg.separator)
        sections.insert(-1, separator_section(sep, read_json(sep / "results.json")))
    models = ", ".join(dict.fromkeys(e["model"] for e in entries))
    path = write_report(out / "report.html", "lagrangian-lens report", sections, subtitle=f"models: {models}")
    summary = "\n\n".join(format_table(summary_rows(es, keys)) for es, keys in (
        (entries, HEADLINE), (stp_entries, stp.HEADLINE), (sphere_entries, sphere.HEADLINE)))
    return path, summary
