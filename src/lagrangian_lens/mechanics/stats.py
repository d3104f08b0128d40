"""Run-level statistics over many trajectories: a padded step table and bootstrap confidence intervals.

A table maps a quantity's name to a float64 array (B, n) — trajectories by steps — with NaN marking steps a
trajectory does not have (padding, zero velocity). NaN never leaves this module: every statistic skips it.
Statistics reduce the last two axes only, so one call evaluates a whole stack of bootstrap resamples
(n_boot, B, n) at once.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Table = dict[str, np.ndarray]
Statistic = Callable[[Table], np.ndarray]


def pad_rows(rows: Sequence[np.ndarray], valid: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Ragged rows -> (B, n_max) float64, NaN where a row is shorter or ``valid`` is False."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
        if valid is not None:
            out[i, :len(r)][~np.asarray(valid[i], bool)] = np.nan
    return out


def _quiet(fn):
    def wrapped(*args, **kwargs):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, checked by the caller
            return fn(*args, **kwargs)
    return wrapped


@_quiet
def pooled_mean(x: np.ndarray) -> np.ndarray:
    return np.nanmean(x, axis=(-2, -1))


@_quiet
def pooled_median(x: np.ndarray) -> np.ndarray:
    return np.nanmedian(x.reshape(*x.shape[:-2], -1), axis=-1)


@_quiet
def pooled_var(x: np.ndarray) -> np.ndarray:
    return np.nanvar(x, axis=(-2, -1))


@_quiet
def cv(x: np.ndarray, axis) -> np.ndarray:
    """Coefficient of variation std/|mean| (population std), NaN-skipping."""
    return np.nanstd(x, axis=axis) / np.abs(np.nanmean(x, axis=axis))


def global_cv(x: np.ndarray) -> np.ndarray:
    """CV over every (trajectory, step) value pooled."""
    return cv(x, axis=(-2, -1))


@_quiet
def mean_within_row_cv(x: np.ndarray) -> np.ndarray:
    """Mean over trajectories of each trajectory's own CV (rows with fewer than 2 values are skipped)."""
    per_row = cv(x, axis=-1)
    per_row[(~np.isnan(x)).sum(-1) < 2] = np.nan
    return np.nanmean(per_row, axis=-1)


@_quiet
def cv_of_row_means(x: np.ndarray) -> np.ndarray:
    """CV across trajectories of each trajectory's mean."""
    return cv(np.nanmean(x, axis=-1), axis=-1)


def steps_diff(x: np.ndarray) -> np.ndarray:
    """Consecutive differences within each row; NaN unless both steps exist."""
    return x[..., 1:] - x[..., :-1]


@_quiet
def drift(dx: np.ndarray) -> np.ndarray:
    """Σ Δ / Σ |Δ|: +1 for a monotone rise, -1 for a monotone fall, 0 for balance (and for no change at all)."""
    total = np.nansum(np.abs(dx), axis=(-2, -1))
    return np.where(total > 0, np.nansum(dx, axis=(-2, -1)) / np.where(total > 0, total, 1.0), 0.0)


@_quiet
def normalise_by_row_mean_exp(log_x: np.ndarray) -> np.ndarray:
    """exp(log_x) divided by its row mean, computed stably in log space."""
    top = np.nanmax(log_x, axis=-1, keepdims=True)
    e = np.exp(log_x - top)
    return e / np.nanmean(e, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile bootstrap interval over trajectories."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


def bootstrap_many(statistics: dict[str, Statistic], table: Table, *, n_boot: int = 1000, ci: float = 0.95,
                   seed: int = 0, chunk: int = 100) -> dict[str, Estimate]:
    """Percentile bootstrap of several statistics on the SAME resamples of whole trajectories (rows).

    Each resample chunk copies the table once and every statistic reads it, so the cost is one gather plus
    one reduction per statistic; derived row-wise columns belong in the table before resampling.
    """
    values = {name: float(fn(table)) for name, fn in statistics.items()}
    n_rows = len(next(iter(table.values())))
    if n_boot <= 0 or n_rows < 2:
        return {name: Estimate(v, v, v) for name, v in values.items()}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in statistics}
    for s in range(0, n_boot, chunk):
        idx = rng.integers(0, n_rows, size=(min(chunk, n_boot - s), n_rows))
        resampled = {k: v[idx] for k, v in table.items()}
        for name, fn in statistics.items():
            samples[name].append(np.asarray(fn(resampled)))
    tail = (1 - ci) / 2 * 100
    out = {}
    for name, parts in samples.items():
        draws = np.concatenate(parts)
        draws = draws[np.isfinite(draws)]
        low, high = np.percentile(draws, [tail, 100 - tail]) if draws.size else (values[name], values[name])
        out[name] = Estimate(values[name], float(low), float(high))
    return out


def bootstrap(statistic: Statistic, table: Table, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
              chunk: int = 100) -> Estimate:
    """Percentile bootstrap of one statistic, resampling whole trajectories (rows) with replacement."""
    return bootstrap_many({"s": statistic}, table, n_boot=n_boot, ci=ci, seed=seed, chunk=chunk)["s"]
