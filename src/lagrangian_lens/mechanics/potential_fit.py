"""Is the layer-to-layer update the gradient of ONE scalar potential shared by every layer?

Model: Δx_l ≈ α_l·v_l − β_l·∇V_ψ(x_l), with α_l, β_l per layer and one V_ψ for all layers, fitted jointly.
Estimators follow scikit-learn: ``fit(train)`` returns self and sets attributes ending in ``_``; every one is a
:class:`StepPredictor`: ``predict(test)`` gives (Δx, predicted Δx), ``score(test)`` the per-layer R² (centred
by default) and ``scores(test)`` both R² definitions. The baselines: :class:`StaticNull` (no motion),
:class:`MeanStepFit` (each layer's mean step), :class:`VelocityOnlyFit` (inertia alone) and
:class:`LinearReferenceFit` (an unconstrained linear map per layer).

R² of a layer is 1 − SS_res/SS_tot pooled over tokens and dimensions, in two definitions (``R2_DEFINITIONS``):

* ``r2_centered``, the headline and the definition of the paper's author: SS_tot = Σ‖Δx_l − mean(Δx_l)‖², centred
  on the layer's mean step in the scored data, so reproducing the mean step earns nothing (:class:`MeanStepFit`
  scores exactly 0 on its own training data; the static null scores −n‖mean‖²/SS_tot, at most 0).
* ``r2_uncentered``: SS_tot = Σ‖Δx_l‖², against the static null, which scores exactly 0.

:func:`force_r2` is what V_ψ adds beyond inertia, and :func:`middle_band` the middle third of the layers.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..nn import silu_mlp, silu_mlp_input_grad
from .depth_data import DepthData
from .potential_solver import SolverSettings, fit_potential

R2_DEFINITIONS = ("r2_centered", "r2_uncentered")  # the headline first


def r2_per_layer(dx: torch.Tensor, dx_hat: torch.Tensor, *, centered: bool) -> np.ndarray:
    """(S, L, d) targets and predictions -> (L,) R², in float64.

    ``centered``: SS_tot about each layer's mean step in ``dx`` (``r2_centered``, the paper's definition); else
    about zero (``r2_uncentered``, against the static null).
    """
    dx, dx_hat = dx.double(), dx_hat.double()
    res = ((dx - dx_hat) ** 2).sum(dim=(0, 2))  # (L,)
    ref = dx - dx.mean(dim=0, keepdim=True) if centered else dx
    tot = (ref**2).sum(dim=(0, 2)).clamp_min(1e-30)  # (L,)
    return (1 - res / tot).cpu().numpy()


def r2_scores(dx: torch.Tensor, dx_hat: torch.Tensor) -> dict[str, np.ndarray]:
    """Both definitions: {"r2_centered": (L,), "r2_uncentered": (L,)} from (S, L, d) targets and predictions."""
    return {name: r2_per_layer(dx, dx_hat, centered=name == "r2_centered") for name in R2_DEFINITIONS}


def force_r2(r2_fit: np.ndarray, r2_velocity: np.ndarray) -> np.ndarray:
    """(R²_fit − R²_velocity) / (1 − R²_velocity) per layer: the share of the variance the velocity-only baseline
    leaves unexplained that the fit explains (1: all of it; 0: nothing beyond inertia; < 0: worse than inertia).

    It equals 1 − SS_res(fit) / SS_res(velocity only), so both R² definitions give the same value.
    """
    r2_fit, r2_velocity = np.asarray(r2_fit, dtype=float), np.asarray(r2_velocity, dtype=float)
    return (r2_fit - r2_velocity) / np.maximum(1 - r2_velocity, 1e-30)


def middle_band(n_layers: int) -> slice:
    """The middle third of ``n_layers`` fit layers, [⌊n/3⌋, ⌈2n/3⌉) (the STP paper quotes its mean for GPT-2):
    symmetric about the middle and never empty, e.g. layers 4-7 of 12, both of 2, the one of 1."""
    return slice(n_layers // 3, -(-2 * n_layers // 3))


class StepPredictor:
    """What every estimator of the step shares: ``predict(data)`` -> (Δx, predicted Δx), each (S, L, d), and
    R² from it."""

    def predict(self, data: DepthData) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define predict(data) -> (Δx, predicted Δx)")

    def score(self, data: DepthData, *, centered: bool = True) -> np.ndarray:
        """Per-layer R² on ``data``: ``r2_centered`` by default (the headline; median over layers), else
        ``r2_uncentered``."""
        return r2_per_layer(*self.predict(data), centered=centered)

    def scores(self, data: DepthData) -> dict[str, np.ndarray]:
        """Per-layer R² on ``data`` under both definitions, keyed by ``R2_DEFINITIONS``."""
        return r2_scores(*self.predict(data))


def profile_shape(r2: np.ndarray, tol: float = 0.05) -> str:
    """A descriptive label of an R² profile over layers, by this rule (thirds of the layers, tolerance ``tol``):
    ``uniform`` if max − min <= tol; ``bathtub`` if the middle third's mean is below both outer thirds' by more
    than tol; ``decaying`` if the Spearman correlation with depth is <= −0.7 and the last third is below the
    first by more than tol; ``other`` otherwise."""
    r2 = np.asarray(r2, dtype=float)
    if r2.max() - r2.min() <= tol:
        return "uniform"
    if len(r2) < 3:
        return "other"
    thirds = np.array_split(r2, 3)
    first, mid, last = (float(t.mean()) for t in thirds)
    if mid < min(first, last) - tol:
        return "bathtub"
    ranks = np.argsort(np.argsort(r2))
    rho = np.corrcoef(np.arange(len(r2)), ranks)[0, 1]
    if rho <= -0.7 and last < first - tol:
        return "decaying"
    return "other"


@runtime_checkable
class Potential(Protocol):
    """What :class:`SharedPotentialFit` needs of a potential: its gradient, and any force it adds beyond one.

    ``grad(x, aux)``: ∇V at states x (S, L, d), with per-sample auxiliary inputs ``aux`` (S, L, k) or None.
    ``nonconservative(x, v)``: an extra force F(x, v) (S, L, d) inside the β bracket, or None for a pure
    potential. :class:`PotentialBase` supplies the None; ``potential_forms.ParametricPotential`` has its own.
    A potential with trainable parameters (an ``nn.Module``) is fitted jointly with α and β; one without is an
    oracle, and only α and β are solved for.
    """

    def grad(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        ...

    def nonconservative(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        ...


class PotentialBase(nn.Module):
    """A conservative potential: subclasses define ``grad``; there is no non-conservative force."""

    def grad(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define grad(x, aux) -> ∇V(x), same shape as x")

    def nonconservative(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        return None


class MLPPotential(PotentialBase):
    """V_ψ(x): an MLP to one scalar, with its input-gradient in closed form (no double backward)."""

    def __init__(self, d: int, hidden: int = 128, depth: int = 2, init_scale: float = 1e-2):
        super().__init__()
        widths = [d] + [hidden] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.out = nn.Linear(widths[-1], 1, bias=False)
        nn.init.normal_(self.out.weight, std=init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu_mlp(self.hidden, self.out, x)  # (..., d) -> (...,)

    def grad(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        return silu_mlp_input_grad(self.hidden, self.out.weight, x)  # (..., d)


class KnownPotential(PotentialBase):
    """A fixed potential given by its gradient function grad_fn(x, aux) (e.g. an SPLM's own V_θ with its ξ)."""

    def __init__(self, grad_fn):
        super().__init__()
        self.grad_fn = grad_fn

    def grad(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        return self.grad_fn(x, aux)


def _check_potential(potential) -> None:
    if not isinstance(potential, Potential) or not isinstance(potential, nn.Module):
        raise ConfigError("potential", (
            f"got a {type(potential).__name__}, which is not an nn.Module with grad(x, aux) and "
            "nonconservative(x, v) (the Potential protocol). Fix: subclass "
            "lagrangian_lens.mechanics.potential_fit.PotentialBase and define grad, or wrap a gradient function "
            "as KnownPotential(grad_fn)."))


def _broadcast_aux(aux, x):
    return None if aux is None else aux[:, None, :].expand(*x.shape[:-1], aux.shape[-1])


class SharedPotentialFit(StepPredictor):
    """Δx_l ≈ α_l v_l − β_l ∇V(x_l) with one V for all layers.

    With a potential that has parameters (the default MLP V_ψ, or a given one), ψ is trained by minibatch AdamW
    over tokens with early stopping on a validation split of the training sequences; the machinery is in
    :mod:`~lagrangian_lens.mechanics.potential_solver`. With a ``potential`` that has no trainable parameters (an
    oracle), α_l and β_l are solved in closed form per layer.

    Optimisation settings. The defaults are the fastest measured by ``benchmarks/bench_potential.py --compare``
    at the test R² of the original fit (which is ``schedule="plateau", batch_size=512, tol=0`` with 300 epochs);
    the values used are recorded on the fitted estimator as ``settings_``.

    * ``solver``: ``"joint"`` (α, β and ψ trained together by AdamW, α from the velocity-only solve and β = 1 at
      the start) or ``"varpro"`` (variable projection: α_l, β_l solved in closed form for the current V_ψ on
      every minibatch, only ψ trained). Variable projection reached the same R² but needed more epochs to meet
      the stopping rule on the benchmark, so it is an option, not the default.
    * ``lr``, ``batch_size`` (tokens per step, each with all its layers), ``max_epochs``: AdamW's settings. Small
      batches win here: the fit is limited by the number of optimiser steps, not by gradient noise.
    * ``schedule``: ``"anneal"`` (constant ``lr`` until the convergence test passes, then a cosine decay to 0
      over ``decay_fraction`` × the epochs run so far, then stop), ``"plateau"`` (halve ``lr`` when the
      validation loss stalls), ``"cosine"`` or ``"onecycle"`` over ``max_epochs``, or ``"constant"``.
    * ``tol``, ``window``: the convergence test, passed when the best validation loss improved by less than
      ``tol`` (relative) over the last ``window`` optimiser steps, rounded up to whole epochs (steps rather than
      epochs, so that a small data set is not called converged after a handful of steps); ``tol=0`` turns it
      off. Outside ``"anneal"`` it stops the fit.
    * ``patience``: stop after this many epochs without a better validation loss (whatever the schedule).
    * ``polish_steps``: iterations of a full-batch L-BFGS polish of ψ at the end (kept only if the validation
      loss drops); 0, the default, skips it: after annealing it bought no R² for its time.
    """

    def __init__(self, hidden: int = 128, depth: int = 2, *, potential: Potential | None = None, lr: float = 3e-3,
                 batch_size: int = 64, max_epochs: int = 400, patience: int = 30, val_fraction: float = 0.2,
                 seed: int = 0, dtype: torch.dtype = torch.float32, progress: bool = False, solver: str = "joint",
                 schedule: str = "anneal", tol: float = 0.02, window: int = 500, decay_fraction: float = 0.5,
                 polish_steps: int = 0):
        self.hidden, self.depth, self.potential = hidden, depth, potential
        self.lr, self.batch_size, self.max_epochs, self.patience = lr, batch_size, max_epochs, patience
        self.val_fraction, self.seed, self.dtype, self.progress = val_fraction, seed, dtype, progress
        self.solver, self.schedule, self.tol, self.window = solver, schedule, tol, window
        self.decay_fraction, self.polish_steps = decay_fraction, polish_steps
        self._settings()  # refuse bad settings before any work

    def _settings(self) -> SolverSettings:
        settings = SolverSettings(solver=self.solver, lr=self.lr, batch_size=self.batch_size,
                                  max_epochs=self.max_epochs, patience=self.patience, schedule=self.schedule,
                                  tol=self.tol, window=self.window, decay_fraction=self.decay_fraction,
                                  polish_steps=self.polish_steps, seed=self.seed)
        settings.validate()
        return settings

    def _samples(self, data: DepthData) -> dict[str, torch.Tensor]:
        return {k: v.to(self.dtype) for k, v in data.samples().items()}

    def _predict(self, s: dict, alpha, beta, potential) -> torch.Tensor:
        force = -potential.grad(s["x"], _broadcast_aux(s.get("aux"), s["x"]))
        extra = potential.nonconservative(s["x"], s["v"])
        if extra is not None:  # augmentations of the functional-form menu
            force = force + extra
        return alpha[:, None] * s["v"] + beta[:, None] * force

    def fit(self, data: DepthData) -> SharedPotentialFit:
        """Fit α, β (and V) to ``data``; the fitted potential is ``potential_``.

        A ``potential`` given to the constructor is copied first, never trained in place: two fits with the same
        object start from the same weights and are independent (the scikit-learn rule). Besides ``alpha_``,
        ``beta_``, ``potential_``, ``history_`` (validation loss per epoch), ``best_epoch_`` and ``n_params_``,
        a trained fit records ``settings_`` (the optimisation settings used), ``stop_reason_`` and ``trace_``:
        (seconds since the start, median validation R²) per epoch.
        """
        settings = self._settings()
        torch.manual_seed(self.seed)
        d = data.states.shape[-1]
        if self.potential is not None:
            _check_potential(self.potential)
            potential = copy.deepcopy(self.potential)
        else:
            potential = MLPPotential(d, self.hidden, self.depth)
        potential = potential.to(self.dtype)
        if not any(p.requires_grad for p in potential.parameters()):
            return self._fit_closed_form(data, potential)
        train, val = data.split(self.val_fraction, self.seed) if data.n_sequences > 1 else (data, data)
        result = fit_potential(potential, self._samples(train), self._samples(val), data.n_fit_layers, settings,
                               progress=self.progress)
        self.alpha_, self.beta_, self.potential_ = result.alpha, result.beta, potential.eval()
        self.history_, self.best_epoch_ = result.history, int(np.argmin(result.history))
        self.n_params_ = sum(p.numel() for p in potential.parameters())
        self.settings_, self.stop_reason_, self.trace_ = asdict(settings), result.stop_reason, result.trace
        return self

    def _fit_closed_form(self, data: DepthData, potential) -> SharedPotentialFit:
        s = self._samples(data)
        with torch.no_grad():
            g = -potential.grad(s["x"], _broadcast_aux(s.get("aux"), s["x"]))  # (S, L, d)
        alpha, beta = [], []
        for l in range(data.n_fit_layers):
            X = torch.stack([s["v"][:, l].reshape(-1), g[:, l].reshape(-1)], dim=1).double()  # (S·d, 2)
            coef = torch.linalg.lstsq(X, s["dx"][:, l].reshape(-1, 1).double()).solution.squeeze(1)
            alpha.append(float(coef[0]))
            beta.append(float(coef[1]))
        self.alpha_, self.beta_ = np.array(alpha), np.array(beta)
        self.potential_, self.history_, self.best_epoch_, self.n_params_ = potential, [], 0, 0
        self.settings_, self.stop_reason_, self.trace_ = {"solver": "closed_form"}, "closed_form", []
        return self

    @torch.no_grad()
    def predict(self, data: DepthData) -> tuple[torch.Tensor, torch.Tensor]:
        """(Δx, predicted Δx), each (S, L-1, d)."""
        s = self._samples(data)
        alpha = torch.as_tensor(self.alpha_, dtype=self.dtype)
        beta = torch.as_tensor(self.beta_, dtype=self.dtype)
        return s["dx"], self._predict(s, alpha, beta, self.potential_)


class StaticNull(StepPredictor):
    """Baseline: no motion, Δx_l ≈ 0. Scores exactly 0 uncentred, and −n‖mean step‖²/SS_tot centred."""

    def fit(self, data: DepthData) -> StaticNull:
        return self

    def predict(self, data: DepthData) -> tuple[torch.Tensor, torch.Tensor]:
        dx = data.samples()["dx"]  # (S, L, d)
        return dx, torch.zeros_like(dx)


class MeanStepFit(StepPredictor):
    """Baseline: each layer's mean training step, Δx_l ≈ μ_l. Scores exactly 0 centred on its training data."""

    def fit(self, data: DepthData) -> MeanStepFit:
        self.mean_ = data.samples()["dx"].double().mean(dim=0)  # (L, d)
        return self

    def predict(self, data: DepthData) -> tuple[torch.Tensor, torch.Tensor]:
        dx = data.samples()["dx"]  # (S, L, d)
        return dx, self.mean_.expand(dx.shape)


class VelocityOnlyFit(StepPredictor):
    """Baseline: Δx_l ≈ α_l v_l with α_l in closed form per layer."""

    def fit(self, data: DepthData) -> VelocityOnlyFit:
        s = data.samples()
        self.alpha_ = ((s["dx"] * s["v"]).sum(dim=(0, 2)) / (s["v"] ** 2).sum(dim=(0, 2)).clamp_min(1e-30)).numpy()
        return self

    def predict(self, data: DepthData) -> tuple[torch.Tensor, torch.Tensor]:
        s = data.samples()
        return s["dx"], torch.as_tensor(self.alpha_, dtype=s["v"].dtype)[:, None] * s["v"]


class LinearReferenceFit(StepPredictor):
    """Upper reference: per layer an unconstrained ridge map Δx_l ≈ A_l x_l + B_l v_l + c_l."""

    def __init__(self, ridge: float = 1e-3):
        self.ridge = ridge

    @staticmethod
    def _design(s, l):
        return torch.cat([s["x"][:, l], s["v"][:, l], torch.ones_like(s["x"][:, l, :1])], dim=1).double()

    def fit(self, data: DepthData) -> LinearReferenceFit:
        s = data.samples()
        self.coef_ = []
        for l in range(data.n_fit_layers):
            Z = self._design(s, l)  # (S, 2d+1)
            gram = Z.T @ Z
            lam = self.ridge * gram.diagonal().mean()
            self.coef_.append(torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype),
                                                 Z.T @ s["dx"][:, l].double()))
        return self

    def predict(self, data: DepthData) -> tuple[torch.Tensor, torch.Tensor]:
        s = data.samples()
        return s["dx"], torch.stack([self._design(s, l) @ c for l, c in enumerate(self.coef_)], dim=1)
