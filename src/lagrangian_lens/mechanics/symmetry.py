"""Velocity-aware Jacobian-symmetry test: is the local per-step force conservative?

In PCA-k coordinates (fitted on train), fit Δx ≈ A·v + M·x + b by ridge twice: unconstrained, and with M
symmetric (a linear force M·x is a gradient exactly when M is symmetric). A small gap between the two test R²
means the local force is conservative; a curl shows up as a large gap.

Both fits are solved from second moments, so they cost O(k³) whatever the number of samples.
"""
from __future__ import annotations

import torch

from .depth_data import DepthData
from .potential_fit import r2_per_layer


def _pooled(data: DepthData):
    s = data.samples()
    d = s["x"].shape[-1]
    return s["x"].reshape(-1, d).double(), s["v"].reshape(-1, d).double(), s["dx"].reshape(-1, d).double()


def _symmetric_basis(k: int) -> torch.Tensor:
    """(k·k, k(k+1)/2): maps the free entries of a symmetric matrix to its row-major vec."""
    cols = []
    for i in range(k):
        for j in range(i, k):
            e = torch.zeros(k, k, dtype=torch.float64)
            e[i, j] = e[j, i] = 1.0
            cols.append(e.reshape(-1))
    return torch.stack(cols, dim=1)


class JacobianSymmetryTest:
    """``fit(train)`` sets ``components_`` (PCA), ``W_free_`` and ``W_sym_`` ([A M b] each); ``score(test)``
    returns {"r2_free", "r2_symmetric", "gap"}."""

    def __init__(self, k: int = 16, ridge: float = 1e-3):
        self.k, self.ridge = k, ridge

    def _project(self, x, v, dx):
        P = self.components_
        return (x - self.mean_) @ P, v @ P, dx @ P

    def fit(self, data: DepthData) -> JacobianSymmetryTest:
        x, v, dx = _pooled(data)
        k = min(self.k, x.shape[1])
        self.mean_ = x.mean(0)
        _, _, vt = torch.linalg.svd(x - self.mean_, full_matrices=False)
        self.components_ = vt[:k].T  # (d, k)
        x, v, dx = self._project(x, v, dx)
        z = torch.cat([v, x, torch.ones_like(x[:, :1])], dim=1)  # (n, 2k+1)
        C = z.T @ z
        lam = self.ridge * C.diagonal().mean()
        reg = lam * torch.eye(2 * k + 1, dtype=C.dtype)
        reg[-1, -1] = 0  # the bias is not shrunk
        R = dx.T @ z  # (k, 2k+1)
        self.W_free_ = torch.linalg.solve(C + reg, R.T).T  # each output row: (C + λ)^-1 z·dx
        # Constrained: vec_r(W) = T θ with θ = [vec A, free entries of symmetric M, b].
        m = k * (k + 1) // 2
        n_w = k * (2 * k + 1)
        T = torch.zeros(n_w, k * k + m + k, dtype=torch.float64)
        rows = torch.arange(n_w).reshape(k, 2 * k + 1)
        for i in range(k):
            T[rows[i, :k], i * k + torch.arange(k)] = 1.0  # A[i, :]
            T[rows[i, 2 * k], k * k + m + i] = 1.0  # b[i]
        basis = _symmetric_basis(k)  # vec(M) = basis @ s
        for i in range(k):
            T[rows[i, k:2 * k], k * k:k * k + m] = basis[i * k:(i + 1) * k]
        big = torch.block_diag(*([C + reg] * k))  # normal matrix of vec_r(W): I_k ⊗ (C + λ)
        theta = torch.linalg.solve(T.T @ big @ T, T.T @ R.reshape(-1))
        self.W_sym_ = (T @ theta).reshape(k, 2 * k + 1)
        return self

    def score(self, data: DepthData) -> dict[str, float]:
        x, v, dx = self._project(*_pooled(data))
        z = torch.cat([v, x, torch.ones_like(x[:, :1])], dim=1)
        free = float(r2_per_layer(dx[:, None], (z @ self.W_free_.T)[:, None])[0])
        sym = float(r2_per_layer(dx[:, None], (z @ self.W_sym_.T)[:, None])[0])
        M = self.W_free_[:, self.components_.shape[1]:-1]
        asym = float((M - M.T).norm() / (M + M.T).norm().clamp_min(1e-30))
        return {"r2_free": free, "r2_symmetric": sym, "gap": free - sym, "antisymmetry_ratio": asym}


__all__ = ["JacobianSymmetryTest"]
