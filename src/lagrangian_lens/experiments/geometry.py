"""Paths for the geometry experiments (STP kinematics, hypersphere): along tokens at a site, or along depth.

* ``token`` axis: one path per sequence, h_t at the site for t = skip .. T-1 (generated: the continuation).
* ``depth`` axis: one path per token, h_l for l = embed, block.0, ..., block.L-1 (the raw residual stream;
  a ``final`` site, after the final norm, lives in another space and is left out).

The first ``skip_positions`` positions are dropped by default: position 0 often holds an attention-sink
state whose norm dwarfs the rest, and one outlier would dominate every mean.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..analysis.geometry import AXES, paths_from_trajectories
from .runner import RunConfig, collect_trajectories


@dataclass
class GeometryConfig(RunConfig):
    """Settings shared by the geometry experiments (stp, sphere)."""

    axis: str = "token"
    """token: h_t along positions at --site; depth: h_l along layers, one path per token."""
    trajectory: str = "teacher-forced"
    """teacher-forced (the text itself) or generated (the model's own continuation)."""
    max_tokens: int = 64
    """Teacher-forced texts are cut to their first this-many tokens."""
    skip_positions: int = 1
    """Drop the first this-many positions (attention-sink states with outsized norms)."""
    n_permutations: int = 100
    """Shuffles of the order within each path for the permutation null."""

    def __post_init__(self):
        super().__post_init__()
        if self.axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {self.axis!r}")
        if self.skip_positions < 0:
            raise ValueError(f"skip_positions must be >= 0, got {self.skip_positions}")


def collect_paths(cfg: GeometryConfig, loaded, prompts: list[str], progress: bool = False):
    """(paths, trajectories) for ``cfg.axis``; the depth axis records every block (``all``)."""
    sites = cfg.site if cfg.axis == "token" else "all"
    trajectories = collect_trajectories(cfg, loaded, prompts, sites=sites, max_tokens=cfg.max_tokens,
                                        progress=progress)
    site = cfg.site if cfg.axis == "token" else None
    return paths_from_trajectories(trajectories, cfg.axis, site, cfg.skip_positions), trajectories


def geometry_conventions(cfg: GeometryConfig) -> dict:
    return {"axis": cfg.axis, "site": cfg.site if cfg.axis == "token" else "all (embed + every block)",
            "max_tokens": cfg.max_tokens, "skip_positions": cfg.skip_positions,
            "n_permutations": cfg.n_permutations}
