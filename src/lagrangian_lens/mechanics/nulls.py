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


def permuted(paths: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Each path (T, d) with its points in a random order."""
    return [p[torch.randperm(p.shape[0], generator=generator)] for p in paths]


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
