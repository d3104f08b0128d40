"""Hypersphere (tangent-bundle) geodesic diagnostics of paths against a permutation null: paths in, metrics out.

Every mean, median and ratio comes with a percentile bootstrap interval over paths (whole paths are
resampled); their replicates (draws and per-path values) are handed back on request, for comparing runs.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..checks import check_choice, check_range
from ..mechanics.gram import cosine_gram, sphere_steps
from ..mechanics.nulls import OrderStatistic, draw_orders, group_paths, permutation_test
from ..mechanics.sphere import path_excess, sphere_kinematics
from ..mechanics.stats import (
    LAST_TWO,
    bootstrap_many,
    count,
    pad_rows,
    pooled_mean,
    pooled_median,
    pooled_var,
    replicates,
)

RADII = ("unit", "sqrt_d")
NULL_STATS = ("step_angle", "covariant_acceleration", "geodesic_curvature", "el_residual", "path_excess")
HEADLINE = ("n_paths", "n_steps", "mean_step_angle", "mean_covariant_acceleration", "median_geodesic_curvature",
            "mean_el_residual", "mean_path_excess", "action_per_step", "mean_norm", "norm_cv", "radial_fraction",
            *(f"z_{s}" for s in NULL_STATS), *(f"p_{s}" for s in NULL_STATS))


@dataclass(frozen=True)
class SphereConventions:
    """The hypersphere analysis's own settings (the paths and the null are ``PathConventions``)."""

    CHOICES = {"radius": RADII}

    radius: str = "unit"  # sphere radius for the action: unit, or sqrt_d (the scale of an RMS-normed state)
    window: int = 8  # steps per window of the path-length excess

    def __post_init__(self):
        check_choice("radius", self.radius, RADII)
        check_range("window", self.window, low=1)


def _per_group(groups, window: int) -> list[dict[str, torch.Tensor]]:
    """Per group (n, T, d), its per-step quantities (n, ·): the sphere's, and the radial part it discards."""
    out = []
    for g in groups:
        k = {name: v for name, v in sphere_kinematics(g).items() if name != "radius"}
        k["path_excess"] = path_excess(g, min(window, g.shape[1] - 1))
        norms = g.double().norm(dim=-1)  # (n, T)
        k["norm"] = norms
        k["radial"] = (norms[:, 1:] - norms[:, :-1]).abs()  # |Δ‖h‖| per step
        k["moved"] = (g[:, 1:] - g[:, :-1]).double().norm(dim=-1)  # ‖Δh‖ per step
        out.append(k)
    return out


