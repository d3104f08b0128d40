"""The hypersphere experiment: tangent-bundle geodesic diagnostics of real trajectories against a permutation null.

Per run: ``DIR/<run>/sphere.npz`` (per-step angles, per-triplet curvature and EL residual, the same for one
shuffle, and the norms along the first paths) next to the shared run files, and ``DIR/figures/*.png``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.geometry import PathConventions
from ..analysis.sphere import HEADLINE, SphereConventions, analyse_sphere
from . import definitions
from .config import BootstrapConfig, RunConfig, TrajectoryConfig
from .definitions import definitions_table
from .explain import explain_sphere
from .geometry import geometry_trajectories, path_stage
from .plotting import plt, real_vs_null_grid, run_colour, save
from .registry import Experiment, register
from .runner import Stage
from .section import FigureBlock, Section, TableBlock, conventions_table, opening
from .tables import summary_rows


@dataclass
class SphereConfig:
    """Settings of a hypersphere run: models and prompts, trajectories, paths and null, its own settings."""

    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/sphere"))
    trajectories: TrajectoryConfig = field(default_factory=geometry_trajectories)
    paths: PathConventions = field(default_factory=PathConventions)
    sphere: SphereConventions = field(default_factory=SphereConventions)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


def sphere_stage(paths: PathConventions, own: SphereConventions, boot: BootstrapConfig, seed: int) -> Stage:
    return path_stage("sphere", paths, own, analyse_sphere, "sphere.npz", seed, boot=boot)


def sphere_figures(out: Path, entries: list[dict]) -> list[Path]:
    data = {e["run"]: np.load(Path(out) / e["run"] / "sphere.npz") for e in entries}
    panels = (("step_angle", "geodesic step θ (rad)"), ("geodesic_curvature", "geodesic curvature κ"),
              ("el_residual", "geodesic EL residual"))
    paths = [real_vs_null_grid(entries, data, panels, Path(out) / "figures" / "sphere_distributions.png",
                               low_percentile=0.5)]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, e in enumerate(entries):
        for j, n in enumerate(data[e["run"]]["norms"]):
            ax.plot(n, lw=0.9, alpha=0.6, color=run_colour(e, i), label=e["run"] if j == 0 else None)
    ax.set_xlabel("step along the path")
    ax.set_ylabel("‖h‖ (the radial part the sphere discards)")
    ax.legend(fontsize=7)
    paths.append(save(fig, Path(out) / "figures" / "sphere_radius.png"))
    return paths


def report_section(out: Path, entries: list[dict]) -> Section:
    conv = entries[0]["conventions"]
    return Section(
        title=f"Hypersphere geodesics ({conv['axis']} axis)",
        paragraphs=[
            *opening(explain_sphere(entries)),
            "States are projected to the unit sphere. Along a geodesic at constant speed the covariant acceleration, "
            "the geodesic curvature and the Euler–Lagrange residual of the discrete action ½Σθ² all vanish and the "
            "path-length excess is 0. The permutation null shuffles the order within each path; z < 0 means "
            "straighter than chance. The radial part ‖h‖ is reported beside it.",
        ],
        tables=[TableBlock("Sphere metrics, value [CI over paths]", summary_rows(entries, HEADLINE, "sphere")),
                definitions_table(definitions.SPHERE),
                conventions_table(conv)],
        figures=[FigureBlock(Path(out) / "figures" / "sphere_distributions.png",
                             "Step angles, geodesic curvature and EL residuals, real order against one shuffle."),
                 FigureBlock(Path(out) / "figures" / "sphere_radius.png", "Norms ‖h‖ along the first paths of each run.")],
    )


EXPERIMENT = register(Experiment(
    name="sphere", help="hypersphere geodesic diagnostics against a permutation null", config=SphereConfig,
    section=report_section, headline=HEADLINE, figures=sphere_figures,
    stage=lambda cfg: sphere_stage(cfg.paths, cfg.sphere, cfg.bootstrap, cfg.run.seed),
    report_stage=lambda cfg: sphere_stage(dataclasses.replace(cfg.paths, axis="token", site=cfg.energy.site), cfg.sphere,
                                         cfg.bootstrap, cfg.run.seed),
))


def run_sphere(cfg, *, progress: bool = True) -> list[dict]:
    """Run (or resume) every model of ``cfg``; returns the results entries, also in ``out/results.json``."""
    return EXPERIMENT.execute(cfg, progress=progress)
