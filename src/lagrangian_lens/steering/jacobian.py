"""Minimal-action Jacobian steering (Algorithm 1 of the energy paper, arXiv 2508.08492) as pure tensor code.

A hidden state h is pushed along g(h) = ∇_h ln p_{t*}(h), the direction that buys a given gain in ln p_{t*}
with the smallest ‖δh‖ (Theorem E.1, Cauchy–Schwarz: to first order the gain is g·δh <= ‖g‖‖δh‖). Per step
k: ĝ_k = g_k/‖g_k‖, h_{k+1} = h_k + α_k ĝ_k with α_k from a backtracking line search, until p_{t*} >= η or
K steps.

Read-out contract: ``readout`` maps states (N, d) to logits (N, V) and row i may depend on pair i's own context
(a read-out through later blocks is per pair), so it is always called with all N rows, in order, and no row is
ever mixed with another. A read-out exposing ``readout.linear_weight`` (V, d), a bias-free linear head, gets the
closed-form gradient; any other goes through autograd. Everything is computed in float32 at least.

Target: token ids (N,) or a boolean set mask (N, V); for a set, ln p_S = logsumexp of the set's log-probs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..checks import check_range
from ..errors import ConfigError, TrajectoryError

Readout = Callable[[torch.Tensor], torch.Tensor]
STOP_REASONS = ("reached", "max_steps", "stalled")


def check_count(name: str, value, low: int = 1) -> None:
    """``value`` an int (not a bool) >= ``low``, else ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")
    check_range(name, value, low=low)


def as_states(h: torch.Tensor) -> torch.Tensor:
    """States (N, d) from ``h`` (N, d) or (d,), detached; checked to be a finite, non-empty float tensor."""
    if not isinstance(h, torch.Tensor) or not h.is_floating_point() or h.ndim not in (1, 2):
        got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise TrajectoryError(f"h must be a float tensor of shape (N, d) or (d,); got {got}")
    h = h.detach().reshape(1, -1) if h.ndim == 1 else h.detach()
    if h.shape[0] == 0 or h.shape[1] == 0:
        raise TrajectoryError(f"h has shape {tuple(h.shape)}: nothing to steer; give at least one (pair, state) row")
    if not torch.isfinite(h).all():
        row = int((~torch.isfinite(h)).any(-1).nonzero()[0])
        raise TrajectoryError(f"h has non-finite values in row {row}: steer finite states (a float32 model, or "
                              "check the weights)")
    return h


@dataclass(frozen=True)
class Target:
    """The target token of each pair: ``ids`` (N,) long, or a set ``mask`` (N, V) bool; exactly one is set."""

    ids: torch.Tensor | None = None  # (N,) long
    mask: torch.Tensor | None = None  # (N, V) bool

    def __post_init__(self):
        if (self.ids is None) == (self.mask is None):
            raise ConfigError("target", "give token ids (N,) or a set mask (N, V), exactly one")

    def logp(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, V) logits -> (N,) ln p_target."""
        norm = logits.logsumexp(-1)
        if self.ids is not None:
            return logits.gather(-1, self.ids[:, None])[:, 0] - norm
        return logits.masked_fill(~self.mask, -math.inf).logsumexp(-1) - norm

    def weights(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, V) q: p restricted to the target set and renormalised (one-hot for a single token)."""
        if self.ids is not None:
            return torch.zeros_like(logits).scatter_(-1, self.ids[:, None], 1.0)
        return logits.masked_fill(~self.mask, -math.inf).softmax(-1)

    def as_mask(self, vocab: int) -> torch.Tensor:
        """(N, V) bool mask of the target set."""
        if self.mask is not None:
            return self.mask
        return torch.zeros(len(self.ids), vocab, dtype=torch.bool, device=self.ids.device).scatter_(
            -1, self.ids[:, None], True)


