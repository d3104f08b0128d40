"""STP (Semantic Tube Prediction) kinematics of paths against a permutation null: trajectories in, metrics out."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..checks import check_range
from ..mechanics.kinematics import random_spans, span_stp_loss, triplet_kinematics
from ..mechanics.nulls import group_paths, permutation_test, permuted

HEADLINE = ("n_triplets", "identity_max_abs_error", "branch_cos_nonnegative", "branch_cos_negative",
            "decelerating_fraction", "tangential_normal_ratio", "mean_a_parallel", "mean_a_perp", "mean_stp_loss",
            "span_stp_loss", "z_tangential", "z_normal", "p_tangential", "p_normal")
SPAN_CONVENTION = "before=h_s-h_0, patch=h_e-h_s, after=h_{T-1}-h_e"


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


def analyse_stp(paths: list[torch.Tensor], *, n_permutations: int = 100, n_spans: int = 16, seed: int = 0):
    """STP metrics of ``paths`` (each (T_i, d)) and the per-triplet arrays behind them (for figures)."""
    groups = group_paths(paths)
    k = _pooled(groups)
    null = permutation_test(_means, groups, n_permutations=n_permutations, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    spans = [span_stp_loss(g.double(), random_spans(g.shape[1], n_spans, generator=gen)).reshape(-1)
             for g in groups if g.shape[1] >= 4]
    metrics = {
        "n_paths": len(paths), "n_triplets": int(k["stp_loss"].size), "n_degenerate": k["n_degenerate"],
        "identity_max_abs_error": float(k["identity_error"].max()),
        "branch_cos_nonnegative": int((k["cos"] >= 0).sum()), "branch_cos_negative": int((k["cos"] < 0).sum()),
        "decelerating_fraction": float((k["a_tangential"] < 0).mean()),
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
