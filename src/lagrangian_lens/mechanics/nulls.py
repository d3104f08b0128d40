"""Permutation nulls: is a statistic of real paths different from the same statistic on shuffled paths?

Shuffling the order of points within each path keeps the set of states and destroys their order. For
statistics where smaller means smoother (acceleration, curvature, residuals), the one-sided p-value asks how
often a shuffled path is at least as smooth as the real one: p = (1 + #{null <= real}) / (K + 1); z < 0 means
smoother than chance.

Vectorised: paths come in groups of equal length (n, T, d); a shuffle of a group is an order (n, T), one
permutation of its points per path, and K shuffles are an index tensor (K, n, T) evaluated at once, in
chunks of ``NULL_CHUNK_ELEMENTS``. An ``OrderStatistic`` never touches the states per shuffle: it reads what
its ``prepare`` derived from each group once (for the kinematics, its Gram matrices, ``mechanics.gram``), so
a shuffle costs gathers, not arithmetic in d dimensions.

Seeding: one generator seeded with ``seed`` draws the orders shuffle after shuffle and group after group
(``draw_orders``), so shuffle k is the same whatever the chunk size, and a plain loop over ``draw_orders``
reproduces the null exactly.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import TrajectoryError
from .stats import serial_on_cpu

# Path points (n·T summed over groups) times shuffles per chunk: each op of a statistic then touches 8 MB of
# float64 at most, which a CPU core handles best alone (see ``stats.serial_on_cpu``), and a chunk's few dozen
# temporaries stay near 200 MB.
NULL_CHUNK_ELEMENTS = 2**20


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


@dataclass(frozen=True)
class OrderStatistic:
    """Pooled means of per-step quantities of reordered paths, for any number of orders at once.

    ``prepare`` maps a group (n, T, d) to what ``evaluate`` reads (e.g. its Gram matrices (n, T, T));
    ``evaluate`` maps that and orders (K, n, T) to {name: (sum (K,), count (K,))} over the group's steps. The
    value of a name is its sum over every group divided by its count: a mean over all pooled steps.
    """

    prepare: Callable[[torch.Tensor], Any]
    evaluate: Callable[[Any, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]

    @classmethod
    def on_states(cls, evaluate: Callable[[torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]):
        """The plain form: ``evaluate`` reads the reordered states (K, n, T, d) themselves. It costs O(K·n·T·d)
        per chunk; a statistic of scalar products is cheaper from a Gram matrix (``mechanics.gram``)."""
        return cls(lambda group: group, lambda group, order: evaluate(reorder(group, order)))

    def values(self, prepared: Sequence, orders: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """{name: (K,)} float64 pooled means for the orders (K, n, T) of every group."""
        totals: dict[str, list[torch.Tensor]] = {}
        for state, order in zip(prepared, orders):
            for name, (total, count) in self.evaluate(state, order).items():
                acc = totals.setdefault(name, [0.0, 0.0])
                acc[0] = acc[0] + total.double()
                acc[1] = acc[1] + count.double()
        return {name: total / count for name, (total, count) in totals.items()}


def as_groups(paths: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Paths (T, d) or groups (n, T, d) as groups (a single path is a group of one)."""
    groups = [p if p.ndim == 3 else p[None] for p in paths]
    if not groups or any(g.ndim != 3 or g.shape[1] < 3 for g in groups):
        raise TrajectoryError("a permutation null needs paths (T, d) or groups (n, T, d) of at least 3 points, got "
                              f"shapes {[tuple(p.shape) for p in paths][:5]}")
    return groups


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


def draw_orders(groups: Sequence[torch.Tensor], n_permutations: int, seed: int) -> Iterator[list[torch.Tensor]]:
    """Shuffle after shuffle, the orders (n, T) of every group: argsort of uniform draws, one generator.

    The first shuffle is the one ``permuted`` draws from a generator seeded ``seed`` (and the k-th, its k-th
    call), so nulls over groups keep the shuffles of the loop they replace."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n_permutations):
        yield [torch.rand(g.shape[:2], generator=gen).argsort(-1) for g in groups]


def reorder(group: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The states of a group (n, T, d) in orders (..., n, T) -> (..., n, T, d)."""
    return group[torch.arange(group.shape[0], device=group.device)[:, None], order.to(group.device)]


def permutation_test(statistic: OrderStatistic, paths: Sequence[torch.Tensor], *, n_permutations: int = 1000,
                     seed: int = 0, chunk: int | None = None) -> dict[str, NullTest]:
    """``statistic`` on the real paths and on ``n_permutations`` shuffles of the order within each path.

    ``paths`` are paths (T, d) or groups (n, T, d) (see ``group_paths``). ``chunk`` shuffles are evaluated at
    once (default: NULL_CHUNK_ELEMENTS path points per chunk).
    """
    if not isinstance(statistic, OrderStatistic):
        raise TypeError(f"permutation_test takes an OrderStatistic, got {type(statistic).__name__}: wrap a function "
                        "of reordered states (K, n, T, d) -> {name: (sum (K,), count (K,))} as "
                        "OrderStatistic.on_states(function)")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    groups = as_groups(paths)
    with serial_on_cpu(groups[0].device):
        return _permutation_test(statistic, groups, n_permutations, seed, chunk)


def _permutation_test(statistic: OrderStatistic, groups: list[torch.Tensor], n_permutations: int, seed: int,
                      chunk: int | None) -> dict[str, NullTest]:
    # even the Gram matmuls are small enough (1.7 GFLOP for 3000 depth paths) that a loaded machine's
    # thread contention costs more than threads gain
    prepared = [statistic.prepare(g) for g in groups]
    devices = [g.device for g in groups]
    identity = [torch.arange(g.shape[1], device=d).expand(1, *g.shape[:2]) for g, d in zip(groups, devices)]
    real = {name: float(v) for name, v in statistic.values(prepared, identity).items()}
    if chunk is None:
        chunk = NULL_CHUNK_ELEMENTS // max(sum(g.shape[0] * g.shape[1] for g in groups), 1)
    chunk = max(1, min(chunk, n_permutations))
    draws: dict[str, list[torch.Tensor]] = {name: [] for name in real}
    orders = draw_orders(groups, n_permutations, seed)
    for start in range(0, n_permutations, chunk):
        batch = [next(orders) for _ in range(min(chunk, n_permutations - start))]
        stacked = [torch.stack([b[i] for b in batch]).to(d) for i, d in enumerate(devices)]  # (c, n, T) per group
        for name, v in statistic.values(prepared, stacked).items():
            draws[name].append(v)
    return {name: null_test(value, torch.cat(draws[name]).cpu().numpy()) for name, value in real.items()}


def null_test(real: float, null: np.ndarray) -> NullTest:
    """z and the one-sided p of ``real`` against the permutation values ``null`` (K,)."""
    mean, std = (float(null.mean()), float(null.std(ddof=1))) if null.size > 1 else (float("nan"), 0.0)
    z = (real - mean) / std if std > 0 else 0.0
    p = (1 + int((null <= real).sum())) / (null.size + 1)
    return NullTest(float(real), mean, std, float(z), float(p), null)