def as_target(target, n: int, vocab: int, device=None) -> Target:
    """``target`` checked against N pairs and a vocabulary of ``vocab``: ids (N,) (a scalar when N == 1) or a
    bool mask (N, V) ((V,) when N == 1). Raises ConfigError('target', ...) naming the bad id, row or shape."""
    target = torch.as_tensor(target, device=device)
    if target.dtype == torch.bool:
        mask = target.reshape(1, -1) if target.ndim == 1 and n == 1 else target
        if mask.shape != (n, vocab):
            raise ConfigError("target", f"a set mask must have shape (N, V) = ({n}, {vocab}); "
                                        f"got {tuple(target.shape)}")
        empty = ~mask.any(-1)
        if empty.any():
            raise ConfigError("target", f"the target set of pair {int(empty.nonzero()[0])} has no token; "
                                        "mark at least one token per row")
        return Target(mask=mask)
    if target.is_floating_point() or target.is_complex():
        raise ConfigError("target", f"token ids must be integers (or a bool set mask); got dtype {target.dtype}")
    ids = target.reshape(1) if target.ndim == 0 and n == 1 else target
    if ids.shape != (n,):
        raise ConfigError("target", f"token ids must have shape (N,) = ({n},); got {tuple(target.shape)}")
    bad = (ids < 0) | (ids >= vocab)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ConfigError("target", f"token id {int(ids[i])} (pair {i}) is outside the vocabulary [0, {vocab}) "
                                    f"of the read-out (V = {vocab}); use ids of the model's tokenizer")
    return Target(ids=ids.long())


class Objective:
    """ln p_target through one read-out, in the compute dtype (the states' dtype promoted to float32 at least).

    States stay in the compute dtype throughout; an autograd read-out receives them cast back to the caller's
    dtype (the one it was built for) and its logits are upcast before any log-softmax.
    """

    def __init__(self, readout: Readout, h: torch.Tensor):
        self.readout = readout
        self.in_dtype = h.dtype
        self.dtype = torch.promote_types(h.dtype, torch.float32)
        weight = getattr(readout, "linear_weight", None)
        self.weight = None if weight is None else weight.detach().to(h.device, self.dtype)  # (V, d)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, V) logits, no graph kept."""
        if self.weight is not None:
            return x @ self.weight.T
        with torch.no_grad():
            return self.readout(x.to(self.in_dtype)).to(self.dtype)

    def logp_grad(self, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ln p (N,), g = ∇_x ln p (N, d), logits (N, V)) at states ``x`` (N, d), never mutated."""
        if self.weight is not None:
            # ln p_S = logsumexp_S z - logsumexp z with z = W x, so g = Σ_S q_j W_j - Σ_j p_j W_j = (q - p) W.
            logits = self.logits(x)
            mean_row = logits.softmax(-1) @ self.weight  # (N, d) Σ_j p_j W_j
            own = self.weight[target.ids] if target.ids is not None else target.weights(logits) @ self.weight
            return target.logp(logits), own - mean_row, logits
        # inference_mode(False): a caller under inference_mode (or no_grad) still gets a gradient.
        with torch.inference_mode(False), torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            logits = self.readout(leaf.to(self.in_dtype)).to(self.dtype)
            logp = target.logp(logits)
            # Rows never mix, so the gradient of the sum is every row's own gradient.
            (g,) = torch.autograd.grad(logp.sum(), leaf, allow_unused=True)
        g = torch.zeros_like(leaf) if g is None else g
        return logp.detach(), g.detach(), logits.detach()


def target_logprob_and_grad(h: torch.Tensor, target, readout: Readout
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ln p_target (N,), g = ∇_h ln p_target (N, d), logits (N, V)) at states ``h`` (N, d) or (d,).

    Closed form when ``readout.linear_weight`` is set, else autograd (also under ``torch.no_grad``). ln p and the
    logits come in the compute dtype (float32 at least), g in ``h``'s dtype; ``h`` is not modified.
    """
    h = as_states(h)
    objective = Objective(readout, h)
    x = h.to(objective.dtype)
    vocab = len(objective.weight) if objective.weight is not None else objective.logits(x).shape[-1]
    logp, g, logits = objective.logp_grad(x, as_target(target, len(h), vocab, h.device))
    return logp, g.to(h.dtype), logits


