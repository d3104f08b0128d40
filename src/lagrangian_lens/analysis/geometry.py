"""Paths for the geometry analyses (STP kinematics, hypersphere): along tokens at a site, or along depth.

* ``token`` axis: one path per sequence, h_t at the site for t = skip .. T-1 (generated: the continuation).
* ``depth`` axis: one path per token, h_l for l = embed, block.0, ..., block.L-1 (the raw residual stream;
  a ``final`` site, after the final norm, lives in another space and is left out).

The first ``skip_positions`` positions are dropped by default: position 0 often holds an attention-sink
state whose norm dwarfs the rest, and one outlier would dominate every mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_choice, check_range
from ..errors import ConfigError, TrajectoryError
from ..trajectories import Site, Trajectory

AXES = ("token", "depth")


@dataclass(frozen=True)
class PathConventions:
    """Which paths the geometry analyses read, and how many shuffles their permutation nulls draw."""

    CHOICES = {"axis": AXES}

    axis: str = "token"  # token: h_t along positions at the site; depth: h_l along layers, one path per token
    site: str = "final"  # token axis: where h_t is read (final, embed, block.<l>); the depth axis uses every block
    skip_positions: int = 1  # drop the first this-many positions (attention-sink states with outsized norms)
    n_permutations: int = 1000  # shuffles of the order within each path for the permutation null (p >= 1/(n+1))

    def __post_init__(self):
        check_choice("axis", self.axis, AXES)
        try:
            Site.parse(self.site)
        except TrajectoryError as exc:
            raise ConfigError("site", str(exc)) from None
        check_range("skip_positions", self.skip_positions, low=0)
        check_range("n_permutations", self.n_permutations, low=1)

    @property
    def sites(self) -> str:
        """The sites to record: the site on the token axis, every block on the depth axis."""
        return self.site if self.axis == "token" else "all"

    def paths(self, trajectories: list[Trajectory]) -> list[torch.Tensor]:
        return paths_from_trajectories(trajectories, self.axis, self.site, self.skip_positions)


def paths_from_trajectories(trajectories: list[Trajectory], axis: str, site: str | None, skip: int) -> list[torch.Tensor]:
    """The paths (n_points, d) of ``axis``; generated trajectories contribute their continuation only."""
    if axis not in AXES:
        raise TrajectoryError(f"axis must be one of {AXES}, got {axis!r}")
    paths = []
    for tr in trajectories:
        first = max(skip, tr.continuation.start if tr.mode == "generated" else 0)
        if axis == "token":
            path = tr.at(str(site))[first:]
            if path.shape[0] >= 3:
                paths.append(path)
        else:
            rows = [i for i, name in enumerate(tr.sites) if name == "embed" or name.startswith("block.")]
            paths += list(tr.states[rows, first:].transpose(0, 1))  # (positions, depth, d): one path per token
    if not paths:
        raise TrajectoryError(f"no {axis}-axis path has the 3 points a triplet needs: use longer texts or skip "
                              f"fewer positions (skip_positions is {skip})")
    return paths

