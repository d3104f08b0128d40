"""The functional-form menu: parametric shared potentials on r = ‖W(x − c)‖ (learned centre c, optional learned
diagonal metric W), and two non-conservative augmentations, each a drop-in ``potential`` for
``SharedPotentialFit``. Gradients come from autograd (the forms are cheap).

Forms (A, s, k, ... are learned and kept positive with softplus where the form needs it):

* harmonic         V = ½ k r²
* gaussian         V = m·υ²·(1 − exp(−κ² r²))          (m·υ² learned as one amplitude)
* morse            V = D·(1 − exp(−a (r − r₀)))²
* lorentzian       V = A·(1 − 1/(1 + (r/s)²))
* log_saturation   V = A·log(1 + (r/s)²)
* weibull          V = A·(1 − exp(−(r/s)^k))
* power            V = A·r^p

Augmentations add a force that no potential has, inside the β bracket (Δx = αv + β(−∇V + F)):

* helmholtz: F = Ω·x with Ω = K − Kᵀ antisymmetric;
* gauge: F = B(x)·v with B antisymmetric: ``constant`` B₀, ``rank1`` B₀ + (a·x)B₁, ``rank2`` B₀ + Σ_{i≤2}(a_i·x)B_i.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FORMS = ("harmonic", "gaussian", "morse", "lorentzian", "log_saturation", "weibull", "power")
GAUGES = ("none", "constant", "rank1", "rank2")


def _pos(p: torch.Tensor) -> torch.Tensor:
    return F.softplus(p) + 1e-6


class ParametricPotential(nn.Module):
    def __init__(self, d: int, form: str, metric: bool = False, helmholtz: bool = False, gauge: str = "none"):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        if gauge not in GAUGES:
            raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}")
        self.form, self.gauge = form, gauge
        self.centre = nn.Parameter(torch.zeros(d))
        self.log_metric = nn.Parameter(torch.zeros(d)) if metric else None
        self.p = nn.Parameter(torch.zeros(3))  # form parameters (raw): amplitude, scale, shape
        self.skew = nn.Parameter(torch.zeros(d, d)) if helmholtz else None
        n_b = {"none": 0, "constant": 1, "rank1": 2, "rank2": 3}[gauge]
        self.b = nn.Parameter(torch.zeros(n_b, d, d)) if n_b else None
        self.a = nn.Parameter(torch.randn(max(n_b - 1, 0), d) * 0.01) if n_b > 1 else None

    def radius(self, x: torch.Tensor) -> torch.Tensor:
        z = x - self.centre
        if self.log_metric is not None:
            z = z * self.log_metric.exp()
        return (z * z).sum(-1).clamp_min(1e-12).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.radius(x)
        amp, scale, shape = _pos(self.p[0]), _pos(self.p[1]), self.p[2]
        if self.form == "harmonic":
            return 0.5 * amp * r**2
        if self.form == "gaussian":
            return amp * (1 - torch.exp(-(scale * r) ** 2))
        if self.form == "morse":
            return amp * (1 - torch.exp(-scale * (r - shape))) ** 2
        if self.form == "lorentzian":
            return amp * (1 - 1 / (1 + (r / scale) ** 2))
        if self.form == "log_saturation":
            return amp * torch.log1p((r / scale) ** 2)
        if self.form == "weibull":
            return amp * (1 - torch.exp(-((r / scale) ** (1 + _pos(shape)))))
        return amp * r ** (1 + _pos(shape))  # power, exponent > 1 keeps the force finite at the centre

    def grad(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        with torch.enable_grad():
            x_var = x.detach().requires_grad_(True) if not x.requires_grad else x
            g, = torch.autograd.grad(self(x_var).sum(), x_var, create_graph=torch.is_grad_enabled())
        return g

    def nonconservative(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        """The augmentations' force F(x, v), or None."""
        force = None
        if self.skew is not None:
            force = x @ (self.skew - self.skew.T).T
        if self.b is not None:
            B = self.b - self.b.transpose(1, 2)  # (n_b, d, d) antisymmetric
            gauge = v @ B[0].T
            for i in range(1, len(B)):
                gauge = gauge + (x @ self.a[i - 1])[..., None] * (v @ B[i].T)
            force = gauge if force is None else force + gauge
        return force

    @torch.no_grad()
    def augmentation_norms(self) -> dict[str, float]:
        out = {}
        if self.skew is not None:
            out["helmholtz_omega_fro"] = float((self.skew - self.skew.T).norm())
        if self.b is not None:
            out["gauge_b_fro"] = float((self.b - self.b.transpose(1, 2)).norm())
        return out
