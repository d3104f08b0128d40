"""Baselines for Jacobian steering: what Theorem E.1's claim (least ‖δh‖ for a given gain) is measured against.

Per pair, with r = the Jacobian result's ‖δh‖ and Δ = its gain ln p_after - ln p_before:

* ``additive``: δh along the target's unembedding row, û = W_{t*}/‖W_{t*}‖. For a target set, the q-weighted
  mean row Σ_S q_j W_j (q = p at h0 restricted to the set, renormalised): the set's gradient without its
  -Σ p_j W_j term, exactly as W_{t*} is for one token.
* ``random``: one random unit direction per pair (the first of best_random's draws, so best >= random at r).
* ``best_random``: the best of ``n_random`` random unit directions per pair, by the gain at norm r.
* ``logit_bias``: b added to the target's logit(s), no state change. At equal gain b has a closed form: adding b
  to every logit of the set S scales P(S) as P' = P e^b / (1 - P + P e^b), so e^b = P'(1 - P) / (P (1 - P')).

A direction method is reported at equal norm (the state h0 + r·û) and at equal gain: the norm s along the ray
h0 + s·û where ln p reaches ln p_after. s is found by doubling from r up to ``max_norm_ratio``·r, then bisection
until the bracket is within ``norm_rtol``·s; the reported s is the bracket's reaching end, so the gain holds
there. Where ln p is not monotone along the ray, s is a crossing inside that bracket, not necessarily the first.
s = +inf (with NaN p/KL and top ids -1 there) when the ray does not reach the gain within max_norm_ratio·r.

Random directions are drawn on the CPU from a seeded generator, one (N, d) block at a time, and evaluated one
direction per read-out call: the read-out contract (all N rows, each with its own context) allows no stacking
of directions, and peak memory is one (N, V) logits block whatever ``n_random`` is.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..checks import check_range
from ..errors import ConfigError, TrajectoryError
from .jacobian import (
    Objective,
    Readout,
    SteeringResult,
    as_states,
    as_target,
    check_count,
    check_shape,
    kl_divergence,
    top_tokens,
)

DIRECTION_METHODS = ("additive", "random", "best_random")
METHODS = (*DIRECTION_METHODS, "logit_bias")
MAX_BIAS = 1e4  # nats: a goal of p' = 1 (in floating point) needs b = +inf; this gives p = 1 at any precision
AT_EQUAL_NORM = ("gain_at_equal_norm", "p_at_equal_norm", "kl_at_equal_norm", "top_at_equal_norm",
                 "top_p_at_equal_norm")


@dataclass
class BaselineResult:
    """One baseline against the Jacobian result, per pair: N pairs, k = top_k clipped to V.

    The equal-norm fields, ``norm_at_equal_gain`` and ``direction`` are None for logit_bias (it moves no state);
    ``bias`` is set for logit_bias only. Probabilities and gains are float64.
    """

    method: str
    radius: torch.Tensor  # (N,) the Jacobian's ‖δh‖ = r
    target_gain: torch.Tensor  # (N,) the Jacobian's Δ ln p_{t*}
    p_at_equal_gain: torch.Tensor  # (N,) p_{t*} where the gain is reached (NaN: unreachable)
    kl_at_equal_gain: torch.Tensor  # (N,) KL(natural ‖ baseline) there
    top_at_equal_gain: torch.Tensor  # (N, k) long, -1 where unreachable
    top_p_at_equal_gain: torch.Tensor  # (N, k)
    norm_at_equal_gain: torch.Tensor | None = None  # (N,) ‖δh‖ needed for the gain, +inf where unreachable
    gain_at_equal_norm: torch.Tensor | None = None  # (N,) Δ ln p at ‖δh‖ = r
    p_at_equal_norm: torch.Tensor | None = None  # (N,)
    kl_at_equal_norm: torch.Tensor | None = None  # (N,)
    top_at_equal_norm: torch.Tensor | None = None  # (N, k) long
    top_p_at_equal_norm: torch.Tensor | None = None  # (N, k)
    direction: torch.Tensor | None = None  # (N, d) unit directions
    bias: torch.Tensor | None = None  # (N,) logit bias b, nats

    def __post_init__(self):
        if self.method not in METHODS:
            raise TrajectoryError(f"method must be one of {METHODS}; got {self.method!r}")
        n, k = len(self.radius), self.top_at_equal_gain.shape[-1]
        for name in ("radius", "target_gain", "p_at_equal_gain", "kl_at_equal_gain"):
            check_shape(name, getattr(self, name), (n,))
        for name in ("top_at_equal_gain", "top_p_at_equal_gain"):
            check_shape(name, getattr(self, name), (n, k))
        is_bias = self.method == "logit_bias"
        for name in (*AT_EQUAL_NORM, "norm_at_equal_gain", "direction", "bias"):
            value = getattr(self, name)
            if (value is None) != (is_bias if name != "bias" else not is_bias):
                raise TrajectoryError(f"{self.method}: {name} must be {'None' if value is not None else 'set'}")
            if value is not None and name != "direction":
                check_shape(name, value, (n, k) if name.startswith("top") else (n,))
        if self.direction is not None and (self.direction.ndim != 2 or len(self.direction) != n):
            raise TrajectoryError(f"direction must be (N, d) with N = {n}; got {tuple(self.direction.shape)}")

    @property
    def norm_ratio(self) -> torch.Tensor | None:
        """(N,) norm_at_equal_gain / r: >= 1 when the Jacobian direction is the cheapest (Theorem E.1), NaN where
        r = 0 (nothing to compare); None for logit_bias."""
        norm = self.norm_at_equal_gain
        return None if norm is None else norm / self.radius.to(norm)

    @property
    def top_k_ids(self) -> torch.Tensor:
        """(N, k) the list this method is judged by: at the Jacobian's ‖δh‖ for a direction, at the Jacobian's
        gain for the logit bias (it has no ‖δh‖)."""
        return self.top_at_equal_gain if self.top_at_equal_norm is None else self.top_at_equal_norm

    def records(self, token_text: Callable[[int], str] | None = None) -> list[dict]:
        """One JSON-able dict per pair; ``token_text`` (an id -> text decoder) adds the top tokens' texts."""
        names = ("radius", "target_gain", "norm_at_equal_gain", "norm_ratio", "bias", "p_at_equal_gain",
                 "kl_at_equal_gain", "top_at_equal_gain", "top_p_at_equal_gain", *AT_EQUAL_NORM)
        lists = {name: getattr(self, name).tolist() for name in names if getattr(self, name) is not None}
        rows = []
        for i in range(len(self.radius)):
            row = {"pair": i, "method": self.method, **{name: values[i] for name, values in lists.items()}}
            if token_text is not None:
                for name in ("top_at_equal_gain", "top_at_equal_norm"):
                    if name in row:
                        row[f"{name}_text"] = [token_text(t) if t >= 0 else None for t in row[name]]
            rows.append(row)
        return rows


