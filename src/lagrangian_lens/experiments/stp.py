"""The STP experiment: Semantic Tube Prediction kinematics of real trajectories against a permutation null.

Per run: ``DIR/<run>/triplets.npz`` (per-triplet ‖a∥‖, ‖a⊥‖, ‖a⊥‖/‖d2‖, STP loss, and the same for one
shuffle, for the figures) next to the shared run files, and ``DIR/figures/*.png``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.stp import analyse_stp
from .geometry import GeometryConfig, collect_paths, geometry_conventions
from .plotting import plt, real_vs_null_grid, run_colour, save
from .runner import run_models
from .section import FigureBlock, Section, TableBlock, conventions_table
from .tables import summary_rows

HEADLINE = ("n_triplets", "identity_max_abs_error", "branch_cos_nonnegative", "branch_cos_negative",
            "decelerating_fraction", "tangential_normal_ratio", "mean_a_parallel", "mean_a_perp", "mean_stp_loss",
            "span_stp_loss", "z_tangential", "z_normal", "p_tangential", "p_normal")


@dataclass
class StpConfig(GeometryConfig):
    """Settings of an STP run."""

    n_spans: int = 16
    """Random spans per path for the span form of STP."""
    out: str = "runs/stp"
    """Output folder."""


def run_stp(cfg: StpConfig, *, progress: bool = True) -> list[dict]:
    def analyse(loaded, prompts, run_dir: Path) -> dict:
        paths, _ = collect_paths(cfg, loaded, prompts, progress)
        metrics, arrays = analyse_stp(paths, n_permutations=cfg.n_permutations, n_spans=cfg.n_spans, seed=cfg.seed)
        np.savez_compressed(run_dir / "triplets.npz", **arrays)
        return {"metrics": metrics, "conventions": {**geometry_conventions(cfg), "n_spans": cfg.n_spans,
                                                    "span_convention": "before=h_s-h_0, patch=h_e-h_s, after=h_{T-1}-h_e"}}

    entries = run_models(cfg, "stp", analyse, progress=progress)
    stp_figures(Path(cfg.out), entries)
    return entries


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
            "For consecutive triplets, the acceleration a = d2 − d1 splits into a part along d1 and a part normal to "
            "it; the STP loss 1 − cos(d1, d2) equals 1 ∓ √(1 − ‖a⊥‖²/‖d2‖²) exactly (checked in float64). "
            "Deceleration: the signed tangential acceleration a·d̂1 is negative. The permutation null shuffles "
            "the order within each path; z < 0 and a small p mean smoother than chance.",
        ],
        tables=[TableBlock("STP metrics", summary_rows(entries, HEADLINE)),
                conventions_table(conv)],
        figures=[FigureBlock(Path(out) / "figures" / "stp_accelerations.png",
                             "Tangential and normal acceleration magnitudes, real order against one shuffle."),
                 FigureBlock(Path(out) / "figures" / "stp_identity.png",
                             "STP loss against ‖a⊥‖/‖d2‖: every triplet lies on one of the two identity branches.")],
    )
