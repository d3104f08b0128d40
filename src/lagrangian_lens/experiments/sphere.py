"""The hypersphere experiment: tangent-bundle geodesic diagnostics of real trajectories against a permutation null.

Per run: ``DIR/<run>/sphere.npz`` (per-step angles, per-triplet curvature and EL residual, the same for one
shuffle, and the norms along the first paths) next to the shared run files, and ``DIR/figures/*.png``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.sphere import NULL_STATS, RADII, analyse_sphere
from .geometry import GeometryConfig, collect_paths, geometry_conventions
from .plotting import plt, real_vs_null_grid, run_colour, save
from .runner import run_models
from .section import FigureBlock, Section, TableBlock, conventions_table
from .tables import summary_rows

HEADLINE = ("n_paths", "n_steps", "mean_step_angle", "mean_covariant_acceleration", "median_geodesic_curvature",
            "mean_el_residual", "mean_path_excess", "action_per_step", "mean_norm", "norm_cv", "radial_fraction",
            *(f"z_{s}" for s in NULL_STATS), *(f"p_{s}" for s in NULL_STATS))


@dataclass
class SphereConfig(GeometryConfig):
    """Settings of a hypersphere run."""

    radius: str = "unit"
    """Sphere radius for the action: unit, or sqrt_d (√d, the scale of an RMS-normed state); angles do not depend on it."""
    window: int = 8
    """Steps per window of the path-length excess."""
    out: str = "runs/sphere"
    """Output folder."""

    def __post_init__(self):
        super().__post_init__()
        if self.radius not in RADII:
            raise ValueError(f"radius must be one of {RADII}, got {self.radius!r}")


def run_sphere(cfg: SphereConfig, *, progress: bool = True) -> list[dict]:
    def analyse(loaded, prompts, run_dir: Path) -> dict:
        paths, _ = collect_paths(cfg, loaded, prompts, progress)
        metrics, arrays = analyse_sphere(paths, window=cfg.window, radius=cfg.radius,
                                         n_permutations=cfg.n_permutations, seed=cfg.seed)
        np.savez_compressed(run_dir / "sphere.npz", **arrays)
        return {"metrics": metrics,
                "conventions": {**geometry_conventions(cfg), "radius": cfg.radius, "window": cfg.window}}

    entries = run_models(cfg, "sphere", analyse, progress=progress)
    sphere_figures(Path(cfg.out), entries)
    return entries


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
            "States are projected to the unit sphere. Along a geodesic at constant speed the covariant acceleration, "
            "the geodesic curvature and the Euler–Lagrange residual of the discrete action ½Σθ² all vanish and the "
            "path-length excess is 0. The permutation null shuffles the order within each path; z < 0 means "
            "straighter than chance. The radial part ‖h‖ is reported beside it.",
        ],
        tables=[TableBlock("Sphere metrics", summary_rows(entries, HEADLINE)),
                conventions_table(conv)],
        figures=[FigureBlock(Path(out) / "figures" / "sphere_distributions.png",
                             "Step angles, geodesic curvature and EL residuals, real order against one shuffle."),
                 FigureBlock(Path(out) / "figures" / "sphere_radius.png", "Norms ‖h‖ along the first paths of each run.")],
    )
