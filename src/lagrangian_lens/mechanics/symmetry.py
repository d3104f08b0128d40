"""Velocity-aware Jacobian-symmetry tests: is the local per-step force conservative?

In PCA-k coordinates (fitted on train, pooled over layers), fit the step by ridge twice: with M free, and with M
symmetric (a linear force M·x is a gradient exactly when M is symmetric). A small gap between the two test R²
means the local force is conservative; a curl shows up as a large gap.

* :class:`JacobianSymmetryTest` (pooled): Δx ≈ A·v + M·x + b, one (A, M, b) for every layer.
* :class:`PerLayerSymmetryTest`: Δx_ℓ ≈ A·v + M_ℓ·x + b_ℓ, the velocity map A shared, M_ℓ and b_ℓ per layer,
  scored per layer, so a curl confined to a few layers is not averaged away.

Both are solved from second moments, so they cost O(k³) per layer whatever the number of samples: each layer's
normal equations are reduced onto the shared A (a Schur complement), solved, and each layer's M_ℓ, b_ℓ follows.
R² is reported under both definitions of :mod:`.potential_fit` (``r2_centered`` is the headline).
"""
from __future__ import annotations

import numpy as np
import torch

from .depth_data import DepthData
from .potential_fit import r2_per_layer


def _symmetric_basis(k: int) -> torch.Tensor:
    """(k·k, k(k+1)/2): maps the free entries of a symmetric matrix to its row-major vec."""
    cols = []
    for i in range(k):
        for j in range(i, k):
            e = torch.zeros(k, k, dtype=torch.float64)
            e[i, j] = e[j, i] = 1.0
            cols.append(e.reshape(-1))
    return torch.stack(cols, dim=1)


