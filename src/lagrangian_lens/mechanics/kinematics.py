"""Semantic Tube Prediction (STP) kinematics of a path h_0, h_1, ... (tokens at a site, or layers of a token).

For each consecutive triplet (h_{t-1}, h_t, h_{t+1}):

* d1 = h_t - h_{t-1}, d2 = h_{t+1} - h_t, acceleration a = d2 - d1;
* a∥ = (a·d̂1) d̂1 along d1 and a⊥ = a - a∥ normal to it (so a⊥ = d2⊥: d1 has no normal part);
* STP loss L = 1 - cos(d1, d2).

Exact identity: since ‖a⊥‖/‖d2‖ = sin∠(d1, d2), L = 1 - √(1 - ‖a⊥‖²/‖d2‖²) when cos ≥ 0 and
L = 1 + √(1 - ‖a⊥‖²/‖d2‖²) when cos < 0. Its error is reported in float64 (ill-conditioned only where
cos ≈ 0, where an error ε in ‖a⊥‖²/‖d2‖² becomes ε/(2|cos|)).

Deceleration: a triplet decelerates when its signed tangential acceleration a·d̂1 = d2·d̂1 - ‖d1‖ is negative:
the step's progress along the previous direction falls short of the previous step. This is not ‖d2‖ < ‖d1‖
(a turn can shorten the progress without shortening the step).

Triplets where ‖d1‖ or ‖d2‖ is zero have no direction; they are flagged invalid and excluded.
"""
from __future__ import annotations

import torch

from ..errors import TrajectoryError


def triplet_kinematics(h: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-triplet quantities of a path (..., T, d), each (..., T-2) in float64.

    Keys: ``d1_norm``, ``d2_norm``, ``a_tangential`` (signed a·d̂1), ``a_parallel_norm`` (|a·d̂1|),
    ``a_perp_norm``, ``cos``, ``stp_loss``, ``identity_loss`` (the identity's right-hand side),
    ``identity_error``, ``valid``.
    """
    if h.shape[-2] < 3:
        raise TrajectoryError(f"a path of {h.shape[-2]} points has no triplet: at least 3 are needed (shape {tuple(h.shape)})")
    h = h.double()
    d1 = h[..., 1:-1, :] - h[..., :-2, :]
    d2 = h[..., 2:, :] - h[..., 1:-1, :]
    n1, n2 = d1.norm(dim=-1), d2.norm(dim=-1)
    valid = (n1 > 0) & (n2 > 0)
    u = d1 / n1.clamp_min(1e-300)[..., None]  # d̂1
    a = d2 - d1
    a_tan = (a * u).sum(-1)
    a_perp = a - a_tan[..., None] * u
    perp = a_perp.norm(dim=-1)
    cos = (d1 * d2).sum(-1) / (n1 * n2).clamp_min(1e-300)
    loss = 1 - cos
    # 1 - ‖a⊥‖²/‖d2‖² written as a product of sums and differences to avoid cancellation
    root = ((n2 - perp).clamp_min(0) * (n2 + perp)).sqrt() / n2.clamp_min(1e-300)
    identity = torch.where(cos >= 0, 1 - root, 1 + root)
    zero = torch.zeros_like(loss)
    return {
        "d1_norm": n1, "d2_norm": n2, "a_tangential": torch.where(valid, a_tan, zero),
        "a_parallel_norm": torch.where(valid, a_tan.abs(), zero), "a_perp_norm": torch.where(valid, perp, zero),
        "cos": torch.where(valid, cos, zero), "stp_loss": torch.where(valid, loss, zero),
        "identity_loss": torch.where(valid, identity, zero),
        "identity_error": torch.where(valid, (loss - identity).abs(), zero), "valid": valid,
    }


def random_spans(length: int, n: int, *, min_gap: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 2) spans (s, e) with 0 < s < e < length-1 and e - s >= min_gap, uniform over such pairs."""
    pairs = [(s, e) for s in range(1, length - 1) for e in range(s + min_gap, length - 1)]
    if not pairs:
        raise TrajectoryError(f"a path of {length} points has no span with 0 < s < e < {length - 1}: need at least 4 points")
    idx = torch.randint(len(pairs), (n,), generator=generator)
    return torch.tensor(pairs)[idx]


def span_stp_loss(h: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """The span form of STP, 1 - cos(before + after, patch), differentiable; h (..., T, d), spans (n, 2) -> (..., n).

    Index convention: for states h_0 .. h_{T-1} and a span (s, e) with 0 < s < e < T-1,
    before = h_s - h_0, patch = h_e - h_s, after = h_{T-1} - h_e. A path inside a straight tube has its
    patch parallel to the rest of the displacement, so the loss is 0; usable as a training regulariser.
    """
    s, e = spans[:, 0], spans[:, 1]
    start, end = h[..., :1, :], h[..., -1:, :]
    hs, he = h[..., s, :], h[..., e, :]
    rest = (hs - start) + (end - he)
    return 1 - torch.nn.functional.cosine_similarity(rest, he - hs, dim=-1, eps=1e-12)


def stp_regulariser(h: torch.Tensor, n_spans: int = 8, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean span-STP loss over ``n_spans`` random spans of a batch of paths (B, T, d): a scalar to add to a loss."""
    return span_stp_loss(h, random_spans(h.shape[-2], n_spans, generator=generator)).mean()
