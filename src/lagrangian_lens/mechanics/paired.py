"""Paired comparisons of two conditions measured on the same units (natural against steered, per prompt).

The energy paper's Table 3 reports, per model, the natural and steered mean rating, a paired t-test p-value and
Cohen's d. The functions here compute those, plus what a careful reader also wants: a bootstrap interval for d
and an exact sign test, which assumes nothing about the shape of the differences.

* ``paired_t_test``: t = mean(d)/(sd(d)/√n), df = n − 1; the two-sided p-value from Student's t distribution,
  computed through the regularised incomplete beta function (no SciPy): p = I_{df/(df+t²)}(df/2, 1/2).
* ``cohens_dz``: the paired effect size d_z = mean(d)/sd(d) (sd with n − 1), the convention for paired designs.
* ``sign_test``: the exact two-sided binomial test of P(d > 0) = ½ over the non-zero differences.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import TrajectoryError


def _betacf(a: float, b: float, x: float, max_iter: int = 300, eps: float = 1e-15) -> float:
    """The continued fraction of the incomplete beta function, by the modified Lentz method."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    return h  # converged to float precision well before max_iter for the df used here


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast for x < (a + 1)/(a + b + 2); use the symmetry I_x(a,b) = 1 − I_{1−x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class PairedComparison:
    """Two conditions on the same n units: their means, the paired t-test, d_z with its interval, the sign test."""

    n: int  # units with both values finite
    mean_a: float  # the first condition's mean (natural)
    mean_b: float  # the second condition's mean (steered)
    mean_difference: float  # mean(b − a)
    t: float  # paired t statistic of b − a
    p_value: float  # its two-sided p-value, df = n − 1
    cohens_dz: float  # mean(b − a)/sd(b − a)
    dz_ci_low: float | None  # percentile bootstrap interval of d_z over units (None without bootstrap)
    dz_ci_high: float | None
    n_positive: int  # units with b > a
    n_negative: int  # units with b < a
    sign_p_value: float  # exact two-sided sign test over the non-zero differences

    def __post_init__(self):
        if self.n < 2:
            raise TrajectoryError(f"a paired comparison needs at least 2 units with both values; got {self.n}")

    def to_dict(self) -> dict:
        return asdict(self)


def cohens_dz(differences: np.ndarray) -> float:
    """mean/sd (ddof 1) of paired differences; ±inf for a constant non-zero difference, NaN for all-zero ones."""
    diff = np.asarray(differences, dtype=float)
    sd = diff.std(ddof=1)
    mean = diff.mean()
    if sd == 0:
        return math.nan if mean == 0 else math.copysign(math.inf, mean)
    return float(mean / sd)


def sign_test(differences: np.ndarray) -> tuple[int, int, float]:
    """(#positive, #negative, exact two-sided p) of H0: P(d > 0) = ½; zero differences are dropped."""
    diff = np.asarray(differences, dtype=float)
    pos, neg = int((diff > 0).sum()), int((diff < 0).sum())
    n = pos + neg
    if n == 0:
        return pos, neg, 1.0
    tail = sum(math.comb(n, i) for i in range(min(pos, neg) + 1)) / 2.0**n
    return pos, neg, min(1.0, 2.0 * tail)


def paired_comparison(a: Sequence[float], b: Sequence[float], *, n_boot: int = 1000, ci: float = 0.95,
                      seed: int = 0) -> PairedComparison:
    """Compare condition ``b`` with condition ``a`` on the same units (pairs with a NaN are dropped)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise TrajectoryError(f"paired values must be two 1-d arrays of one length; got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    diff = b - a
    n = len(diff)
    if n < 2:
        raise TrajectoryError(f"a paired comparison needs at least 2 units with both values finite; got {n}")
    sd = diff.std(ddof=1)
    if sd == 0:
        t = math.nan if diff.mean() == 0 else math.copysign(math.inf, diff.mean())
    else:
        t = float(diff.mean() / (sd / math.sqrt(n)))
    low = high = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = diff[rng.integers(0, n, size=(n_boot, n))]  # (n_boot, n)
        sds = draws.std(axis=1, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            dz = np.where(sds > 0, draws.mean(axis=1) / sds, np.nan)
        dz = dz[np.isfinite(dz)]
        if len(dz):
            low, high = (float(q) for q in np.quantile(dz, [(1 - ci) / 2, (1 + ci) / 2]))
    pos, neg, sign_p = sign_test(diff)
    return PairedComparison(n=n, mean_a=float(a.mean()), mean_b=float(b.mean()), mean_difference=float(diff.mean()),
                            t=t, p_value=student_t_two_sided(t, n - 1), cohens_dz=cohens_dz(diff),
                            dz_ci_low=low, dz_ci_high=high, n_positive=pos, n_negative=neg, sign_p_value=sign_p)