def _norm_for_gain(evaluate: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, u: torch.Tensor,
                   logp0: torch.Tensor, goal: torch.Tensor, start: torch.Tensor, max_norm_ratio: float,
                   norm_rtol: float) -> torch.Tensor:
    """(N,) norm s with ln p(x0 + s·u) >= goal (module docstring); 0 where x0 already meets it, +inf where the
    ray falls short up to max_norm_ratio·start."""
    def meets(s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return rows & (evaluate(x0 + torch.where(rows, s, 0.0)[:, None] * u) >= goal)

    need = logp0 < goal
    lo, hi, limit = torch.zeros_like(start), start.clone(), start * max_norm_ratio
    reached = meets(hi, need)
    searching = need & ~reached
    for _ in range(math.ceil(math.log2(max_norm_ratio))):  # the last doubling lands on the limit exactly
        if not searching.any():
            break
        lo, hi = torch.where(searching, hi, lo), torch.where(searching, torch.minimum(2 * hi, limit), hi)
        newly = meets(hi, searching)
        reached, searching = reached | newly, searching & ~newly
    active = reached.clone()
    for _ in range(64):  # bounded where float resolution stops the bracket short of norm_rtol
        active &= (hi - lo) > norm_rtol * hi
        if not active.any():
            break
        mid = (lo + hi) / 2
        ok = meets(mid, active)
        hi, lo = torch.where(ok, mid, hi), torch.where(active & ~ok, mid, lo)
    return torch.where(reached, hi, torch.where(need, math.inf, 0.0))


def _random_directions(evaluate, x0: torch.Tensor, radius: torch.Tensor, logp0: torch.Tensor, n_random: int,
                       seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, best) unit directions (N, d): the first draw and, per pair, the draw with the largest gain at r."""
    generator = torch.Generator().manual_seed(seed)
    first = best = best_gain = None
    for _ in range(n_random):
        u = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        u = (u / u.norm(dim=-1, keepdim=True)).to(x0)  # (N, d)
        gain = (evaluate(x0 + radius[:, None] * u) - logp0).nan_to_num(nan=-math.inf)  # (N,)
        if first is None:
            first, best, best_gain = u, u, gain
            continue
        better = gain > best_gain
        best, best_gain = torch.where(better[:, None], u, best), torch.where(better, gain, best_gain)
    return first, best


def compare_baselines(h: torch.Tensor, target, readout: Readout, result: SteeringResult, *,
                      weight: torch.Tensor | None = None, n_random: int = 100, seed: int = 0, top_k: int = 10,
                      max_norm_ratio: float = 1024.0, norm_rtol: float = 1e-6) -> dict[str, BaselineResult]:
    """Every baseline of the module docstring against ``result`` = jacobian_steer(h, target, readout, ...).

    ``weight`` (V, d) is the unembedding for the additive direction, by default ``readout.linear_weight``.
    Returns {method: BaselineResult} for additive, random, best_random and logit_bias.
    """
    check_count("n_random", n_random)
    check_count("top_k", top_k)
    check_count("seed", seed, low=0)
    check_range("max_norm_ratio", max_norm_ratio, low=1.0, low_open=True)
    check_range("norm_rtol", norm_rtol, low=0.0, high=1.0, low_open=True, high_open=True)
    if not isinstance(result, SteeringResult):
        raise ConfigError("result", f"must be the SteeringResult of jacobian_steer; got {type(result).__name__}")
    h0 = as_states(h)
    if h0.shape != result.h0.shape or not torch.equal(h0, result.h0.to(h0)):
        raise ConfigError("result", f"was computed from other states than h {tuple(h0.shape)}; pass the h that "
                                    "was given to jacobian_steer")
    weight = getattr(readout, "linear_weight", None) if weight is None else weight
    if weight is None:
        raise ConfigError("weight", "the additive baseline needs the (V, d) unembedding: pass weight=, or a "
                                    "read-out with linear_weight (readout(model, 'final') has one)")
    if weight.ndim != 2 or weight.shape[1] != h0.shape[1]:
        raise ConfigError("weight", f"must be (V, d) with d = {h0.shape[1]}; got {tuple(weight.shape)}")

    objective = Objective(readout, h0)
    x0 = h0.to(objective.dtype)  # (N, d)
    logits0 = objective.logits(x0)  # (N, V)
    vocab = logits0.shape[-1]
    if len(weight) != vocab:
        raise ConfigError("weight", f"has {len(weight)} rows but the read-out gives V = {vocab} logits")
    target = as_target(target, len(h0), vocab, h0.device)

    def evaluate(states: torch.Tensor) -> torch.Tensor:
        return target.logp(objective.logits(states))

    logp0 = target.logp(logits0)  # (N,)
    radius = result.delta_norm.to(x0)  # (N,)
    goal = result.p_after.log().to(x0)  # (N,) ln p_after, the Jacobian's reach
    common = dict(radius=radius, target_gain=result.logp_gain)

    weight = weight.detach().to(x0)
    rows = weight[target.ids] if target.ids is not None else target.weights(logits0) @ weight  # (N, d)
    random, best = _random_directions(evaluate, x0, radius, logp0, n_random, seed)
    directions = {"additive": rows / rows.norm(dim=-1, keepdim=True), "random": random, "best_random": best}

    out = {}
    for method, u in directions.items():
        at_norm = objective.logits(x0 + radius[:, None] * u)  # (N, V)
        logp_norm = target.logp(at_norm)  # (N,)
        top_n, top_p_n = top_tokens(at_norm, top_k)
        norm = _norm_for_gain(evaluate, x0, u, logp0, goal, radius, max_norm_ratio, norm_rtol)  # (N,)
        reachable = torch.isfinite(norm)
        at_gain = objective.logits(x0 + torch.where(reachable, norm, 0.0)[:, None] * u)  # (N, V)
        top_g, top_p_g = top_tokens(at_gain, top_k)
        out[method] = BaselineResult(
            method=method, **common, norm_at_equal_gain=norm, direction=u,
            p_at_equal_gain=torch.where(reachable, target.logp(at_gain).double().exp(), math.nan),
            kl_at_equal_gain=torch.where(reachable, kl_divergence(logits0, at_gain), math.nan),
            top_at_equal_gain=top_g.masked_fill(~reachable[:, None], -1),
            top_p_at_equal_gain=top_p_g.masked_fill(~reachable[:, None], math.nan),
            gain_at_equal_norm=(logp_norm - logp0).double(), p_at_equal_norm=logp_norm.double().exp(),
            kl_at_equal_norm=kl_divergence(logits0, at_norm), top_at_equal_norm=top_n, top_p_at_equal_norm=top_p_n,
        )

    # e^b = P'(1 - P)/(P(1 - P')) in log form; no bias where the Jacobian gained nothing.
    lp0, lp1 = logp0.double(), goal.double()
    bias = torch.where(lp1 > lp0, lp1 - lp0 + torch.log1p(-lp0.exp()) - torch.log1p(-lp1.exp()), 0.0)
    bias = bias.clamp(max=MAX_BIAS)
    biased = logits0 + bias.to(x0)[:, None] * target.as_mask(vocab)  # (N, V)
    top_b, top_p_b = top_tokens(biased, top_k)
    out["logit_bias"] = BaselineResult(
        method="logit_bias", **common, bias=bias, p_at_equal_gain=target.logp(biased).double().exp(),
        kl_at_equal_gain=kl_divergence(logits0, biased), top_at_equal_gain=top_b, top_p_at_equal_gain=top_p_b,
    )
    return out