def kl_divergence(natural: torch.Tensor, steered: torch.Tensor) -> torch.Tensor:
    """(N,) KL(natural ‖ steered) in nats between the softmaxes of two (N, V) logit blocks; rounding below 0 is
    clipped to 0 (identical logits give exactly 0)."""
    log_p, log_q = natural.log_softmax(-1), steered.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def top_tokens(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, k) long, probabilities (N, k) float64) of the k most likely tokens, k clipped to V."""
    logp, ids = logits.log_softmax(-1).topk(min(k, logits.shape[-1]), dim=-1)
    return ids, logp.double().exp()


@dataclass(frozen=True)
class LineSearch:
    """Backtracking on the step length α_k along ĝ_k (the slope of ln p along ĝ_k is ‖g_k‖).

    The first trial is the first-order step to the goal, α = (ln η - ln p_k)/‖g_k‖ (ln p(h + αĝ) ≈ ln p + α‖g‖),
    clipped to [min_step, max_step]: the floor keeps a pair just below η from creeping, the ceiling bounds a
    trial where ‖g_k‖ is tiny (default: none). α is multiplied by ``shrink`` until the Armijo condition
    ln p(h + αĝ) >= ln p_k + c·α·‖g_k‖ holds, at most ``max_backtracks`` times; no acceptable α stalls the pair.
    """

    min_step: float = 1e-8
    max_step: float = math.inf
    shrink: float = 0.5
    c: float = 1e-4
    max_backtracks: int = 30

    def __post_init__(self):
        check_range("line_search.min_step", self.min_step, low=0.0)
        check_range("line_search.max_step", self.max_step, low=0.0, low_open=True)
        if self.min_step > self.max_step:
            raise ConfigError("line_search.min_step", f"{self.min_step} exceeds max_step {self.max_step}")
        check_range("line_search.shrink", self.shrink, low=0.0, high=1.0, low_open=True, high_open=True)
        check_range("line_search.c", self.c, low=0.0, high=1.0, low_open=True, high_open=True)
        check_count("line_search.max_backtracks", self.max_backtracks, low=0)

    def search(self, evaluate: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, u: torch.Tensor,
               logp: torch.Tensor, slope: torch.Tensor, alpha: torch.Tensor, active: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pair backtracking from ``x`` (N, d) along unit ``u`` (N, d), for ``active`` (N,) pairs only.

        ``evaluate`` maps all N states to ln p (N,); rows that are not searching are passed unmoved. Returns
        (accepted (N,) bool, new states (N, d), new ln p (N,)), unchanged where not accepted.
        """
        accepted, x_new, logp_new = torch.zeros_like(active), x.clone(), logp.clone()
        pending = active.clone()
        for _ in range(self.max_backtracks + 1):
            if not pending.any():
                break
            trial = x + torch.where(pending, alpha, 0.0)[:, None] * u  # (N, d)
            lp = evaluate(trial)
            ok = pending & (lp >= logp + self.c * alpha * slope)  # NaN fails
            x_new[ok], logp_new[ok] = trial[ok], lp[ok]
            accepted |= ok
            pending &= ~ok
            alpha = torch.where(pending, alpha * self.shrink, alpha)
        return accepted, x_new, logp_new


