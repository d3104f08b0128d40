"""STP (Semantic Tube Prediction) kinematics of paths against a permutation null: trajectories in, metrics out."""
from __future__ import annotations

import numpy as np
import torch

from ..mechanics.kinematics import random_spans, span_stp_loss, triplet_kinematics
from ..mechanics.nulls import group_paths, permutation_test, permuted


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
