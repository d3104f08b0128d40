"""Is the layer-to-layer update the gradient of ONE scalar potential shared by every layer?

Model: Δx_l ≈ α_l·v_l − β_l·∇V_ψ(x_l), with α_l, β_l per layer and one V_ψ for all layers, fitted jointly.
Estimators follow scikit-learn: ``fit(train)`` returns self and sets attributes ending in ``_``;
``score(test)`` returns the per-layer R².

R² of a layer is 1 − SS_res/SS_tot pooled over tokens and dimensions, with SS_tot = Σ‖Δx_l‖²: the static null
(predicting no motion) scores exactly 0. The median over layers is the headline.
"""
from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..nn import silu_mlp, silu_mlp_input_grad
from .depth_data import DepthData


def r2_per_layer(dx: torch.Tensor, dx_hat: torch.Tensor) -> np.ndarray:
    """(S, L, d) targets and predictions -> (L,) R² against the static null."""
    res = ((dx - dx_hat) ** 2).sum(dim=(0, 2))
    tot = (dx**2).sum(dim=(0, 2)).clamp_min(1e-30)
    return (1 - res / tot).double().cpu().numpy()


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


class SharedPotentialFit:
    """Δx_l ≈ α_l v_l − β_l ∇V(x_l) with one V for all layers.

    With the default MLP potential, α, β and V_ψ are fitted jointly by AdamW on minibatches of tokens, with early
    stopping on a validation split of the training sequences. With a ``potential`` that has no trainable
    parameters (an oracle), α_l and β_l are solved in closed form per layer.
    """

    def __init__(self, hidden: int = 128, depth: int = 2, *, potential: Potential | None = None, lr: float = 3e-3,
                 batch_size: int = 512, max_epochs: int = 400, patience: int = 30, val_fraction: float = 0.2,
                 seed: int = 0, dtype: torch.dtype = torch.float32, progress: bool = False):
        self.hidden, self.depth, self.potential = hidden, depth, potential
        self.lr, self.batch_size, self.max_epochs, self.patience = lr, batch_size, max_epochs, patience
        self.val_fraction, self.seed, self.dtype, self.progress = val_fraction, seed, dtype, progress

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
        object start from the same weights and are independent (the scikit-learn rule).
        """
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
        s, sv = self._samples(train), self._samples(val)
        v2 = (s["v"] ** 2).sum(dim=(0, 2)).clamp_min(1e-30)
        alpha = nn.Parameter(((s["dx"] * s["v"]).sum(dim=(0, 2)) / v2).to(self.dtype))  # velocity-only start
        beta = nn.Parameter(torch.ones(data.n_fit_layers, dtype=self.dtype))
        scale = (s["dx"] ** 2).mean(dim=(0, 2)).clamp_min(1e-30)  # per layer: every layer weighs the same
        params = [alpha, beta, *potential.parameters()]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(2, self.patience // 3))
        gen = torch.Generator().manual_seed(self.seed)
        best, best_state, bad, history = float("inf"), None, 0, []

        def loss_of(batch):
            res = batch["dx"] - self._predict(batch, alpha, beta, potential)
            return ((res**2).mean(dim=(0, 2)) / scale).mean()

        bar = tqdm(range(self.max_epochs), desc="potential fit", disable=not self.progress, leave=False)
        for epoch in bar:
            order = torch.randperm(len(s["x"]), generator=gen)
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                loss = loss_of({k: v[idx] for k, v in s.items()})
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                val_loss = float(loss_of(sv))
            history.append(val_loss)
            plateau.step(val_loss)
            bar.set_postfix(val=f"{val_loss:.4g}")
            if val_loss < best - 1e-6:
                best, bad = val_loss, 0
                best_state = (alpha.detach().clone(), beta.detach().clone(), copy.deepcopy(potential.state_dict()))
            else:
                bad += 1
                if bad >= self.patience:
                    break
        alpha_best, beta_best, pot_state = best_state
        potential.load_state_dict(pot_state)
        self.alpha_, self.beta_, self.potential_ = alpha_best.numpy(), beta_best.numpy(), potential.eval()
        self.history_, self.best_epoch_ = history, int(np.argmin(history))
        self.n_params_ = sum(p.numel() for p in potential.parameters())
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
        return self

    @torch.no_grad()
    def predict(self, data: DepthData) -> tuple[torch.Tensor, torch.Tensor]:
        """(Δx, predicted Δx), each (S, L-1, d)."""
        s = self._samples(data)
        alpha = torch.as_tensor(self.alpha_, dtype=self.dtype)
        beta = torch.as_tensor(self.beta_, dtype=self.dtype)
        return s["dx"], self._predict(s, alpha, beta, self.potential_)

    def score(self, data: DepthData) -> np.ndarray:
        """Per-layer R² on ``data`` (median over layers: the headline)."""
        return r2_per_layer(*self.predict(data))


class VelocityOnlyFit:
    """Baseline: Δx_l ≈ α_l v_l with α_l in closed form per layer."""

    def fit(self, data: DepthData) -> VelocityOnlyFit:
        s = data.samples()
        self.alpha_ = ((s["dx"] * s["v"]).sum(dim=(0, 2)) / (s["v"] ** 2).sum(dim=(0, 2)).clamp_min(1e-30)).numpy()
        return self

    def score(self, data: DepthData) -> np.ndarray:
        s = data.samples()
        return r2_per_layer(s["dx"], torch.as_tensor(self.alpha_, dtype=s["v"].dtype)[:, None] * s["v"])


class LinearReferenceFit:
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
            Z = self._design(s, l)
            gram = Z.T @ Z
            lam = self.ridge * gram.diagonal().mean()
            self.coef_.append(torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype),
                                                 Z.T @ s["dx"][:, l].double()))
        return self

    def score(self, data: DepthData) -> np.ndarray:
        s = data.samples()
        pred = torch.stack([(self._design(s, l) @ c).to(s["dx"].dtype) for l, c in enumerate(self.coef_)], dim=1)
        return r2_per_layer(s["dx"], pred)