def check_shape(name: str, value: torch.Tensor, shape: tuple[int, ...]) -> None:
    """TrajectoryError unless ``value`` is a tensor of exactly ``shape``."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TrajectoryError(f"{name} must have shape {tuple(shape)}; got {got}")


@dataclass
class SteeringResult:
    """Algorithm 1's outcome for N pairs; K = max_steps, k = top_k clipped to V; tensors on the states' device.

    Probabilities are float64 so that ln p round-trips; ``h`` is in the input's dtype and the quantities after
    steering are measured at those returned states.
    """

    h: torch.Tensor  # (N, d) steered states
    h0: torch.Tensor  # (N, d) natural states
    success: torch.Tensor  # (N,) bool: p_{t*} >= η was reached
    steps: torch.Tensor  # (N,) long: accepted steps
    stop_reason: tuple[str, ...]  # (N,) 'reached', 'max_steps' or 'stalled'
    p_before: torch.Tensor  # (N,) float64 p_{t*}(h0)
    p_after: torch.Tensor  # (N,) float64 p_{t*}(h)
    p_trace: torch.Tensor  # (N, K+1) float64 p_{t*} at h0, then after each accepted step; NaN once the pair stops
    kl: torch.Tensor  # (N,) KL(natural ‖ steered) of the next-token distributions, nats
    top_before: torch.Tensor  # (N, k) long: most likely ids at h0
    top_after: torch.Tensor  # (N, k) long: most likely ids at h
    top_p_before: torch.Tensor  # (N, k) float64
    top_p_after: torch.Tensor  # (N, k) float64
    eta: float  # the goal probability η

    def __post_init__(self):
        if not isinstance(self.h0, torch.Tensor) or self.h0.ndim != 2:
            raise TrajectoryError(f"h0 must be (N, d); got {getattr(self.h0, 'shape', type(self.h0).__name__)}")
        n, k = len(self.h0), self.top_before.shape[-1]
        check_shape("h", self.h, tuple(self.h0.shape))
        for name in ("success", "steps", "p_before", "p_after", "kl"):
            check_shape(name, getattr(self, name), (n,))
        if self.p_trace.ndim != 2 or self.p_trace.shape[0] != n or self.p_trace.shape[1] < 2:
            raise TrajectoryError(f"p_trace must be (N, K+1) = ({n}, K+1) with K >= 1; "
                                  f"got {tuple(self.p_trace.shape)}")
        for name in ("top_before", "top_after", "top_p_before", "top_p_after"):
            check_shape(name, getattr(self, name), (n, k))
        self.stop_reason = tuple(self.stop_reason)
        if len(self.stop_reason) != n or not set(self.stop_reason) <= set(STOP_REASONS):
            raise TrajectoryError(f"stop_reason must hold {n} of {STOP_REASONS}; got {self.stop_reason[:5]}...")
        if self.success.dtype != torch.bool:
            raise TrajectoryError(f"success must be bool; got {self.success.dtype}")

    @property
    def delta(self) -> torch.Tensor:
        """(N, d) δh = h - h0, in float32 at least."""
        dtype = torch.promote_types(self.h.dtype, torch.float32)
        return self.h.to(dtype) - self.h0.to(dtype)

    @property
    def delta_norm(self) -> torch.Tensor:
        """(N,) ‖δh‖."""
        return self.delta.norm(dim=-1)

    @property
    def logp_gain(self) -> torch.Tensor:
        """(N,) float64 Δ ln p_{t*} = ln p_after - ln p_before (>= 0: accepted steps only ever increase it)."""
        return self.p_after.log() - self.p_before.log()

    @property
    def action_increment(self) -> torch.Tensor:
        """(N,) float64 ΔS = ln(½‖δh‖²) - Δ ln p_{t*}: the log-kinetic term of the displacement (mechanics.energy's
        K with δh as the velocity) plus the change of the log point-perplexity -ln p_{t*}. NaN where δh = 0."""
        norm = self.delta_norm.double()
        return torch.where(norm > 0, (0.5 * norm.square()).log() - self.logp_gain, math.nan)

    @property
    def success_rate(self) -> float:
        return float(self.success.double().mean())

    def records(self, token_text: Callable[[int], str] | None = None) -> list[dict]:
        """One JSON-able dict per pair; ``token_text`` (an id -> text decoder) adds the top tokens' texts."""
        columns = {
            "success": self.success, "steps": self.steps, "delta_norm": self.delta_norm, "p_before": self.p_before,
            "p_after": self.p_after, "logp_gain": self.logp_gain, "action_increment": self.action_increment,
            "kl": self.kl, "top_before": self.top_before, "top_p_before": self.top_p_before,
            "top_after": self.top_after, "top_p_after": self.top_p_after,
        }
        lists = {name: value.tolist() for name, value in columns.items()}
        rows = []
        for i, reason in enumerate(self.stop_reason):
            row = {"pair": i, "stop_reason": reason, **{name: values[i] for name, values in lists.items()}}
            if token_text is not None:
                row["top_before_text"] = [token_text(t) for t in row["top_before"]]
                row["top_after_text"] = [token_text(t) for t in row["top_after"]]
            rows.append(row)
        return rows


