"""How :class:`~lagrangian_lens.mechanics.potential_fit.SharedPotentialFit` trains a potential with parameters.

The model is Δx_l ≈ α_l·v_l + β_l·f(x_l, v_l), with the force f = −∇V_ψ(x) (+ a potential's non-conservative
extra). Two solvers:

* ``joint`` (the default): α, β and ψ together by AdamW, α from the velocity-only solve and β = 1 at the start.
* ``varpro``, variable projection: for a fixed V_ψ the model is linear in (α_l, β_l), so each layer's pair is a
  2×2 least-squares solve (normal equations summed over the minibatch), and the optimiser trains ψ alone. By the
  envelope theorem the gradient of the projected loss equals the gradient at the fixed, optimal pair, so the
  solved pair is detached. On ``benchmarks/bench_potential.py --compare`` it reached the same R² as ``joint``
  but took more epochs to meet the stopping rule, which is why it is not the default.

Either solver runs minibatch AdamW epochs over tokens (each token carries all its layers, shuffled every epoch)
under a learning-rate schedule, keeps the best epoch on the validation split, and stops after ``patience``
epochs without improvement or on the convergence test: the best validation loss improved by less than ``tol``
(relative) over the last ``window`` optimiser steps, rounded up to whole epochs. Under the default ``anneal``
schedule the convergence test does not stop the fit but starts a cosine decay of the learning rate to zero over
``decay_fraction`` of the epochs run so far, after which the fit stops: a constant rate finds the basin fast, the
decay settles into it. An optional full-batch L-BFGS polish of ψ follows, kept only if it lowers the validation
loss. With ``varpro`` or a polish, the final α, β are the exact least-squares solve on the whole training split.
"""
from __future__ import annotations

import copy
import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError

SOLVERS = ("varpro", "joint")
SCHEDULES = ("anneal", "plateau", "onecycle", "cosine", "constant")


@dataclass
class SolverSettings:
    """The optimisation settings of one fit (recorded on the fitted estimator as ``settings_``)."""

    solver: str = "joint"
    lr: float = 3e-3
    batch_size: int = 64
    max_epochs: int = 400
    patience: int = 30
    schedule: str = "anneal"
    tol: float = 0.02
    window: int = 500
    decay_fraction: float = 0.5
    polish_steps: int = 0
    seed: int = 0

    def validate(self) -> None:
        """Raise ConfigError naming the first setting outside its range, and how to fix it."""
        if self.solver not in SOLVERS:
            raise ConfigError("solver", f"must be one of {SOLVERS}, got {self.solver!r}. Fix: leave it at 'joint' "
                                        "unless comparing solvers")
        if self.schedule not in SCHEDULES:
            raise ConfigError("schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}. Fix: 'anneal' (the "
                                          "default) or 'plateau' (the original fit's)")
        for name in ("batch_size", "max_epochs", "patience", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr!r}")
        if not 0 <= self.tol < 1:
            raise ConfigError("tol", f"is a relative improvement in [0, 1) (0 turns the convergence test off), "
                                     f"got {self.tol!r}")
        if self.schedule == "anneal" and self.tol == 0:
            raise ConfigError("tol", "schedule='anneal' starts its decay when the convergence test passes, which "
                                     "tol=0 turns off. Fix: give tol > 0 (e.g. 0.02), or another schedule")
        if not 0 < self.decay_fraction <= 10:
            raise ConfigError("decay_fraction", f"must be in (0, 10], got {self.decay_fraction!r}")
        steps = self.polish_steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ConfigError("polish_steps", f"must be an integer >= 0 (0 skips the polish), got {self.polish_steps!r}")


@dataclass
class SolverResult:
    alpha: np.ndarray  # (L,)
    beta: np.ndarray  # (L,)
    history: list[float]  # validation loss per epoch
    trace: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, median val R²)
    polished: bool = False  # whether the L-BFGS polish was kept
    stop_reason: str = "max_epochs"


def forces(potential, s: dict) -> torch.Tensor:
    """f = −∇V(x) (+ the potential's non-conservative force), (S, L, d) from samples x, v (S, L, d)."""
    aux = s.get("aux")
    if aux is not None:  # per token -> per token and layer
        aux = aux[:, None, :].expand(*s["x"].shape[:-1], aux.shape[-1])
    f = -potential.grad(s["x"], aux)
    extra = potential.nonconservative(s["x"], s["v"])
    return f if extra is None else f + extra