def _normal_equations(C: torch.Tensor, R: torch.Tensor, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal matrix and right-hand side of Σ‖Δx − W z‖² in θ = [vec A, s, b] with W = [A M b], vec M = S s.

    ``C`` (2k+1, 2k+1) = zᵀz (ridge included) and ``R`` (k, 2k+1) = Δxᵀz for z = [v, x, 1]; vec is row-major, so
    the block of θ's parts X, Y is I_k ⊗ C_XY (each output row i contributes X_i C_XY Y_iᵀ).
    """
    k = R.shape[0]
    eye = torch.eye(k, dtype=C.dtype)
    v, x, one = slice(0, k), slice(k, 2 * k), slice(2 * k, 2 * k + 1)
    AA, Ax, Ab = torch.kron(eye, C[v, v]), torch.kron(eye, C[v, x]), torch.kron(eye, C[v, one])
    xx, xb = torch.kron(eye, C[x, x]), torch.kron(eye, C[x, one])
    N = torch.cat([
        torch.cat([AA, Ax @ S, Ab], dim=1),
        torch.cat([S.T @ Ax.T, S.T @ xx @ S, S.T @ xb], dim=1),
        torch.cat([Ab.T, xb.T @ S, C[one, one] * eye], dim=1)])
    r = torch.cat([R[:, v].reshape(-1), S.T @ R[:, x].reshape(-1), R[:, 2 * k]])
    return N, r


def _solve_shared(moments: list[tuple[torch.Tensor, torch.Tensor]], symmetric: bool) -> torch.Tensor:
    """[A M_g b_g] (G, k, 2k+1) minimising Σ_g‖Δx_g − A v − M_g x − b_g‖² with A shared by every group g and each
    M_g free or symmetric. ``moments``: per group (C_g (2k+1, 2k+1) ridge included, R_g = Δxᵀz (k, 2k+1)).

    Each group's normal equations in θ_g = [a, p_g] (a = vec A, p_g = [M_g's free entries, b_g]) are reduced onto
    a by the Schur complement Σ_g (N_aa − N_ap N_pp⁻¹ N_pa); then p_g = N_pp⁻¹(r_p − N_pa a).
    """
    k = moments[0][1].shape[0]
    S = _symmetric_basis(k) if symmetric else torch.eye(k * k, dtype=torch.float64)  # vec M = S s
    n_a = k * k
    schur, rhs, solved = 0.0, 0.0, []
    for C, R in moments:
        N, r = _normal_equations(C, R, S)
        X = torch.linalg.solve(N[n_a:, n_a:], torch.cat([N[n_a:, :n_a], r[n_a:, None]], dim=1))  # N_pp⁻¹[N_pa r_p]
        schur = schur + N[:n_a, :n_a] - N[:n_a, n_a:] @ X[:, :-1]
        rhs = rhs + r[:n_a] - N[:n_a, n_a:] @ X[:, -1]
        solved.append(X)
    A = torch.linalg.solve(schur, rhs).reshape(k, k)
    W = []
    for X in solved:
        p = X[:, -1] - X[:, :-1] @ A.reshape(-1)
        M, b = (S @ p[:-k]).reshape(k, k), p[-k:]
        W.append(torch.cat([A, M, b[:, None]], dim=1))
    return torch.stack(W)


class JacobianSymmetryTest:
    """Pooled over layers. ``fit(train)`` sets ``mean_``, ``components_`` (PCA), ``W_free_`` and ``W_sym_``
    ([A M b] each, (k, 2k+1)); ``score(test)`` returns {"r2_free", "r2_symmetric", "gap", "antisymmetry_ratio"}
    (R² centred, the headline) and the same R² and gap uncentred (keys ending in ``_uncentered``)."""

    per_layer = False

    def __init__(self, k: int = 16, ridge: float = 1e-3):
        self.k, self.ridge = k, ridge

    def _coordinates(self, data: DepthData) -> tuple[torch.Tensor, torch.Tensor]:
        """Design z = [v, x, 1] (S, L, 2k+1) and target Δx (S, L, k) in the PCA coordinates."""
        s = data.samples()
        P = self.components_
        x, v, dx = (s["x"].double() - self.mean_) @ P, s["v"].double() @ P, s["dx"].double() @ P
        return torch.cat([v, x, torch.ones_like(x[..., :1])], dim=-1), dx

    def _groups(self, z: torch.Tensor, dx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(z, Δx) of each group, (n, 2k+1) and (n, k): all layers pooled into one."""
        return [(z.reshape(-1, z.shape[-1]), dx.reshape(-1, dx.shape[-1]))]

    def fit(self, data: DepthData) -> JacobianSymmetryTest:
        x = data.samples()["x"].double()
        x = x.reshape(-1, x.shape[-1])  # (S·L, d)
        self.mean_ = x.mean(0)
        _, _, vt = torch.linalg.svd(x - self.mean_, full_matrices=False)
        self.components_ = vt[:self.k].T  # (d, k)
        k = self.components_.shape[1]
        moments = []
        for z, dx in self._groups(*self._coordinates(data)):
            C = z.T @ z  # (2k+1, 2k+1)
            reg = self.ridge * C.diagonal().mean() * torch.eye(2 * k + 1, dtype=C.dtype)
            reg[-1, -1] = 0  # the bias is not shrunk
            moments.append((C + reg, dx.T @ z))
        W_free = _solve_shared(moments, symmetric=False)
        W_sym = _solve_shared(moments, symmetric=True)
        self.W_free_, self.W_sym_ = (W_free, W_sym) if self.per_layer else (W_free[0], W_sym[0])
        return self

    def score(self, data: DepthData) -> dict:
        z, dx = self._coordinates(data)
        W_free, W_sym = (self.W_free_, self.W_sym_) if self.per_layer else (self.W_free_[None], self.W_sym_[None])
        if not self.per_layer:
            z, dx = (t.reshape(-1, 1, t.shape[-1]) for t in (z, dx))  # every layer pooled into one
        free = torch.einsum("slc,lic->sli", z, W_free)  # (S, L, k)
        sym = torch.einsum("slc,lic->sli", z, W_sym)
        k = self.components_.shape[1]
        M = W_free[:, :, k:2 * k]  # (L, k, k)
        asym = (M - M.transpose(1, 2)).norm(dim=(1, 2)) / (M + M.transpose(1, 2)).norm(dim=(1, 2)).clamp_min(1e-30)
        out = {}
        for suffix, centered in (("", True), ("_uncentered", False)):
            r2_free, r2_sym = (r2_per_layer(dx, pred, centered=centered) for pred in (free, sym))
            out |= {f"r2_free{suffix}": r2_free, f"r2_symmetric{suffix}": r2_sym, f"gap{suffix}": r2_free - r2_sym}
        out["antisymmetry_ratio"] = asym.numpy()
        if self.per_layer:
            return {key: [float(v) for v in value] for key, value in out.items()}
        return {key: float(value[0]) for key, value in out.items()}


class PerLayerSymmetryTest(JacobianSymmetryTest):
    """Per layer, with the velocity map A shared: ``W_free_`` and ``W_sym_`` are (L, k, 2k+1), their A blocks
    equal across layers; ``score(test)`` returns the same keys as the pooled test with one value per layer."""

    per_layer = True

    def _groups(self, z, dx):
        return [(z[:, l], dx[:, l]) for l in range(z.shape[1])]


def summarise_gaps(per_layer: dict) -> dict:
    """A per-layer score's gaps in brief: their median, their maximum and the layer where it is."""
    gap = np.asarray(per_layer["gap"])
    return {"gap_median": float(np.median(gap)), "gap_max": float(gap.max()), "gap_max_layer": int(gap.argmax())}


__all__ = ["JacobianSymmetryTest", "PerLayerSymmetryTest", "summarise_gaps"]
