"""Summaries across models: does a metric scale with model size? (the energy paper's Table 5).

The paper correlates parameter count with energy drift over its models. Here each weight class (pretrained,
random) is summarised on its own, since mixing them would measure training, not size. Pearson's r comes with
a Fisher-z interval (defined for n >= 4 models) and a two-sided permutation p-value (n >= 3): with a handful
of models the normal-theory t-test leans on an assumption nobody can check, while the permutation null is
exact (every ordering for n <= 8, a seeded sample of orderings beyond).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

MIN_MODELS = 3  # fewer points give no correlation worth printing
EXACT_UP_TO = 8  # 8! = 40320 orderings; beyond this the null is sampled
N_SAMPLED = 20_000  # orderings drawn when the null is sampled


def metric_value(metric) -> float | None:
    """A metric's point value, whether stored as a number or as {"value", "ci_low", "ci_high"}."""
    if isinstance(metric, dict):
        metric = metric.get("value")
    return None if metric is None or not math.isfinite(float(metric)) else float(metric)


def pearson(x: Sequence[float], y: Sequence[float], ci: float = 0.95) -> dict:
    """Pearson's r of ``x`` and ``y`` with its Fisher-z interval and two-sided permutation p-value.

    The interval is tanh(atanh(r) ± z_{(1+ci)/2}/√(n − 3)); it needs n >= 4 and is None below. The p-value
    is the share of orderings of ``y`` whose |r| reaches the observed one (see ``permutation_p_value``). A
    constant ``x`` or ``y`` has no correlation: r is None.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    out = {"n": n, "r": None, "ci_low": None, "ci_high": None, "p_value": None}
    if n < MIN_MODELS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    r = float(np.clip(np.corrcoef(x, y)[0, 1], -1.0, 1.0))
    out.update(r=r, p_value=permutation_p_value(x, y))
    if n >= 4 and abs(r) < 1:
        half = NormalDist().inv_cdf((1 + ci) / 2) / math.sqrt(n - 3)
        out.update(ci_low=math.tanh(math.atanh(r) - half), ci_high=math.tanh(math.atanh(r) + half))
    return out


def permutation_p_value(x: Sequence[float], y: Sequence[float], seed: int = 0) -> float:
    """Two-sided p-value of Pearson's r under the null that ``y`` is exchangeable with respect to ``x``.

    For n <= ``EXACT_UP_TO`` every ordering of ``y`` is scored, so the p-value is exact; beyond, ``N_SAMPLED``
    seeded orderings plus the observed one give (1 + #{|r*| >= |r|}) / (1 + N_SAMPLED). A relative slack of
    1e-12 keeps orderings that tie the observed |r| from being lost to rounding.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    xc, yc = x - x.mean(), y - y.mean()
    scale = np.sqrt((xc @ xc) * (yc @ yc))
    observed = abs(xc @ yc) / scale
    if len(y) <= EXACT_UP_TO:
        orders = np.array(list(itertools.permutations(range(len(y)))))  # (n!, n)
        null = np.abs(yc[orders] @ xc) / scale
        return float(np.mean(null >= observed * (1 - 1e-12)))
    rng = np.random.default_rng(seed)
    orders = np.argsort(rng.random((N_SAMPLED, len(y))), axis=1)  # (N_SAMPLED, n)
    null = np.abs(yc[orders] @ xc) / scale
    return float((1 + np.sum(null >= observed * (1 - 1e-12))) / (1 + N_SAMPLED))


def size_correlations(entries: Sequence[dict], metrics: Sequence[str], ci: float = 0.95) -> list[dict]:
    """Per weight class with at least ``MIN_MODELS`` models and per metric: Pearson r of parameter count
    (``model_description.n_params``) against the metric's value, with the models it used."""
    rows = []
    for weights in ("pretrained", "random"):
        runs = [e for e in entries if e.get("weights") == weights and (e.get("model_description") or {}).get("n_params")]
        if len(runs) < MIN_MODELS:
            continue
        for name in metrics:
            points = [(e["model_description"]["n_params"], metric_value(e["metrics"].get(name)), e["run"]) for e in runs]
            points = [p for p in points if p[1] is not None]
            x, y, used = zip(*points) if points else ((), (), ())
            rows.append({"weights": weights, "metric": name, "x": "n_params", **pearson(x, y, ci),
                         "runs": list(used), "n_params": list(x), "values": list(y)})
    return rows
