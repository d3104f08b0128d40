"""Hypersphere (tangent-bundle) diagnostics of a path: the view that states live on a sphere and move
along it, with the radius discarded (and reported separately).

x_t = h_t / ‖h_t‖ (optionally scaled to radius √d; angles do not depend on it). On the unit sphere:

* geodesic step θ_t = ∠(x_t, x_{t+1}), computed as 2·atan2(‖x−y‖, ‖x+y‖) (accurate at small angles);
* tangent velocity v_t = log_{x_t}(x_{t+1}), of norm θ_t;
* covariant acceleration A_t = log_{x_t}(x_{t+1}) - P_{x_{t-1}→x_t}(log_{x_{t-1}}(x_t)), the change of
  velocity after parallel transport (zero on a great circle at constant speed);
* geodesic curvature κ_t = ‖A_t‖ / θ̄_t², θ̄_t² = θ_{t-1}·θ_t (cot φ on a latitude at colatitude φ);
* discrete action S = ½ Σ_t θ_t²;
* its Euler–Lagrange (geodesic) residual: ∂S/∂x_t = -(log_{x_t}(x_{t+1}) + log_{x_t}(x_{t-1})), reported as
  ‖·‖ / (‖log_{x_t}(x_{t+1})‖ + ‖log_{x_t}(x_{t-1})‖) ∈ [0, 1];
* path-length excess of a window: Σ θ over the window minus the geodesic distance of its endpoints,
  relative to the former;
* the radial part r_t = ‖h_t‖, which the sphere discards.
"""
from __future__ import annotations

import torch

from ..errors import TrajectoryError


def to_sphere(h: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """(..., d) states -> points on the sphere of ``radius`` (float64)."""
    h = h.double()
    norm = h.norm(dim=-1, keepdim=True)
    if (norm == 0).any():
        raise TrajectoryError("a zero state has no direction on the sphere; drop it (e.g. with a position skip)")
    return radius * h / norm


def angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Great-circle angle between unit vectors, stable for tiny and near-π angles."""
    return 2 * torch.atan2((x - y).norm(dim=-1), (x + y).norm(dim=-1))


def log_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log_x(y): the tangent vector at x pointing along the geodesic to y, of length ∠(x, y)."""
    u = y - (x * y).sum(-1, keepdim=True) * x
    n = u.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, angle(x, y)[..., None] * u / n.clamp_min(1e-300), torch.zeros_like(u))


def transport(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Parallel transport of v ∈ T_x along the geodesic x → y: v - (⟨log_x y, v⟩/θ²)(log_x y + log_y x)."""
    lxy, lyx = log_map(x, y), log_map(y, x)
    theta2 = (lxy * lxy).sum(-1, keepdim=True)
    coef = torch.where(theta2 > 0, (lxy * v).sum(-1, keepdim=True) / theta2.clamp_min(1e-300), torch.zeros_like(theta2))
    return v - coef * (lxy + lyx)


def sphere_kinematics(h: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-step and per-triplet quantities of a path (..., T, d) on the unit sphere, float64.

    Steps (..., T-1): ``step_angle``. Triplets (..., T-2): ``covariant_acceleration``, ``geodesic_curvature``,
    ``el_residual``. Points (..., T): ``radius`` (‖h_t‖).
    """
    if h.shape[-2] < 3:
        raise TrajectoryError(f"a path of {h.shape[-2]} points has no triplet: at least 3 are needed")
    x = to_sphere(h)
    theta = angle(x[..., :-1, :], x[..., 1:, :])  # (..., T-1)
    prev, mid, nxt = x[..., :-2, :], x[..., 1:-1, :], x[..., 2:, :]
    forward = log_map(mid, nxt)  # log_{x_t}(x_{t+1})
    backward = log_map(mid, prev)  # log_{x_t}(x_{t-1})
    carried = transport(prev, mid, log_map(prev, mid))
    acc = (forward - carried).norm(dim=-1)
    scale = (theta[..., :-1] * theta[..., 1:]).clamp_min(1e-300)
    el = (forward + backward).norm(dim=-1) / (forward.norm(dim=-1) + backward.norm(dim=-1)).clamp_min(1e-300)
    return {"step_angle": theta, "covariant_acceleration": acc, "geodesic_curvature": acc / scale,
            "el_residual": el, "radius": h.double().norm(dim=-1)}


def action(h: torch.Tensor) -> torch.Tensor:
    """The discrete spherical action S = ½ Σ_t ‖log_{x_t}(x_{t+1})‖² of a path (..., T, d) -> (...)."""
    x = to_sphere(h)
    return 0.5 * (angle(x[..., :-1, :], x[..., 1:, :]) ** 2).sum(-1)


def path_excess(h: torch.Tensor, window: int) -> torch.Tensor:
    """Relative path-length excess of every window of ``window`` steps: (Σθ - θ(ends)) / Σθ, (..., T-window)."""
    if not 1 <= window < h.shape[-2]:
        raise TrajectoryError(f"window {window} needs 1 <= window < {h.shape[-2]} (points in the path)")
    x = to_sphere(h)
    steps = torch.nn.functional.pad(angle(x[..., :-1, :], x[..., 1:, :]).cumsum(-1), (1, 0))  # (..., T)
    walked = steps[..., window:] - steps[..., :-window]
    direct = angle(x[..., :-window, :], x[..., window:, :])
    return torch.where(walked > 0, (walked - direct) / walked.clamp_min(1e-300), torch.zeros_like(walked))
