"""The kinematics of reordered paths, read from each path's Gram matrix instead of its states.

Every quantity the permutation nulls average is a function of scalar products of a path's states: the STP
triplet norms of differences h_j − h_i, and the sphere's angles between unit vectors x_i, x_j. So the Gram
matrix of a path (T, T), computed once, answers every reordering of it: a reordered path costs O(T) gathers
of Gram entries instead of O(T·d) arithmetic on its states (d = 576 makes that the whole cost of a null).

Orders are index tensors (..., n, T) over a group of n paths of T points (one order per path, any number of
leading permutation axes); each function returns per-triplet (..., n, T-2) or per-step values, float64.

Accuracy: the STP Gram is centred on each path's mean state, so a squared step ‖h_j − h_i‖² = G_ii + G_jj −
2G_ij loses about eps·‖h − h̄‖² to cancellation, not eps·‖h‖²; steps below GRAM_ZERO_RTOL of that scale count
as zero (degenerate), as exact repeats do in ``kinematics``. A magnitude that is the square root of a
cancelling sum comes out to about 1e-8 of its scale where it should vanish: ‖a⊥‖ of a collinear triplet
(≈ 1e-8·‖d2‖) and the covariant acceleration of a geodesic one (≈ 1e-8 rad). Both are far below what
separates a real path from a shuffled one; the reported metrics themselves come from ``kinematics`` and
``sphere`` on the states.
"""
from __future__ import annotations

import torch

from .sphere import to_sphere

GRAM_ZERO_RTOL = 1e-13  # ‖Δh‖² below this fraction of (G_ii + G_jj) is a zero step (cancellation is ~4e-16)


def centred_gram(h: torch.Tensor) -> torch.Tensor:
    """(..., T, d) states -> (..., T, T) float64 scalar products of the states minus their path's mean."""
    h = h.double()
    h = h - h.mean(-2, keepdim=True)  # differences are translation-invariant; centring shrinks cancellation
    return h @ h.transpose(-1, -2)


def cosine_gram(h: torch.Tensor) -> torch.Tensor:
    """(..., T, d) states -> (..., T, T) float64 cosines between them (scalar products on the unit sphere)."""
    x = to_sphere(h)
    return (x @ x.transpose(-1, -2)).clamp(-1.0, 1.0)


def _entries(gram: torch.Tensor, order: torch.Tensor):
    """A function (a, b) -> G[path, order[..., a], order[..., b]] for slices a, b of the points, (..., n, m).

    One flat ``take`` per lookup, with the row offsets computed once: half the time of advanced indexing
    with three index tensors, and the lookups are most of a null's cost.
    """
    n, T = gram.shape[0], gram.shape[-1]
    order = order.to(gram.device)
    rows = order * T + (torch.arange(n, device=gram.device) * T * T)[:, None]  # (..., n, T) flat offset of each row
    flat = gram.reshape(-1)
    return lambda a, b: flat.take(rows[..., a] + order[..., b])


def triplet_norms(gram: torch.Tensor, order: torch.Tensor) -> dict[str, torch.Tensor]:
    """STP magnitudes of the reordered paths from their centred Gram matrices (n, T, T) and orders (..., n, T).

    Keys, each (..., n, T-2): ``a_parallel_norm`` |a·d̂1|, ``a_perp_norm`` ‖a⊥‖ (0 where invalid) and
    ``valid`` (both steps non-zero), as ``kinematics.triplet_kinematics`` on the reordered states.
    """
    g = _entries(gram, order)
    every = slice(None)
    diag, step = g(every, every), g(slice(None, -1), slice(1, None))  # G_tt (..., n, T), G_{t,t+1} (..., n, T-1)
    gii, gjj, gkk, gij, gjk = diag[..., :-2], diag[..., 1:-1], diag[..., 2:], step[..., :-1], step[..., 1:]
    n1sq = gii + gjj - 2 * gij  # ‖d1‖²
    n2sq = gjj + gkk - 2 * gjk  # ‖d2‖²
    dot = gjk - gjj - g(slice(None, -2), slice(2, None)) + gij  # d1·d2
    valid = (n1sq > GRAM_ZERO_RTOL * (gii + gjj)) & (n2sq > GRAM_ZERO_RTOL * (gjj + gkk))
    n1sq = torch.where(valid, n1sq, 1.0)
    # a = d2 − d1: a·d̂1 = (d1·d2 − ‖d1‖²)/‖d1‖, and a⊥ = d2⊥, so ‖a⊥‖² = ‖d2‖² − (d1·d2)²/‖d1‖²
    a_tan = (dot - n1sq) / n1sq.sqrt()
    perp = (n2sq - dot.square() / n1sq).clamp_min(0).sqrt()
    zero = torch.zeros_like(a_tan)
    return {"a_parallel_norm": torch.where(valid, a_tan.abs(), zero), "a_perp_norm": torch.where(valid, perp, zero),
            "valid": valid}


