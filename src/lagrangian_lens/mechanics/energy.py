"""Point-perplexity energy along a token-axis trajectory (the "Momentum–Point-Perplexity Mechanics" view).

For states h_t (T, d) and the log-probability of the token emitted from each h_t:

* velocity       v_t = h_t - h_{t-1}                        (t = 1..T-1)
* log-kinetic    K_t = ln(½‖v_t‖²)
* log-potential  V_t = ln PPL_t = -ln p(x_t | h_t)
* log-energy     H_t = K_t + V_t,   E_t = exp(H_t) = ½‖v_t‖²·PPL_t

A step whose velocity is (numerically) zero has no log-kinetic energy. Such steps are flagged by the stated
rule ``‖v_t‖ <= zero_velocity_rtol · max(‖h_t‖, ‖h_{t-1}‖)`` (exact zeros always) and excluded from every
statistic, and counted; they are never turned into -inf or NaN in any result.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import TrajectoryError

ZERO_VELOCITY_RTOL = 1e-6


def _check_positions(n: int) -> None:
    if n < 2:
        raise TrajectoryError(
            f"a trajectory of {n} position(s) has no velocity: at least 2 are needed "
            "(give longer prompts, more new tokens, or fewer context tokens)."
        )


def velocities(h: torch.Tensor) -> torch.Tensor:
    """(T, d) -> (T-1, d) finite differences h_t - h_{t-1}."""
    if h.ndim != 2:
        raise TrajectoryError(f"expected states of shape (T, d); got {tuple(h.shape)}")
    _check_positions(h.shape[0])
    return h[1:] - h[:-1]


def zero_velocity(h: torch.Tensor, rtol: float = ZERO_VELOCITY_RTOL) -> torch.Tensor:
    """(T-1,) bool: steps whose speed is at most ``rtol`` times the state norm (or exactly zero)."""
    h = h.double()
    speed = velocities(h).norm(dim=-1)
    scale = torch.maximum(h[1:].norm(dim=-1), h[:-1].norm(dim=-1))
    return (speed == 0) | (speed <= rtol * scale)


@dataclass
class EnergySeries:
    """The energy terms of one trajectory's steps t = 1..T-1: float64 tensors on the states' device."""

    log_kinetic: torch.Tensor  # (n,) K_t; arbitrary where not valid
    log_ppl: torch.Tensor  # (n,) V_t
    valid: torch.Tensor  # (n,) bool, False at zero-velocity steps

    def __post_init__(self):
        n = len(self.valid)
        if self.log_kinetic.shape != (n,) or self.log_ppl.shape != (n,):
            raise TrajectoryError(f"energy terms must all be ({n},): K {self.log_kinetic.shape}, V {self.log_ppl.shape}")

    @property
    def log_energy(self) -> torch.Tensor:
        """(n,) H_t = K_t + V_t."""
        return self.log_kinetic + self.log_ppl

    @property
    def n_zero_velocity(self) -> int:
        return int((~self.valid).sum())


def energy_series(h: torch.Tensor, neg_logprob: torch.Tensor, rtol: float = ZERO_VELOCITY_RTOL) -> EnergySeries:
    """Energy terms of states ``h`` (T, d) with ``neg_logprob`` (T,) = -ln p(token emitted from h_t).

    Step i (0-based) covers position t = i+1: its velocity is h_t - h_{t-1} and its potential -ln p at h_t.
    Everything stays on ``h``'s device (``neg_logprob`` is moved there), so a run's table is built where the
    model ran.
    """
    if h.ndim != 2:
        raise TrajectoryError(f"expected states of shape (T, d); got {tuple(h.shape)}")
    return energy_series_many(h, neg_logprob, [h.shape[0]], rtol)[0]


def step_rows(lengths: Sequence[int], device=None) -> torch.Tensor:
    """(Σ (T_i - 1),) rows of ``velocities(h)`` of trajectories stacked in ``h`` that stay inside one
    trajectory: the difference across each boundary (first state minus the previous trajectory's last) is left
    out. Built on the host, where the lengths are, and sent once."""
    boundaries = np.cumsum(lengths)[:-1] - 1  # (B-1,) velocity rows that straddle two trajectories
    return torch.from_numpy(np.delete(np.arange(max(sum(lengths) - 1, 0)), boundaries)).to(device)


def energy_series_many(h: torch.Tensor, neg_logprob: torch.Tensor, lengths: Sequence[int],
                       rtol: float = ZERO_VELOCITY_RTOL) -> list[EnergySeries]:
    """:func:`energy_series` of B trajectories stacked along the first axis of ``h`` (Σ T_i, d), with
    ``neg_logprob`` (Σ T_i,) and ``lengths`` T_i: one set of kernels for the whole batch, not one per
    trajectory, then per-trajectory views."""
    for n in lengths:
        _check_positions(n)
    if h.ndim != 2 or h.shape[0] != sum(lengths):
        raise TrajectoryError(f"states must be (Σ T_i, d) = ({sum(lengths)}, d); got {tuple(h.shape)}")
    if neg_logprob.shape != (h.shape[0],):
        raise TrajectoryError(f"neg_logprob must be (T,) = ({h.shape[0]},); got {tuple(neg_logprob.shape)}")
    h = h.double()
    rows = step_rows(lengths, h.device)  # (M,) M = Σ (T_i - 1)
    v = velocities(h).index_select(0, rows)  # (M, d)
    valid = ~zero_velocity(h, rtol).index_select(0, rows)  # (M,)
    sq = (v * v).sum(-1)
    # ln(½‖v‖²) computed from ‖v‖² directly; zero steps get a placeholder that no statistic reads.
    log_k = torch.where(valid, torch.log(sq.clamp_min(1e-300)) - math.log(2.0), torch.zeros_like(sq))
    log_ppl = neg_logprob.to(device=h.device, dtype=torch.float64).index_select(0, rows + 1)  # -ln p at h_t
    steps = [n - 1 for n in lengths]
    return [EnergySeries(k, p, ok) for k, p, ok in zip(log_k.split(steps), log_ppl.split(steps), valid.split(steps))]