def normal_equations(v: torch.Tensor, f: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer, the 2×2 Gram matrix of (v, f) and its right-hand side against Δx, summed over samples and
    dimensions, in float64: (L, 2, 2) and (L, 2) from (S, L, d) inputs."""
    v, f, dx = v.double(), f.double(), dx.double()
    vv, vf, ff = (v * v).sum((0, 2)), (v * f).sum((0, 2)), (f * f).sum((0, 2))  # (L,) each
    gram = torch.stack([torch.stack([vv, vf], -1), torch.stack([vf, ff], -1)], -2)  # (L, 2, 2)
    rhs = torch.stack([(v * dx).sum((0, 2)), (f * dx).sum((0, 2))], -1)  # (L, 2)
    return gram, rhs


def solve_coefficients(gram: torch.Tensor, rhs: torch.Tensor, ridge: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, β), each (L,), minimising Σ‖Δx − αv − βf‖² per layer from :func:`normal_equations`.

    The system is scaled to unit diagonal first so the tiny ridge is relative: it only matters when f vanishes
    or is parallel to v (then β -> 0 rather than a division by zero), and is invisible otherwise.
    """
    d = gram.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).sqrt()  # (L, 2)
    scaled = gram / (d[:, :, None] * d[:, None, :]) + ridge * torch.eye(2, dtype=gram.dtype)
    coef = torch.linalg.solve(scaled, (rhs / d).unsqueeze(-1)).squeeze(-1) / d  # (L, 2)
    return coef[:, 0], coef[:, 1]


