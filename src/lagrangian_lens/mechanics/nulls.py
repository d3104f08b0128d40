"""Permutation nulls: is a statistic of real paths different from the same statistic on shuffled paths?

Shuffling the order of points within each path keeps the set of states and destroys their order. For
statistics where smaller means smoother (acceleration, curvature, residuals), the one-sided p-value asks how
often a shuffled path is at least as smooth as the real one: p = (1 + #{null <= real}) / (K + 1); z < 0 means
smoother than chance.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class NullTest:
    real: float  # the statistic on the real paths
    null_mean: float  # its mean over permutations
    null_std: float  # its standard deviation over permutations
    z: float  # (real - null_mean) / null_std; 0 when the null has no spread
    p_smaller: float  # one-sided p-value for "real is smaller than shuffled"
    null: np.ndarray  # (K,) the permutation values

    def to_dict(self) -> dict:
        return {"real": self.real, "null_mean": self.null_mean, "null_std": self.null_std, "z": self.z,
                "p_smaller": self.p_smaller}


def group_paths(paths: Sequence[torch.Tensor], max_batch: int = 256) -> list[torch.Tensor]:
    """Paths (T_i, d) stacked into batches (n, T, d) of equal length, at most ``max_batch`` each, so batched
    kernels replace a Python loop (depth paths all have the same length)."""
    by_length: dict[int, list[torch.Tensor]] = {}
    for p in paths:
        by_length.setdefault(p.shape[0], []).append(p)
    return [torch.stack(group[s:s + max_batch]) for group in by_length.values()
            for s in range(0, len(group), max_batch)]


def permuted(paths: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Each path (T, d), or each row of a batch (n, T, d), with its points in an independent random order."""
    out = []
    for p in paths:
        if p.ndim == 2:
            out.append(p[torch.randperm(p.shape[0], generator=generator)])
        else:
            order = torch.rand(p.shape[:2], generator=generator).argsort(dim=1)  # (n, T): one permutation per row
            out.append(p.gather(1, order[..., None].expand_as(p)))
    return out


def permutation_test(statistics: Callable[[Sequence[torch.Tensor]], dict[str, float]], paths: Sequence[torch.Tensor],
                     *, n_permutations: int = 100, seed: int = 0) -> dict[str, NullTest]:
    """Evaluate ``statistics`` (paths -> {name: value}) on the real paths and on ``n_permutations`` shuffles."""
    real = statistics(paths)
    gen = torch.Generator().manual_seed(seed)
    draws = [statistics(permuted(paths, gen)) for _ in range(n_permutations)]
    tests = {}
    for name, value in real.items():
        null = np.array([d[name] for d in draws], dtype=float)
        mean, std = (float(null.mean()), float(null.std(ddof=1))) if null.size > 1 else (float("nan"), 0.0)
        z = (value - mean) / std if std > 0 else 0.0
        p = (1 + int((null <= value).sum())) / (null.size + 1)
        tests[name] = NullTest(float(value), mean, std, float(z), float(p), null)
    return tests
