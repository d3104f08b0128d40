"""PARF, the pair-augmented force of the SPLM: a learned pair potential V_φ between each token and the earlier ones.

Token t feels, besides −∇_h V_θ(ξ, h), the force of the mean pair potential over its t earlier tokens

    U_t = (1/t) Σ_{s<t} V_φ(h_t, sg(h_s)),    f_pair_t = −∇_{h_t} U_t    (t = 0 has no earlier token: U_0 = 0)

sg(h_s) is the *pair-source detach point* (:meth:`PairPotential.source`). The force is the gradient of
Σ_t U_t with respect to every h; were the sources not detached, token s would also receive
Σ_{t>s} ∂V_φ(h_t, h_s)/∂h_s, a force from later tokens: the flow would see the future (the causal probe catches
it). Detached, the force on token t depends on h_{≤t} only, whatever V_φ is.

Two forms of V_φ:

* ``structural``: a softened log-distance interaction in a learned metric,
  V_φ(h_t, h_s) = a·log(1 + ‖u‖²), u = W(h_t − h_s), with W (r, d) and a scalar strength a (a > 0 draws h_t towards
  the earlier states, a < 0 pushes it away). The softening ε of log(1 + ‖u‖²/ε²) is absorbed into the learned W.
  Its gradient is closed-form, ∇_{h_t} V_φ = 2a·Wᵀu / (1 + ‖u‖²), and bounded by |a|·‖W‖ however close or far the
  states are, so the pair force cannot blow up the integration. Written per query, the closed form is causal even
  without the detach; there the detach keeps its training gradient equal to the autograd form's.
* ``mlp``: V_φ = MLP([h_t − h_s, h_t ⊙ h_s]) -> scalar (one SiLU hidden layer), its gradient by autograd.

Both start from a flat pair potential by default (a, and the MLP's last layer, of size ``init_scale`` = 0), so PARF
starts exactly as the vanilla SPLM; the loss's gradient with respect to a (or the last layer) is not zero there, so
the pair force grows in as it helps. The evaluation is causal and O(T²), chunked over blocks of ``chunk`` query positions: a block
pairs its queries with the sources before its end only, so memory stays O(chunk·T·width) instead of O(T²·width).
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from ...errors import ConfigError
from ...nn import silu_mlp

PAIR_FORMS = ("structural", "mlp")


class PairPotential(nn.Module):
    """V_φ(h_t, h_s) for every causal pair, its per-token mean U (B, T) and the force −∇_h Σ_t U_t (B, T, d)."""

    def __init__(self, chunk: int):
        super().__init__()
        self.chunk = chunk

    def pair(self, hq: torch.Tensor, hs: torch.Tensor) -> torch.Tensor:
        """V_φ of every (query, source) pair: hq (B, C, d), hs (B, S, d) -> (B, C, S)."""
        raise NotImplementedError

    def source(self, h: torch.Tensor) -> torch.Tensor:
        """The pair sources sg(h_s): the detach point that keeps the pair force causal (see the module docstring)."""
        return h.detach()

    def _blocks(self, T: int, device: torch.device, dtype: torch.dtype) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(q0, q1, w) per block of queries [q0, q1): w (C, q1) holds 1/t where s < t, else 0 (the causal mean)."""
        for q0 in range(0, T, self.chunk):
            q1 = min(T, q0 + self.chunk)
            t = torch.arange(q0, q1, device=device)[:, None]  # (C, 1) absolute query positions
            s = torch.arange(q1, device=device)[None, :]  # (1, q1) sources up to the block's end
            yield q0, q1, (s < t).to(dtype) / t.clamp(min=1).to(dtype)

    def energy(self, h: torch.Tensor) -> torch.Tensor:
        """U_t = (1/t) Σ_{s<t} V_φ(h_t, sg(h_s)): h (B, T, d) -> (B, T), zero at t = 0."""
        src = self.source(h)
        return torch.cat([(self.pair(h[:, q0:q1], src[:, :q1]) * w).sum(-1)
                          for q0, q1, w in self._blocks(h.shape[1], h.device, h.dtype)], dim=1)

    def force_autograd(self, h: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """−∇_h Σ_t U_t by autograd, one query block at a time: (B, T, d).

        The gradient is taken with respect to all of h, sources included, so it is exactly as causal as
        :meth:`source` makes it; a fresh node for h keeps earlier uses of h (ξ, the integration) out of it.
        """
        with torch.enable_grad():
            h_var = h.view_as(h) if h.requires_grad else h.detach().requires_grad_(True)
            src = self.source(h_var)
            force = torch.zeros_like(h)
            for q0, q1, w in self._blocks(h.shape[1], h.device, h.dtype):
                block = (self.pair(h_var[:, q0:q1], src[:, :q1]) * w).sum()
                grad, = torch.autograd.grad(block, h_var, create_graph=create_graph)  # frees the block's graph
                force = force - grad
        return force

    def force(self, h: torch.Tensor, create_graph: bool) -> torch.Tensor:
        return self.force_autograd(h, create_graph)


class StructuralPair(PairPotential):
    """V_φ = a·log(1 + ‖W(h_t − h_s)‖²), with its closed-form gradient."""

    def __init__(self, d: int, rank: int, chunk: int, init_scale: float):
        super().__init__(chunk)
        self.metric = nn.Linear(d, rank, bias=False)  # W: a bias would cancel in h_t − h_s
        nn.init.normal_(self.metric.weight, std=1 / math.sqrt(d))  # ‖Wx‖ ≈ ‖x‖·sqrt(r/d) at init
        self.strength = nn.Parameter(torch.tensor(float(init_scale)))  # a

    def pair(self, hq: torch.Tensor, hs: torch.Tensor) -> torch.Tensor:
        u = self.metric(hq)[:, :, None] - self.metric(hs)[:, None]  # (B, C, S, r)
        return self.strength * torch.log1p((u * u).sum(-1))  # (B, C, S)

    def force(self, h: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """−∇_{h_t} U_t = −(2a/t)·Wᵀ Σ_{s<t} u_ts / (1 + ‖u_ts‖²): plain differentiable ops, no double backward."""
        wq, ws = self.metric(h), self.metric(self.source(h))  # (B, T, r) each
        blocks = []
        for q0, q1, w in self._blocks(h.shape[1], h.device, h.dtype):
            u = wq[:, q0:q1, None] - ws[:, None, :q1]  # (B, C, q1, r)
            coef = w / (1 + (u * u).sum(-1))  # (B, C, q1)
            blocks.append((coef[..., None] * u).sum(2))  # (B, C, r)
        return -2 * self.strength * torch.cat(blocks, dim=1) @ self.metric.weight  # (B, T, d)


class MLPPair(PairPotential):
    """V_φ = MLP([h_t − h_s, h_t ⊙ h_s]) -> scalar, one SiLU hidden layer; the force by autograd."""

    def __init__(self, d: int, hidden: int, chunk: int, init_scale: float):
        super().__init__(chunk)
        self.hidden = nn.ModuleList([nn.Linear(2 * d, hidden)])
        self.out = nn.Linear(hidden, 1, bias=False)  # a constant offset of V_φ exerts no force
        nn.init.normal_(self.out.weight, std=init_scale)

    def pair(self, hq: torch.Tensor, hs: torch.Tensor) -> torch.Tensor:
        q, s = hq[:, :, None], hs[:, None]  # (B, C, 1, d), (B, 1, S, d)
        return silu_mlp(self.hidden, self.out, torch.cat([q - s, q * s], dim=-1))  # (B, C, S)


def make_pair(form: str, d_model: int, hidden: int, chunk: int, init_scale: float) -> PairPotential:
    """The pair potential ``form`` (one of PAIR_FORMS) of width ``hidden`` (the metric's rank for structural)."""
    if form == "structural":
        return StructuralPair(d_model, hidden, chunk, init_scale)
    if form == "mlp":
        return MLPPair(d_model, hidden, chunk, init_scale)
    raise ConfigError("pair_force", f"{form!r} is not a pair form; use one of {', '.join(PAIR_FORMS)}")
