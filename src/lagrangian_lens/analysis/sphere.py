"""Hypersphere (tangent-bundle) geodesic diagnostics of paths against a permutation null: paths in, metrics out."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..checks import check_choice, check_range
from ..mechanics.nulls import group_paths, permutation_test, permuted
from ..mechanics.sphere import path_excess, sphere_kinematics

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


def _pooled(groups, window: int) -> dict[str, np.ndarray]:
    ks = [sphere_kinematics(g) for g in groups]
    pooled = {name: torch.cat([k[name].reshape(-1) for k in ks]).numpy()
              for name in ("step_angle", "covariant_acceleration", "geodesic_curvature", "el_residual")}
    pooled["path_excess"] = torch.cat([path_excess(g, min(window, g.shape[1] - 1)).reshape(-1) for g in groups]).numpy()
    return pooled


def analyse_sphere(paths: list[torch.Tensor], *, window: int = 8, radius: str = "unit", n_permutations: int = 100,
                   seed: int = 0):
    """Sphere metrics of ``paths`` (each (T_i, d)) and the per-step arrays behind them (for figures)."""
    groups = group_paths(paths)
    k = _pooled(groups, window)
    stat = lambda gs: {s: float(np.mean(v)) for s, v in _pooled(gs, window).items()}  # noqa: E731
    null = permutation_test(stat, groups, n_permutations=n_permutations, seed=seed)
    norms = [p.double().norm(dim=-1) for p in paths]
    d = paths[0].shape[-1]
    scale = 1.0 if radius == "unit" else math.sqrt(d)
    radial = sum(float((n[1:] - n[:-1]).abs().sum()) for n in norms)
    moved = sum(float((p[1:] - p[:-1]).double().norm(dim=-1).sum()) for p in paths)
    all_norms = torch.cat(norms)
    metrics = {
        "n_paths": len(paths), "n_steps": int(k["step_angle"].size),
        "mean_step_angle": float(k["step_angle"].mean()),
        "mean_covariant_acceleration": float(k["covariant_acceleration"].mean()),
        "median_geodesic_curvature": float(np.median(k["geodesic_curvature"])),
        "mean_el_residual": float(k["el_residual"].mean()), "mean_path_excess": float(k["path_excess"].mean()),
        "action_per_step": float(0.5 * scale**2 * (k["step_angle"] ** 2).mean()),
        "mean_norm": float(all_norms.mean()), "norm_cv": float(all_norms.std() / all_norms.mean()),
        "radial_fraction": radial / moved if moved > 0 else 0.0,
        **{f"z_{s}": null[s].z for s in NULL_STATS}, **{f"p_{s}": null[s].p_smaller for s in NULL_STATS},
        **{f"null_mean_{s}": null[s].null_mean for s in NULL_STATS},
        "p_direction": "one-sided: real smaller than shuffled (straighter, smoother); z < 0 means smoother",
    }
    shuffled = _pooled(permuted(groups, torch.Generator().manual_seed(seed + 1)), window)
    arrays = {**k, **{f"null_{s}": v for s, v in shuffled.items()}}
    width = max(n.shape[0] for n in norms[:8])
    arrays["norms"] = np.stack([np.pad(n.numpy(), (0, width - n.shape[0]), constant_values=np.nan) for n in norms[:8]])
    return metrics, arrays