def jacobian_steer(h: torch.Tensor, target, readout: Readout, eta: float = 0.5, max_steps: int = 20,
                   line_search: LineSearch = LineSearch(), top_k: int = 10) -> SteeringResult:
    """Algorithm 1: steer each state in ``h`` (N, d) or (d,) along ĝ = ∇_h ln p_target/‖∇_h ln p_target‖ until
    p_target >= ``eta`` (success) or ``max_steps`` steps (failure), batched over the N pairs.

    Pairs that are done stop moving while the others continue. A pair also stops, 'stalled', when its gradient
    vanishes or its line search finds no acceptable step, so the loop always ends after at most ``max_steps``
    gradient evaluations.
    """
    check_range("eta", eta, low=0.0, high=1.0, low_open=True, high_open=True)
    check_count("max_steps", max_steps)
    check_count("top_k", top_k)
    if not isinstance(line_search, LineSearch):
        raise ConfigError("line_search", f"must be a LineSearch; got {type(line_search).__name__}")
    h0 = as_states(h)
    objective = Objective(readout, h0)
    x = h0.to(objective.dtype)  # (N, d) the iterate, in the compute dtype
    logits0 = objective.logits(x)  # (N, V)
    target = as_target(target, len(h0), logits0.shape[-1], h0.device)

    def evaluate(states: torch.Tensor) -> torch.Tensor:
        return target.logp(objective.logits(states))

    n, log_eta = len(x), math.log(eta)
    logp = target.logp(logits0)  # (N,) carried along the accepted steps, so the trace is monotone by construction
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    reason = torch.full((n,), STOP_REASONS.index("max_steps"), device=x.device)
    steps = torch.zeros(n, dtype=torch.long, device=x.device)
    trace = torch.full((n, max_steps + 1), math.nan, dtype=torch.float64, device=x.device)
    trace[:, 0] = logp.double().exp()
    for k in range(max_steps):
        reached = ~done & (logp >= log_eta)
        reason[reached] = STOP_REASONS.index("reached")
        done |= reached
        if done.all():
            break
        _, g, _ = objective.logp_grad(x, target)
        slope = g.norm(dim=-1)  # (N,) ‖g_k‖, the slope of ln p along ĝ_k
        movable = ~done & torch.isfinite(slope) & (slope > 0)
        u = torch.where(movable[:, None], g / slope.clamp_min(torch.finfo(x.dtype).tiny)[:, None], 0.0)
        alpha = torch.where(movable, (log_eta - logp) / slope, 0.0)  # the first-order step to ln η
        alpha = alpha.clamp(line_search.min_step, line_search.max_step)
        accepted, x, logp = line_search.search(evaluate, x, u, logp, slope, alpha, movable)
        steps += accepted
        trace[accepted, k + 1] = logp[accepted].double().exp()
        stalled = ~done & ~accepted
        reason[stalled] = STOP_REASONS.index("stalled")
        done |= stalled
    reason[~done & (logp >= log_eta)] = STOP_REASONS.index("reached")

    h_out = x.to(h0.dtype)
    logits = objective.logits(h_out.to(objective.dtype))  # measured at the returned (possibly rounded) states
    top_before, top_p_before = top_tokens(logits0, top_k)
    top_after, top_p_after = top_tokens(logits, top_k)
    return SteeringResult(
        h=h_out, h0=h0, success=reason == STOP_REASONS.index("reached"), steps=steps,
        stop_reason=tuple(STOP_REASONS[i] for i in reason.tolist()), p_before=target.logp(logits0).double().exp(),
        p_after=target.logp(logits).double().exp(), p_trace=trace, kl=kl_divergence(logits0, logits),
        top_before=top_before, top_after=top_after, top_p_before=top_p_before, top_p_after=top_p_after, eta=eta,
    )
