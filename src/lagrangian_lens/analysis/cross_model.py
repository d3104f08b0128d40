"""Summaries across models: does a metric scale with model size? (the energy paper's Table 5).

The paper correlates parameter count with energy drift over its models. Here each weight class (pretrained,
random) is summarised on its own, since mixing them would measure training, not size. Pearson's r comes with
a Fisher-z interval (defined for n >= 4 models) and the two-sided t-test p-value (n >= 3).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

MIN_MODELS = 3  # fewer points give no correlation worth printing


def metric_value(metric) -> float | None:
    """A metric's point value, whether stored as a number or as {"value", "ci_low", "ci_high"}."""
    if isinstance(metric, dict):
        metric = metric.get("value")
    return None if metric is None or not math.isfinite(float(metric)) else float(metric)


def pearson(x: Sequence[float], y: Sequence[float], ci: float = 0.95) -> dict:
    """Pearson's r of ``x`` and ``y`` with its Fisher-z interval and two-sided p-value.

    The interval is tanh(atanh(r) ± z_{(1+ci)/2}/√(n − 3)); it needs n >= 4 and is None below. A constant
    ``x`` or ``y`` has no correlation: r is None.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    out = {"n": n, "r": None, "ci_low": None, "ci_high": None, "p_value": None}
    if n < MIN_MODELS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    result = stats.pearsonr(x, y)
    r = float(np.clip(result.statistic, -1.0, 1.0))
    out.update(r=r, p_value=float(result.pvalue))
    if n >= 4 and abs(r) < 1:
        half = stats.norm.ppf((1 + ci) / 2) / math.sqrt(n - 3)
        out.update(ci_low=math.tanh(math.atanh(r) - half), ci_high=math.tanh(math.atanh(r) + half))
    return out


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
