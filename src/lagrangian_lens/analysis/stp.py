"""STP (Semantic Tube Prediction) kinematics of paths against a permutation null: trajectories in, metrics out.

The fractions and the mean magnitudes come with a percentile bootstrap interval over paths (whole paths are
resampled); their replicates (draws and per-path values) are handed back on request, for comparing runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..checks import check_range
from ..mechanics.gram import centred_gram, triplet_norms
from ..mechanics.kinematics import random_spans, span_stp_loss, triplet_kinematics
from ..mechanics.nulls import OrderStatistic, draw_orders, group_paths, permutation_test
from ..mechanics.stats import bootstrap_many, pad_rows, pooled_mean, replicates

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


# Per-triplet magnitudes whose pooled means (and the ratio of the first two) get a bootstrap interval.
MEANS = {"mean_a_parallel": "a_parallel_norm", "mean_a_perp": "a_perp_norm", "mean_stp_loss": "stp_loss"}


def _path_table(ks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per column, a (n_paths, n_triplets_max) float64 table, NaN at degenerate triplets: the 0/1 indicators
    of FRACTIONS and the magnitudes of MEANS. Rows follow the groups, so twins' tables list the same paths."""
    valid = [row for k in ks for row in k["valid"]]
    table = {name: pad_rows([row for k in ks for row in rule(k).double()], valid) for name, rule in FRACTIONS.items()}
    return table | {column: pad_rows([row for k in ks for row in k[column]], valid) for column in MEANS.values()}


def _statistics() -> dict:
    """Metric name -> statistic on ``_path_table`` (each reduces the last two axes)."""
    stats = {name: (lambda t, name=name: pooled_mean(t[name])) for name in FRACTIONS}
    stats |= {metric: (lambda t, column=column: pooled_mean(t[column])) for metric, column in MEANS.items()}
    stats["tangential_normal_ratio"] = lambda t: pooled_mean(t["a_parallel_norm"]) / pooled_mean(t["a_perp_norm"])
    return stats


def _null_terms(gram: torch.Tensor, order: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Sums and counts (K,) of ‖a∥‖ and ‖a⊥‖ over the valid triplets of a group in orders (K, n, T)."""
    k = triplet_norms(gram, order)
    count = k["valid"].sum((-2, -1))
    return {"tangential": (k["a_parallel_norm"].sum((-2, -1)), count), "normal": (k["a_perp_norm"].sum((-2, -1)), count)}


# Mean ‖a∥‖ ("tangential") and mean ‖a⊥‖ ("normal") over all valid triplets, from each path's Gram matrix.
NULL_STATISTIC = OrderStatistic(centred_gram, _null_terms)


def _one_shuffle(groups, seed: int) -> dict[str, np.ndarray]:
    """‖a∥‖ and ‖a⊥‖ of the valid triplets of one shuffle of the paths, for the figures (from the Gram
    matrices: the kinematics of 3000 depth paths in d dimensions would cost more than the whole null)."""
    ks = [triplet_norms(centred_gram(g), order) for g, order in zip(groups, next(draw_orders(groups, 1, seed)))]
    valid = torch.cat([k["valid"].reshape(-1) for k in ks])
    return {name: torch.cat([k[name].reshape(-1) for k in ks])[valid].numpy() for name in ("a_parallel_norm", "a_perp_norm")}


@dataclass(frozen=True)
class StpConventions:
    """The STP analysis's own setting (the paths and the null are ``PathConventions``)."""

    n_spans: int = 16  # random spans per path for the span form of STP

    def __post_init__(self):
        check_range("n_spans", self.n_spans, low=1)


def _pooled(ks: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    valid = torch.cat([k["valid"].reshape(-1) for k in ks])
    pooled = {name: torch.cat([k[name].reshape(-1) for k in ks])[valid].numpy() for name in ks[0] if name != "valid"}
    return pooled | {"n_degenerate": int((~valid).sum())}


def analyse_stp(paths: list[torch.Tensor], *, n_permutations: int = 1000, n_spans: int = 16, seed: int = 0,
                n_boot: int = 1000, ci: float = 0.95, return_replicates: bool = False):
    """STP metrics of ``paths`` (each (T_i, d)) and the per-triplet arrays behind them (for figures).

    The fractions, the mean magnitudes and their ratio come with a percentile bootstrap interval over paths
    (``n_boot`` resamples, level ``ci``). With ``return_replicates``, a third value maps each of them to its
    replicates {"draws": (n_boot,), "units": (n_paths,)} (see ``mechanics.stats.bootstrap_many``).
    """
    groups = group_paths(paths)
    ks = [triplet_kinematics(g) for g in groups]
    k = _pooled(ks)
    estimates = bootstrap_many(_statistics(), _path_table(ks), n_boot=n_boot, ci=ci, seed=seed,
                               keep_draws=return_replicates)
    nonneg = k["cos"] >= 0
    paper_error = paper_identity_error({name: torch.from_numpy(v) for name, v in k.items()
                                        if isinstance(v, np.ndarray)}).numpy()
    null = permutation_test(NULL_STATISTIC, groups, n_permutations=n_permutations, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    spans = [span_stp_loss(g.double(), random_spans(g.shape[1], n_spans, generator=gen)).reshape(-1)
             for g in groups if g.shape[1] >= 4]
    metrics = {
        "n_paths": len(paths), "n_triplets": int(k["stp_loss"].size), "n_degenerate": k["n_degenerate"],
        "identity_max_abs_error": float(k["identity_error"].max()),
        "branch_cos_nonnegative": int((k["cos"] >= 0).sum()), "branch_cos_negative": int((k["cos"] < 0).sum()),
        **{name: est.to_dict() for name, est in estimates.items()},
        "paper_identity_max_abs_error_cos_nonnegative": float(paper_error[nonneg].max()) if nonneg.any() else None,
        "paper_identity_tolerance": PAPER_IDENTITY_TOL,
        "median_a_parallel": float(np.median(k["a_parallel_norm"])), "median_a_perp": float(np.median(k["a_perp_norm"])),
        "span_stp_loss": float(torch.cat(spans).mean()) if spans else None,
        "z_tangential": null["tangential"].z, "z_normal": null["normal"].z,
        "p_tangential": null["tangential"].p_smaller, "p_normal": null["normal"].p_smaller,
        "null_mean_a_parallel": null["tangential"].null_mean, "null_mean_a_perp": null["normal"].null_mean,
        "p_direction": "one-sided: real accelerations smaller than shuffled (smoother); z < 0 means smoother",
    }
    shuffled = _one_shuffle(groups, seed + 1)
    arrays = {"a_parallel": k["a_parallel_norm"], "a_perp": k["a_perp_norm"], "stp_loss": k["stp_loss"],
              "sin_ratio": k["a_perp_norm"] / k["d2_norm"], "null_a_parallel": shuffled["a_parallel_norm"],
              "null_a_perp": shuffled["a_perp_norm"]}
    if return_replicates:
        return metrics, arrays, replicates(estimates)
    return metrics, arrays
