"""STP (Semantic Tube Prediction) kinematics of paths against a permutation null: trajectories in, metrics out."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..checks import check_range
from ..mechanics.kinematics import random_spans, span_stp_loss, triplet_kinematics
from ..mechanics.nulls import group_paths, permutation_test, permuted
from ..mechanics.stats import bootstrap_many, pad_rows, pooled_mean

HEADLINE = ("n_triplets", "identity_max_abs_error", "branch_cos_nonnegative", "branch_cos_negative",
            "cos_nonnegative_fraction", "paper_identity_failure_fraction", "paper_identity_max_abs_error_cos_nonnegative",
            "decelerating_fraction", "speed_decreasing_fraction", "tangential_normal_ratio", "mean_a_parallel", "mean_a_perp", "mean_stp_loss",
            "span_stp_loss", "z_tangential", "z_normal", "p_tangential", "p_normal")
SPAN_CONVENTION = "before=h_s-h_0, patch=h_e-h_s, after=h_{T-1}-h_e"
PAPER_IDENTITY_TOL = 1e-6  # the single-branch formula 'fails' a triplet when it misses 1 - cos by more than this


def paper_identity_error(k: dict[str, torch.Tensor]) -> torch.Tensor:
    """|L_paper − (1 − cos)| per triplet, with the paper's single-branch L_paper = 1 − √(1 − ‖a⊥‖²/‖d2‖²).

    The identity holds only where cos(d1, d2) >= 0; where cos < 0 the formula gives 1 − |cos| instead of 1 − cos.
    """
    ratio = k["a_perp_norm"] / k["d2_norm"].clamp_min(1e-300)
    return (1 - (1 - ratio**2).clamp_min(0).sqrt() - k["stp_loss"]).abs()


# Per-triplet indicators whose path-resampled means are reported with a bootstrap interval.
FRACTIONS = {
    "cos_nonnegative_fraction": lambda k: k["cos"] >= 0,
    "paper_identity_failure_fraction": lambda k: paper_identity_error(k) > PAPER_IDENTITY_TOL,
    "decelerating_fraction": lambda k: k["a_tangential"] < 0,  # a·d̂1 < 0: true whenever cos < 0
    "speed_decreasing_fraction": lambda k: k["d2_norm"] < k["d1_norm"],  # ‖d2‖ < ‖d1‖
}


def _fraction_table(groups) -> dict[str, torch.Tensor]:
    """Per fraction, a (n_paths, n_triplets_max) float64 table of 0/1 indicators, NaN at degenerate triplets."""
    ks = [triplet_kinematics(g) for g in groups]
    valid = [row for k in ks for row in k["valid"]]
    return {name: pad_rows([row for k in ks for row in rule(k).double()], valid) for name, rule in FRACTIONS.items()}


@dataclass(frozen=True)
class StpConventions:
    """The STP analysis's own setting (the paths and the null are ``PathConventions``)."""

    n_spans: int = 16  # random spans per path for the span form of STP

    def __post_init__(self):
        check_range("n_spans", self.n_spans, low=1)


def _pooled(groups) -> dict[str, np.ndarray]:
    ks = [triplet_kinematics(g) for g in groups]
    valid = torch.cat([k["valid"].reshape(-1) for k in ks])
    pooled = {name: torch.cat([k[name].reshape(-1) for k in ks])[valid].numpy() for name in ks[0] if name != "valid"}
    return pooled | {"n_degenerate": int((~valid).sum())}


def _means(paths) -> dict[str, float]:
    k = _pooled(paths)
    return {"tangential": float(k["a_parallel_norm"].mean()), "normal": float(k["a_perp_norm"].mean())}


def analyse_stp(paths: list[torch.Tensor], *, n_permutations: int = 100, n_spans: int = 16, seed: int = 0,
                n_boot: int = 1000, ci: float = 0.95):
    """STP metrics of ``paths`` (each (T_i, d)) and the per-triplet arrays behind them (for figures).

    The fractions come with a percentile bootstrap interval over paths (``n_boot`` resamples, level ``ci``).
    """
    groups = group_paths(paths)
    k = _pooled(groups)
    fractions = bootstrap_many({name: (lambda t, name=name: pooled_mean(t[name])) for name in FRACTIONS},
                               _fraction_table(groups), n_boot=n_boot, ci=ci, seed=seed)
    nonneg = k["cos"] >= 0
    paper_error = paper_identity_error({name: torch.from_numpy(v) for name, v in k.items()
                                        if isinstance(v, np.ndarray)}).numpy()
    null = permutation_test(_means, groups, n_permutations=n_permutations, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    spans = [span_stp_loss(g.double(), random_spans(g.shape[1], n_spans, generator=gen)).reshape(-1)
             for g in groups if g.shape[1] >= 4]
    metrics = {
        "n_paths": len(paths), "n_triplets": int(k["stp_loss"].size), "n_degenerate": k["n_degenerate"],
        "identity_max_abs_error": float(k["identity_error"].max()),
        "branch_cos_nonnegative": int((k["cos"] >= 0).sum()), "branch_cos_negative": int((k["cos"] < 0).sum()),
        **{name: est.to_dict() for name, est in fractions.items()},
        "paper_identity_max_abs_error_cos_nonnegative": float(paper_error[nonneg].max()) if nonneg.any() else None,
        "paper_identity_tolerance": PAPER_IDENTITY_TOL,
        "tangential_normal_ratio": float(k["a_parallel_norm"].mean() / k["a_perp_norm"].mean()),
        "mean_a_parallel": float(k["a_parallel_norm"].mean()), "mean_a_perp": float(k["a_perp_norm"].mean()),
        "median_a_parallel": float(np.median(k["a_parallel_norm"])), "median_a_perp": float(np.median(k["a_perp_norm"])),
        "mean_stp_loss": float(k["stp_loss"].mean()),
        "span_stp_loss": float(torch.cat(spans).mean()) if spans else None,
        "z_tangential": null["tangential"].z, "z_normal": null["normal"].z,
        "p_tangential": null["tangential"].p_smaller, "p_normal": null["normal"].p_smaller,
        "null_mean_a_parallel": null["tangential"].null_mean, "null_mean_a_perp": null["normal"].null_mean,
        "p_direction": "one-sided: real accelerations smaller than shuffled (smoother); z < 0 means smoother",
    }
    shuffled = _pooled(permuted(groups, torch.Generator().manual_seed(seed + 1)))
    arrays = {"a_parallel": k["a_parallel_norm"], "a_perp": k["a_perp_norm"], "stp_loss": k["stp_loss"],
              "sin_ratio": k["a_perp_norm"] / k["d2_norm"], "null_a_parallel": shuffled["a_parallel_norm"],
              "null_a_perp": shuffled["a_perp_norm"]}
    return metrics, arrays