def _angle(c: torch.Tensor) -> torch.Tensor:
    """Great-circle angle from its cosine, as ``sphere.angle``'s 2·atan2(‖x − y‖, ‖x + y‖)."""
    return 2 * torch.atan2((2 - 2 * c).clamp_min(0).sqrt(), (2 + 2 * c).clamp_min(0).sqrt())


def sphere_steps(cos: torch.Tensor, order: torch.Tensor, window: int) -> dict[str, torch.Tensor]:
    """Sphere diagnostics of the reordered paths from their cosine Gram matrices (n, T, T) and orders (..., n, T).

    Keys as ``sphere.sphere_kinematics`` and ``sphere.path_excess``: ``step_angle`` (..., n, T-1),
    ``covariant_acceleration``, ``geodesic_curvature``, ``el_residual`` (..., n, T-2), ``path_excess``
    (..., n, T-window). Parallel transport of log_p(m) along its own geodesic is −log_m(p), so the covariant
    acceleration is ‖log_m(q) + log_m(p)‖, the EL residual's numerator, and its square follows from the three
    cosines of the triplet: θ1² + θ2² + 2θ1θ2·cos A, A the angle at m (the spherical law of cosines).
    """
    g = _entries(cos, order)
    step = g(slice(None, -1), slice(1, None))  # cos of each step (..., n, T-1)
    theta = _angle(step)
    c_pm, c_mq, t1, t2 = step[..., :-1], step[..., 1:], theta[..., :-1], theta[..., 1:]  # triplet (p, m, q)
    sines = ((1 - c_pm.square()).clamp_min(0) * (1 - c_mq.square()).clamp_min(0)).sqrt()
    # where either sine is 0 one of the two logs is 0 and the cross term vanishes whatever cos A is
    cos_a = torch.where(sines > 0, (g(slice(None, -2), slice(2, None)) - c_pm * c_mq) / sines.clamp_min(1e-300), 0.0)
    # ‖log_m(p)‖, ‖log_m(q)‖: the angle, except 0 at an antipode (no direction), as ``sphere.log_map``
    back, fore = torch.where(c_pm > -1, t1, 0.0), torch.where(c_mq > -1, t2, 0.0)
    acc = (back.square() + fore.square() + 2 * back * fore * cos_a).clamp_min(0).sqrt()
    scale = (t1 * t2).clamp_min(1e-300)
    el = acc / (back + fore).clamp_min(1e-300)
    walked = torch.nn.functional.pad(theta.cumsum(-1), (1, 0))  # (..., n, T): arc length up to each point
    walked = walked[..., window:] - walked[..., :-window]
    direct = _angle(g(slice(None, -window), slice(window, None)))
    excess = torch.where(walked > 0, (walked - direct) / walked.clamp_min(1e-300), torch.zeros_like(walked))
    return {"step_angle": theta, "covariant_acceleration": acc, "geodesic_curvature": acc / scale,
            "el_residual": el, "path_excess": excess}
