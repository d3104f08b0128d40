"""Quantities that need the model's read-out h -> logits: the log-Euler–Lagrange residual and the
neighbouring-attractor test. The read-out is passed in as a callable, so these stay pure functions.

Log-Euler–Lagrange. With L = ln(½‖v‖²) + ln p(x | h), ∂L/∂v = 2v/‖v‖² and ∂L/∂h = ∇_h ln p(x | h), so on
a stationary path p_{t+1} - p_t = ∇_h ln p(x_t | h_t) with p_t = 2v_t/‖v_t‖². The residual of a step is
r_t = (p_{t+1} - p_t) - ∇_h ln p(x_t | h_t), reported as ‖r_t‖ / (‖p_{t+1} - p_t‖ + ‖∇‖) ∈ [0, 1]:
0 when the equation holds, 1 when the two sides are anti-parallel, about 0.7 for unrelated directions.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Readout = Callable[[torch.Tensor], torch.Tensor]


def logprob_gradients(h: torch.Tensor, targets: torch.Tensor, readout: Readout, chunk: int = 256) -> torch.Tensor:
    """(N, d) exact gradients ∇_h ln p(targets | h) through the read-out, by autograd, in chunks of rows."""
    grads = []
    with torch.enable_grad():
        for s in range(0, h.shape[0], chunk):
            x = h[s:s + chunk].detach().requires_grad_(True)
            z = readout(x)
            logp = torch.log_softmax(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, dim=-1)
            picked = logp.gather(-1, targets[s:s + chunk, None].to(logp.device)).sum()
            grads.append(torch.autograd.grad(picked, x)[0].detach())
    return torch.cat(grads) if grads else h.new_zeros(h.shape)


def log_el_terms(h: torch.Tensor, grad: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both sides of the log-Euler–Lagrange equation at positions t = 1..T-2, compared four ways, each (T-2,).

    With Δp_t = p_{t+1} − p_t and g_t = ∇_h ln p(x_t | h_t):

    * ``plus``: ‖Δp − g‖ / (‖Δp‖ + ‖g‖), the residual of Δp = +g (Prop. C.1 of the energy paper);
    * ``minus``: ‖Δp + g‖ / (‖Δp‖ + ‖g‖), the residual of Δp = −g (the sign in the proof of Thm. D.1);
    * ``cos``: cos(Δp, g), +1 when the sides align, −1 when they oppose;
    * ``scale``: ‖Δp‖ / ‖g‖, their size ratio;

    plus ``ok``, which residuals are defined: both v_t and v_{t+1} non-zero (``valid`` (T-1,) marks those).
    """
    h, grad = h.double(), grad.double()
    v = h[1:] - h[:-1]  # (T-1, d): v_t for t = 1..T-1
    sq = (v * v).sum(-1, keepdim=True).clamp_min(1e-300)
    p = 2 * v / sq  # canonical momentum of the log-Lagrangian
    dp = p[1:] - p[:-1]  # (T-2, d) at t = 1..T-2
    g = grad[1:-1]
    dp_norm, g_norm = dp.norm(dim=-1), g.norm(dim=-1)
    total = (dp_norm + g_norm).clamp_min(1e-300)
    ok = valid[1:] & valid[:-1]
    zero = torch.zeros_like(dp_norm)
    terms = {"plus": (dp - g).norm(dim=-1) / total, "minus": (dp + g).norm(dim=-1) / total,
             "cos": (dp * g).sum(-1) / (dp_norm * g_norm).clamp_min(1e-300), "scale": dp_norm / g_norm.clamp_min(1e-300)}
    return {name: torch.where(ok, value, zero) for name, value in terms.items()} | {"ok": ok}


def log_el_residual(h: torch.Tensor, grad: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative residuals (T-2,) of Δp = +∇_h ln p at positions t = 1..T-2, and which of them are defined.

    ``grad`` (T, d) is ∇_h ln p(x_t | h_t) at every position; ``valid`` (T-1,) marks non-zero velocities.
    A residual needs both v_t and v_{t+1}. See :func:`log_el_terms` for the other sign and the comparisons.
    """
    terms = log_el_terms(h, grad, valid)
    return terms["plus"], terms["ok"]


@torch.no_grad()
def logit_displacement_error(h0: torch.Tensor, h1: torch.Tensor, readout: Readout, weight: torch.Tensor,
                             chunk: int = 256) -> torch.Tensor:
    """(N,) ‖Δz − W·Δh‖ / ‖Δz‖ for steps h0 -> h1 (N, d), with z = readout(h) and W (V, d) the unembedding.

    Prop. B.1 of the energy paper: the logits move by exactly W·Δh when the read-out is a bias-free linear map
    (the site ``final``); a final norm, a soft-cap or a bias-carrying head shows up as a non-zero error.
    """
    out = []
    for s in range(0, h0.shape[0], chunk):
        a, b = h0[s:s + chunk], h1[s:s + chunk]
        dz = (readout(b) - readout(a)).double()  # (n, V)
        linear = (b - a).to(weight.dtype) @ weight.T  # (n, V)
        out.append((dz - linear.double()).norm(dim=-1) / dz.norm(dim=-1).clamp_min(1e-300))
    return torch.cat(out) if out else h0.new_zeros(0, dtype=torch.float64)


@torch.no_grad()
def attractor_unique_tokens(h0: torch.Tensor, h1: torch.Tensor, readout: Readout, n_alpha: int = 11,
                            chunk: int = 128) -> torch.Tensor:
    """(N,) how many distinct argmax tokens the read-out gives along h(α) = (1-α)h0 + αh1, α on a uniform grid.

    1 means both endpoints and everything between sit in one token's basin; more means the segment crosses
    neighbouring attractors.
    """
    alphas = torch.linspace(0, 1, n_alpha, dtype=h0.dtype, device=h0.device)[None, :, None]  # (1, A, 1)
    counts = []
    for s in range(0, h0.shape[0], chunk):
        a, b = h0[s:s + chunk, None], h1[s:s + chunk, None]  # (n, 1, d)
        tokens = readout((1 - alphas) * a + alphas * b).argmax(-1)  # (n, A)
        tokens = tokens.sort(dim=-1).values
        counts.append(1 + (tokens[:, 1:] != tokens[:, :-1]).sum(-1))
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)
