"""Does a metric separate two runs (a pretrained model and its random twin)? The bootstrap interval of the
difference, Cliff's delta, and a verdict.

The inputs, per run and metric, are the bootstrap replicates of ``stats.bootstrap_many(keep_draws=True)``:
the draws (n_boot,) and the unit values (B,), the statistic on each trajectory alone.

* **Difference**: the point difference a − b and the percentile interval (numpy's linear interpolation, as
  the runs' own intervals) of draws_a − draws_b over the pairs where both are finite. When both runs
  resampled as many rows with the same seed on the same device, their resample indices are identical
  (``stats.resample_indices``): draw i of both runs is the statistic on the same multiset of prompts, since
  twins read the same prompts in the same order. The interval is then a *paired* bootstrap over prompts,
  narrower than an unpaired one wherever the prompts themselves move the metric. Otherwise the draws are
  independent resamples and the interval is that of a difference of independent estimates; ``paired`` says
  which. Draws are paired by position, the shorter set deciding how many.
* **Effect size**: Cliff's delta of the unit values, δ = P(a > b) − P(a < b) ∈ [−1, 1]: rank-based, so
  neither the metric's scale nor its outliers matter. It is unavailable (None) when either side has fewer
  than 2 finite unit values, or when every finite unit value of both sides is one and the same number: a
  statistic with no per-trajectory reading (a spread *across* trajectories is 0 on any single one) gives
  δ = 0 by construction, which would veto a real difference.
* **Verdict**: ``separates`` iff the interval excludes 0 and (|δ| >= NEGLIGIBLE_DELTA or δ is unavailable);
  otherwise ``does not separate``. NEGLIGIBLE_DELTA = 0.147 is the upper bound of a "negligible" Cliff's
  delta (Romano et al. 2006): an interval that excludes 0 on thousands of steps can still describe two
  populations that overlap almost entirely, and such a metric does not tell the two runs apart. A run
  without draws (no bootstrap) has no interval and never separates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..checks import check_range

NEGLIGIBLE_DELTA = 0.147  # |δ| below this is a negligible effect (Romano et al. 2006)
SEPARATES, DOES_NOT_SEPARATE = "separates", "does not separate"


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return x[np.isfinite(x)]


def cliffs_delta(a, b) -> float | None:
    """Cliff's delta P(a > b) − P(a < b) of two samples, NaN and ±inf dropped; None when unavailable (see the
    module docstring). O((n + m) log m): each a counts the b below and above it in the sorted b."""
    a, b = _finite(a), _finite(b)
    if a.size < 2 or b.size < 2:
        return None
    if a.min() == a.max() == b.min() == b.max():
        return None
    b = np.sort(b)
    below = np.searchsorted(b, a, side="left").sum(dtype=np.int64)  # pairs with b < a
    above = (b.size - np.searchsorted(b, a, side="right")).sum(dtype=np.int64)  # pairs with b > a
    return float((below - above) / (a.size * b.size))


@dataclass(frozen=True)
class Separation:
    """One metric of two runs a and b: a − b with its bootstrap interval, Cliff's delta, and the verdict."""

    difference: float | None  # point a − b
    ci_low: float | None  # percentile interval of draws_a − draws_b; None without draws
    ci_high: float | None
    cliffs_delta: float | None  # of the unit values, a against b; None when unavailable
    verdict: str  # SEPARATES or DOES_NOT_SEPARATE
    paired: bool  # the draws came from the same resamples of prompts
    ci: float  # the interval's level

    def to_dict(self) -> dict:
        return {"difference": self.difference, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "cliffs_delta": self.cliffs_delta, "verdict": self.verdict, "paired": self.paired, "ci": self.ci}


def verdict(ci_low: float | None, ci_high: float | None, delta: float | None) -> str:
    """SEPARATES iff the interval excludes 0 and the effect is not negligible (or has no size)."""
    if ci_low is None or ci_high is None:
        return DOES_NOT_SEPARATE
    excludes_zero = ci_low > 0 or ci_high < 0
    sizeable = delta is None or abs(delta) >= NEGLIGIBLE_DELTA
    return SEPARATES if excludes_zero and sizeable else DOES_NOT_SEPARATE


def separation(draws_a, draws_b, units_a, units_b, *, ci: float = 0.95, values: tuple[float, float] | None = None,
               paired: bool | None = None) -> Separation:
    """Separation of run a from run b on one metric.

    ``draws_*`` (n_boot,) and ``units_*`` (B,) are the runs' replicates; ``values`` their point estimates
    (default: the difference is the mean of the finite draw differences). ``paired`` defaults to "as many
    draws and as many units on both sides", which holds for twins bootstrapped with one seed.
    """
    check_range("ci", float(ci), low=0, high=1, low_open=True, high_open=True)
    da, db = (np.asarray(d, dtype=np.float64).reshape(-1) for d in (draws_a, draws_b))
    n = min(da.size, db.size)
    diff = da[:n] - db[:n]
    diff = diff[np.isfinite(diff)]
    if paired is None:
        paired = da.size == db.size and np.size(units_a) == np.size(units_b)
    low = high = None
    if diff.size:
        tail = (1 - ci) / 2
        low, high = (float(q) for q in np.percentile(diff, [100 * tail, 100 * (1 - tail)]))
    point = None
    if values is not None and all(v is not None and math.isfinite(v) for v in values):
        point = float(values[0] - values[1])
    elif diff.size:
        point = float(diff.mean())
    delta = cliffs_delta(units_a, units_b)
    return Separation(point, low, high, delta, verdict(low, high, delta), bool(paired), float(ci))