def _pooled(ks: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {name: torch.cat([k[name].reshape(-1) for k in ks]).numpy() for name in (*NULL_STATS, "norm")}


def _sample_cv(x: torch.Tensor) -> torch.Tensor:
    """std (ddof = 1, as torch.std) / mean of every value of the last two axes pooled."""
    n = count(x, LAST_TWO)
    return (pooled_var(x) * n / (n - 1)).sqrt() / pooled_mean(x)


def _radial_fraction(t) -> torch.Tensor:
    """Σ|Δ‖h‖| / Σ‖Δh‖ over every step: the share of the motion that is radial (0 without motion)."""
    moved = t["moved"].nansum(LAST_TWO)
    return torch.where(moved > 0, t["radial"].nansum(LAST_TWO) / torch.where(moved > 0, moved, 1.0), 0.0)


def _statistics(scale: float) -> dict:
    """Metric name -> statistic on the per-path table (each reduces the last two axes)."""
    return {
        "mean_step_angle": lambda t: pooled_mean(t["step_angle"]),
        "mean_covariant_acceleration": lambda t: pooled_mean(t["covariant_acceleration"]),
        "median_geodesic_curvature": lambda t: pooled_median(t["geodesic_curvature"]),
        "mean_el_residual": lambda t: pooled_mean(t["el_residual"]),
        "mean_path_excess": lambda t: pooled_mean(t["path_excess"]),
        "action_per_step": lambda t: 0.5 * scale**2 * pooled_mean(t["step_angle"].square()),
        "mean_norm": lambda t: pooled_mean(t["norm"]),
        "norm_cv": lambda t: _sample_cv(t["norm"]),
        "radial_fraction": _radial_fraction,
    }


def _null_terms(cos: torch.Tensor, order: torch.Tensor, window: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Sums and counts (K,) of every NULL_STATS quantity of a group in orders (K, n, T)."""
    k = sphere_steps(cos, order, min(window, order.shape[-1] - 1))
    return {name: (k[name].sum((-2, -1)), torch.full(k[name].shape[:-2], k[name].shape[-2] * k[name].shape[-1]))
            for name in NULL_STATS}  # every step counts (as np.mean over the pooled steps)


def null_statistic(window: int) -> OrderStatistic:
    """The means of NULL_STATS over every step of every path, from each path's cosine Gram matrix."""
    return OrderStatistic(cosine_gram, functools.partial(_null_terms, window=window))


def _one_shuffle(groups, window: int, seed: int) -> dict[str, np.ndarray]:
    """Every NULL_STATS value of one shuffle of the paths, for the figures (from the Gram matrices: the
    kinematics of 3000 depth paths in d dimensions would cost more than the whole null)."""
    orders = next(draw_orders(groups, 1, seed))
    ks = [sphere_steps(cosine_gram(g), order, min(window, g.shape[1] - 1)) for g, order in zip(groups, orders)]
    return {name: torch.cat([k[name].reshape(-1) for k in ks]).numpy() for name in NULL_STATS}


def analyse_sphere(paths: list[torch.Tensor], *, window: int = 8, radius: str = "unit", n_permutations: int = 1000,
                   seed: int = 0, n_boot: int = 1000, ci: float = 0.95, return_replicates: bool = False):
    """Sphere metrics of ``paths`` (each (T_i, d)) and the per-step arrays behind them (for figures).

    The means, the median curvature, the action and the radial metrics come with a percentile bootstrap
    interval over paths (``n_boot`` resamples, level ``ci``). With ``return_replicates``, a third value maps
    each of them to its replicates {"draws": (n_boot,), "units": (n_paths,)} (see ``mechanics.stats``).
    """
    groups = group_paths(paths)
    ks = _per_group(groups, window)
    k = _pooled(ks)
    # Rows follow the groups, so twins' tables list the same paths in the same order.
    table = {name: pad_rows([row for g in ks for row in g[name]]) for name in ks[0]}
    scale = 1.0 if radius == "unit" else math.sqrt(paths[0].shape[-1])
    estimates = bootstrap_many(_statistics(scale), table, n_boot=n_boot, ci=ci, seed=seed,
                               keep_draws=return_replicates)
    null = permutation_test(null_statistic(window), groups, n_permutations=n_permutations, seed=seed)
    metrics = {
        "n_paths": len(paths), "n_steps": int(k["step_angle"].size),
        **{name: est.to_dict() for name, est in estimates.items()},
        **{f"z_{s}": null[s].z for s in NULL_STATS}, **{f"p_{s}": null[s].p_smaller for s in NULL_STATS},
        **{f"null_mean_{s}": null[s].null_mean for s in NULL_STATS},
        "p_direction": "one-sided: real smaller than shuffled (straighter, smoother); z < 0 means smoother",
    }
    shuffled = _one_shuffle(groups, window, seed + 1)
    k.pop("norm")
    arrays = {**k, **{f"null_{s}": shuffled[s] for s in NULL_STATS}}
    norms = [p.double().norm(dim=-1) for p in paths]
    width = max(n.shape[0] for n in norms[:8])
    arrays["norms"] = np.stack([np.pad(n.numpy(), (0, width - n.shape[0]), constant_values=np.nan) for n in norms[:8]])
    if return_replicates:
        return metrics, arrays, replicates(estimates)
    return metrics, arrays
