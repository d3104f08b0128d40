"""The STP experiment: Semantic Tube Prediction kinematics of real trajectories against a permutation null.

Per run: ``DIR/<run>/triplets.npz`` (per-triplet ‖a∥‖, ‖a⊥‖, ‖a⊥‖/‖d2‖, STP loss, and the same for one
shuffle, for the figures) next to the shared run files, and ``DIR/figures/*.png``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.geometry import PathConventions
from ..analysis.stp import HEADLINE, StpConventions, analyse_stp
from . import definitions
from .config import BootstrapConfig, RunConfig, TrajectoryConfig
from .definitions import definitions_table
from .explain import explain_stp
from .geometry import geometry_trajectories, path_stage
from .plotting import plt, real_vs_null_grid, run_colour, save
from .registry import Experiment, register
from .runner import Stage
from .section import FigureBlock, Section, TableBlock, conventions_table, opening
from .tables import summary_rows


@dataclass
class StpConfig:
    """Settings of an STP run: models and prompts, trajectories, paths and null, its own settings."""

    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/stp"))
    trajectories: TrajectoryConfig = field(default_factory=geometry_trajectories)
    paths: PathConventions = field(default_factory=PathConventions)
    stp: StpConventions = field(default_factory=StpConventions)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


def stp_stage(paths: PathConventions, own: StpConventions, boot: BootstrapConfig, seed: int) -> Stage:
    return path_stage("stp", paths, own, analyse_stp, "triplets.npz", seed, boot=boot,
                      version=2)  # 2: identity and speed fractions


def stp_figures(out: Path, entries: list[dict]) -> list[Path]:
    data = {e["run"]: np.load(Path(out) / e["run"] / "triplets.npz") for e in entries}
    paths = [real_vs_null_grid(entries, data, (("a_parallel", "‖a∥‖"), ("a_perp", "‖a⊥‖")),
                               Path(out) / "figures" / "stp_accelerations.png")]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, e in enumerate(entries):
        d = data[e["run"]]
        ax.scatter(d["sin_ratio"], d["stp_loss"], s=2, alpha=0.3, color=run_colour(e, i), label=e["run"])
    r = np.linspace(0, 1, 200)
    ax.plot(r, 1 - np.sqrt(1 - r**2), "k-", lw=1, label="identity, cos ≥ 0")
    ax.plot(r, 1 + np.sqrt(1 - r**2), "k--", lw=1, label="identity, cos < 0")
    ax.set_xlabel("‖a⊥‖ / ‖d2‖")
    ax.set_ylabel("STP loss 1 − cos(d1, d2)")
    ax.legend(fontsize=7, markerscale=4)
    paths.append(save(fig, Path(out) / "figures" / "stp_identity.png"))
    return paths


def report_section(out: Path, entries: list[dict]) -> Section:
    conv = entries[0]["conventions"]
    return Section(
        title=f"STP kinematics ({conv['axis']} axis)",
        paragraphs=[
            *opening(explain_stp(entries)),
            "For consecutive triplets, the acceleration a = d2 − d1 splits into a part along d1 and a part normal to "
            "it; the STP loss 1 − cos(d1, d2) equals 1 ∓ √(1 − ‖a⊥‖²/‖d2‖²) exactly, the sign following cos "
            "(identity_max_abs_error, in float64). The paper's single-branch form 1 − √(…) holds only where "
            "cos ≥ 0: paper_identity_failure_fraction counts where it misses 1 − cos by more than 1e-6. "
            "The permutation null shuffles the order within each path; z < 0 and a small p mean smoother than chance.",
        ],
        tables=[TableBlock("STP metrics, value [CI over paths]", summary_rows(entries, HEADLINE, "stp")),
                definitions_table(definitions.STP),
                conventions_table(conv)],
        figures=[FigureBlock(Path(out) / "figures" / "stp_accelerations.png",
                             "Tangential and normal acceleration magnitudes, real order against one shuffle."),
                 FigureBlock(Path(out) / "figures" / "stp_identity.png",
                             "STP loss against ‖a⊥‖/‖d2‖: every triplet lies on one of the two identity branches.")],
    )


EXPERIMENT = register(Experiment(
    name="stp", help="STP kinematics: acceleration identity, deceleration, permutation null", config=StpConfig,
    section=report_section, headline=HEADLINE, figures=stp_figures,
    stage=lambda cfg: stp_stage(cfg.paths, cfg.stp, cfg.bootstrap, cfg.run.seed),
    report_stage=lambda cfg: stp_stage(dataclasses.replace(cfg.paths, axis="token", site=cfg.energy.site), cfg.stp,
                                       cfg.bootstrap, cfg.run.seed),
))


def run_stp(cfg, *, progress: bool = True) -> list[dict]:
    """Run (or resume) every model of ``cfg``; returns the results entries, also in ``out/results.json``."""
    return EXPERIMENT.execute(cfg, progress=progress)