def _loss_parts(s: dict, f: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per layer residual sum of squares, (L,)."""
    res = s["dx"] - alpha[:, None].to(f.dtype) * s["v"] - beta[:, None].to(f.dtype) * f  # (S, L, d)
    return (res**2).sum((0, 2))


class _Stopper:
    """Best-epoch tracking with patience, and the convergence test: the best validation loss improved by less
    than ``tol`` (relative) over the last ``window`` epochs (at least ``window`` more before it is first taken)."""

    def __init__(self, patience: int, tol: float, window: int):
        self.patience, self.tol, self.window = patience, tol, window
        self.best, self.bad, self.history = math.inf, 0, []

    def update(self, loss: float) -> bool:
        """Record an epoch's loss; True if it is the best so far."""
        self.history.append(loss)
        improved = loss < self.best - 1e-6  # the loss is normalised per layer, so an absolute margin
        self.best, self.bad = (loss, 0) if improved else (self.best, self.bad + 1)
        return improved

    @property
    def out_of_patience(self) -> bool:
        return self.bad >= self.patience

    @property
    def converged(self) -> bool:
        h, w = self.history, self.window
        if self.tol <= 0 or len(h) < 2 * w:
            return False
        before, recent = min(h[:-w]), min(h[-w:])
        return before - recent < self.tol * before


def _scheduler(opt, settings: SolverSettings, steps_per_epoch: int):
    """(per-step scheduler or None, per-epoch plateau scheduler or None); ``anneal`` is driven by the loop."""
    total = settings.max_epochs * steps_per_epoch
    if settings.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=total, pct_start=0.15), None
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, total, eta_min=settings.lr * 1e-3), None
    if settings.schedule == "plateau":
        return None, torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(2, settings.patience // 3))
    return None, None


def fit_potential(potential, s: dict, sv: dict, n_layers: int, settings: SolverSettings,
                  progress: bool = False) -> SolverResult:
    """Train ``potential`` in place on training samples ``s`` with early stopping on ``sv`` (dicts of
    (S, L, d) tensors x, v, dx and optional aux (S, k)); returns the final α, β and the history."""
    start = time.perf_counter()
    varpro, anneal = settings.solver == "varpro", settings.schedule == "anneal"
    dtype = s["x"].dtype
    scale = (s["dx"] ** 2).mean(dim=(0, 2)).clamp_min(1e-30)  # (L,): every layer weighs the same
    dxv = sv["dx"].double()
    val_tot = ((dxv - dxv.mean(0)) ** 2).sum((0, 2)).clamp_min(1e-30)  # (L,) for the validation R² (centred)
    v2 = (s["v"] ** 2).sum(dim=(0, 2)).clamp_min(1e-30)
    alpha = torch.nn.Parameter(((s["dx"] * s["v"]).sum(dim=(0, 2)) / v2).to(dtype))  # velocity-only start
    beta = torch.nn.Parameter(torch.ones(n_layers, dtype=dtype))
    params = [p for p in potential.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params if varpro else [alpha, beta, *params], lr=settings.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(s["x"]) / settings.batch_size)
    per_step, plateau = _scheduler(opt, settings, steps_per_epoch)
    gen = torch.Generator().manual_seed(settings.seed)
    # The window is counted in optimiser steps, not epochs: progress per epoch grows with the data, so a window of
    # epochs would call a small data set converged after a handful of steps.
    stopper = _Stopper(settings.patience, settings.tol, max(1, math.ceil(settings.window / steps_per_epoch)))
    best_state, trace, reason, decay = None, [], "max_epochs", None  # decay: (first epoch, length) once annealing

    def validate(a, b) -> tuple[float, np.ndarray]:
        with torch.no_grad():
            rss = _loss_parts(sv, forces(potential, sv), a, b).double()  # (L,)
        n = sv["x"].shape[0] * sv["x"].shape[2]
        return float((rss / n / scale.double()).mean()), (1 - rss / val_tot).numpy()

    bar = tqdm(range(settings.max_epochs), desc="potential fit", disable=not progress, leave=False)
    for epoch in bar:
        order = torch.randperm(len(s["x"]), generator=gen)
        gram_sum, rhs_sum = 0.0, 0.0
        for step, i in enumerate(range(0, len(order), settings.batch_size)):
            if decay is not None:  # cosine from lr to 0 over the decay epochs
                done = min(1.0, (epoch - decay[0] + step / steps_per_epoch) / decay[1])
                for group in opt.param_groups:
                    group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * done))
            idx = order[i:i + settings.batch_size]
            batch = {k: t[idx] for k, t in s.items()}
            f = forces(potential, batch)  # (B, L, d), differentiable in ψ
            if varpro:
                gram, rhs = normal_equations(batch["v"], f.detach(), batch["dx"])
                gram_sum, rhs_sum = gram_sum + gram, rhs_sum + rhs  # running sums: the epoch's α, β for validation
                a, b = solve_coefficients(gram, rhs)
            else:
                a, b = alpha, beta
            loss = (_loss_parts(batch, f, a, b) / (len(idx) * f.shape[-1]) / scale).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if per_step is not None:
                per_step.step()
        a, b = solve_coefficients(gram_sum, rhs_sum) if varpro else (alpha.detach(), beta.detach())
        val_loss, val_r2 = validate(a, b)
        trace.append((time.perf_counter() - start, float(np.median(val_r2))))
        if plateau is not None:
            plateau.step(val_loss)
        bar.set_postfix(val=f"{val_loss:.4g}")
        if stopper.update(val_loss):
            best_state = (copy.deepcopy(potential.state_dict()), alpha.detach().clone(), beta.detach().clone())
        if stopper.out_of_patience:
            reason = "patience"
            break
        if anneal and decay is None and stopper.converged:  # plateau at full lr: anneal for a share of the run
            decay = (epoch + 1, max(2, math.ceil(settings.decay_fraction * (epoch + 1))))
        elif decay is not None and epoch + 1 >= sum(decay):
            reason = "annealed"
            break
        elif not anneal and stopper.converged:
            reason = "converged"
            break
    state, alpha_best, beta_best = best_state
    potential.load_state_dict(state)
    polished = False
    if settings.polish_steps > 0:
        polished = _polish(potential, s, sv, scale, settings.polish_steps, validate, stopper.best)
    if varpro or polished:  # α, β for the final V: the exact least-squares solve on the whole training split
        with torch.no_grad():
            a, b = solve_coefficients(*normal_equations(s["v"], forces(potential, s), s["dx"]))
    else:
        a, b = alpha_best, beta_best
    if polished:
        trace.append((time.perf_counter() - start, float(np.median(validate(a, b)[1]))))
    return SolverResult(a.to(dtype).numpy(), b.to(dtype).numpy(), stopper.history, trace, polished, reason)


def _polish(potential, s, sv, scale, steps, validate, best_val) -> bool:
    """Full-batch L-BFGS on ψ with (α, β) projected out; reverted unless the validation loss drops."""
    params = [p for p in potential.parameters() if p.requires_grad]
    saved = copy.deepcopy(potential.state_dict())
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=0.0, tolerance_change=0.0)
    n = s["x"].shape[0] * s["x"].shape[2]

    def closure():
        opt.zero_grad(set_to_none=True)
        f = forces(potential, s)
        with torch.no_grad():
            a, b = solve_coefficients(*normal_equations(s["v"], f.detach(), s["dx"]))
        loss = (_loss_parts(s, f, a, b) / n / scale).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        a, b = solve_coefficients(*normal_equations(s["v"], forces(potential, s), s["dx"]))
    if validate(a, b)[0] < best_val:
        return True
    potential.load_state_dict(saved)
    return False
