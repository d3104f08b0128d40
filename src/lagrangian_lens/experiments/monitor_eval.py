"""The monitor experiment's fitting and evaluation, from feature tables: the sequence and stream monitors, then AUROC
and TPR per anomaly type, feature set and method, the paired comparison with the perplexity baseline, the realised
FPR at the calibrated threshold, and splice localisation from the token-by-token trace. No I/O."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..analysis.monitor import EnergyMonitor, FeatureTable, auroc, tpr_at_fpr

BASELINE = "perplexity"  # the feature set energy has to beat: mean log point-perplexity
CI = 0.95  # level of the interval of every AUROC difference
HIGHER, LOWER, UNCLEAR = "energy higher", "perplexity higher", "no clear difference"


def fit_monitors(feature_sets: dict[str, tuple[str, ...]], methods: Sequence[str], fit: FeatureTable,
                 heldout: FeatureTable, *, target_fpr: float, seed: int) -> dict[tuple[str, str], EnergyMonitor]:
    """One monitor per (feature set, method): fitted on ``fit``, its threshold calibrated on ``heldout``.
    ``feature_sets``: {set name: its feature names}."""
    return {(fs, m): EnergyMonitor(names, method=m, target_fpr=target_fpr, seed=seed).fit(fit).calibrate(heldout)
            for fs, names in feature_sets.items() for m in methods}


def fit_stream_monitors(feature_sets: dict[str, tuple[str, ...]], methods: Sequence[str], fit: FeatureTable,
                        heldout_prefixes: list[FeatureTable], *, target_fpr: float,
                        seed: int) -> dict[tuple[str, str], EnergyMonitor]:
    """The token-by-token monitors of streaming feature sets: fitted as the sequence monitors, their threshold
    calibrated so that ``target_fpr`` of the held-out sequences alarm anywhere along their trace.

    A sequence's trace alarms when its worst prefix does, so calibrating on each held-out sequence's worst prefix
    (a table of one row per sequence) sets the per-sequence false-alarm rate; a threshold calibrated on whole
    sequences would alarm on most traces, since a short prefix's features are noisier than a whole sequence's.
    """
    out = {}
    for fs, names in feature_sets.items():
        for m in methods:
            monitor = EnergyMonitor(names, method=m, target_fpr=target_fpr, seed=seed).fit(fit)
            out[fs, m] = monitor.calibrate(worst_prefixes(monitor, heldout_prefixes))
    return out


def worst_prefixes(monitor: EnergyMonitor, prefixes: list[FeatureTable]) -> FeatureTable:
    """(N, F) one row per sequence: the features of its prefix with the highest anomaly score."""
    rows = [p.values[int(np.argmax(monitor.anomaly_score(p)))] for p in prefixes]
    return FeatureTable(np.stack(rows), prefixes[0].names)


def paired_auroc_difference(normal_a: np.ndarray, anomalous_a: np.ndarray, normal_b: np.ndarray,
                            anomalous_b: np.ndarray, *, n_boot: int, seed: int, ci: float = CI) -> dict:
    """AUROC(a) − AUROC(b) of two monitors' anomaly scores of the same sequences, with a percentile bootstrap
    interval: normal and anomalous sequences are resampled (the same draws for a and b), so the interval holds the
    sampling of both sets and the pairing of the two monitors. ``n_boot`` 0: the point value only."""
    a, b = float(auroc(normal_a, anomalous_a)), float(auroc(normal_b, anomalous_b))
    out = {"auroc": a, "baseline_auroc": b, "difference": a - b, "ci_low": None, "ci_high": None, "n_boot": n_boot,
           "ci": ci}
    if n_boot == 0:
        return out
    n, m = len(normal_a), len(anomalous_a)
    rng = np.random.default_rng(seed)
    w_normal = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(np.float64)  # (B, n) draw counts
    w_anomalous = rng.multinomial(m, np.full(m, 1 / m), size=n_boot).astype(np.float64)  # (B, m)

    def draws(normal, anomalous) -> np.ndarray:  # (B,) AUROC of each resample: its weighted pair comparisons
        wins = (anomalous[None, :] > normal[:, None]) + 0.5 * (anomalous[None, :] == normal[:, None])  # (n, m)
        return np.einsum("bi,ij,bj->b", w_normal, wins, w_anomalous) / (n * m)

    d = draws(np.asarray(normal_a), np.asarray(anomalous_a)) - draws(np.asarray(normal_b), np.asarray(anomalous_b))
    out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(d, [(1 - ci) / 2, (1 + ci) / 2]))
    return out


def verdict(difference: dict) -> str:
    """Energy higher or lower than the baseline when the interval excludes 0; by the point value without one."""
    low, high = difference["ci_low"], difference["ci_high"]
    if low is None:
        return HIGHER if difference["difference"] > 0 else LOWER if difference["difference"] < 0 else UNCLEAR
    return HIGHER if low > 0 else LOWER if high < 0 else UNCLEAR


def alarm_token(row: int | None, min_prefix_tokens: int) -> int | None:
    """The index of the last token read by prefix row ``row`` (row r holds the tokens < r + min_prefix_tokens)."""
    return None if row is None else row + min_prefix_tokens - 1


def localisation(alarms: Sequence[int | None], splices: Sequence[int], normal_alarms: Sequence[int | None]) -> dict:
    """How the first alarm of each spliced sequence falls against its splice token.

    ``alarms`` (N,) the first alarm token of each spliced sequence (None: never), ``splices`` (N,) the first
    pasted token, ``normal_alarms`` the first alarm tokens of the in-distribution test sequences (any alarm there is
    false). ``detected``: alarm at or after the splice; ``early``: before it (a false alarm on the head);
    ``median_abs_error``: median |alarm − splice| over the sequences that alarmed; ``median_delay``: median of
    alarm − splice over the detected ones.
    """
    pairs = [(a, k) for a, k in zip(alarms, splices) if a is not None]
    errors = np.array([a - k for a, k in pairs], dtype=np.float64)
    n = len(splices)
    return {"n": n, "alarmed": len(pairs) / n, "detected": float(np.sum(errors >= 0) / n),
            "early": float(np.sum(errors < 0) / n),
            "median_abs_error": float(np.median(np.abs(errors))) if len(errors) else None,
            "median_delay": float(np.median(errors[errors >= 0])) if np.any(errors >= 0) else None,
            "normal_alarmed": float(np.mean([a is not None for a in normal_alarms])) if normal_alarms else None}


def best_method(table: list[dict], feature_sets: Sequence[str]) -> str:
    """The method with the highest mean AUROC over anomaly types on the first feature set that is not the
    baseline (the energy set by default)."""
    energy = next((fs for fs in feature_sets if fs != BASELINE), feature_sets[0])
    by_method: dict[str, list[float]] = {}
    for row in table:
        if row["feature_set"] == energy:
            by_method.setdefault(row["method"], []).append(row["auroc"])
    return max(by_method, key=lambda m: (np.mean(by_method[m]), -list(by_method).index(m)))


def evaluate(monitors: dict[tuple[str, str], EnergyMonitor], stream_monitors: dict[tuple[str, str], EnergyMonitor],
             tables: dict[str, FeatureTable], prefixes: dict[str, list[FeatureTable] | None],
             splice_tokens: Sequence[int], *, anomalies: Sequence[str], test: str, spliced: str, target_fpr: float,
             min_prefix_tokens: int, n_bootstrap: int, seed: int) -> tuple[dict, dict]:
    """(the evaluation for results.json, the scores behind it for the figures).

    ``monitors`` {(feature set, method): fitted, calibrated monitor}, ``stream_monitors`` the same for the sets
    of streaming features, calibrated per trace; ``tables`` the feature table of the in-distribution ``test`` set
    and of every anomaly type; ``prefixes`` the prefix tables of the ``test`` and ``spliced`` sets, whose first
    alarms localise the splices.
    """
    feature_sets = list(dict.fromkeys(fs for fs, _ in monitors))
    scores: dict = {"sets": {}, "thresholds": {}, "traces": {}, "splice_tokens": list(splice_tokens),
                    "min_prefix_tokens": min_prefix_tokens}
    summary, table, places = [], [], []
    for (fs, m), monitor in monitors.items():
        normal = monitor.anomaly_score(tables[test])
        per_set = scores["sets"].setdefault(fs, {}).setdefault(m, {test: normal.tolist()})
        scores["thresholds"].setdefault(fs, {})[m] = float(monitor.threshold_)
        summary.append({"feature_set": fs, "method": m, "threshold": float(monitor.threshold_),
                        "realised_fpr": float(np.mean(monitor.predict(tables[test]) == -1)), "n_test": len(normal)})
        for kind in anomalies:
            anomalous = monitor.anomaly_score(tables[kind])
            per_set[kind] = anomalous.tolist()
            table.append({"anomaly": kind, "feature_set": fs, "method": m, "auroc": float(auroc(normal, anomalous)),
                          "tpr_at_fpr": float(tpr_at_fpr(normal, anomalous, fpr=target_fpr)),
                          "tpr_calibrated": float(np.mean(monitor.predict(tables[kind]) == -1)), "n": len(anomalous)})
    for (fs, m), monitor in stream_monitors.items():
        first = [alarm_token(monitor.first_alarm(p), min_prefix_tokens) for p in prefixes[spliced]]
        normal_first = [alarm_token(monitor.first_alarm(p), min_prefix_tokens) for p in prefixes[test]]
        places.append({"feature_set": fs, "method": m, "threshold": float(monitor.threshold_),
                       **localisation(first, splice_tokens, normal_first)})
        trace = prefixes[spliced][0]  # the first spliced sequence, token by token
        scores["traces"].setdefault(fs, {})[m] = {
            "tokens": [alarm_token(r, min_prefix_tokens) for r in range(len(trace))],
            "scores": monitor.anomaly_score(trace).tolist(), "splice": int(splice_tokens[0]),
            "threshold": float(monitor.threshold_), "first_alarm": first[0]}
    comparison = []
    if BASELINE in feature_sets:
        sets = scores["sets"]
        for fs in (f for f in feature_sets if f != BASELINE):
            for m in sets[fs]:
                for kind in anomalies:
                    diff = paired_auroc_difference(
                        np.array(sets[fs][m][test]), np.array(sets[fs][m][kind]),
                        np.array(sets[BASELINE][m][test]), np.array(sets[BASELINE][m][kind]), n_boot=n_bootstrap,
                        seed=seed)
                    comparison.append({"anomaly": kind, "feature_set": fs, "method": m, **diff,
                                       "verdict": verdict(diff)})
    evaluation = {"monitors": summary, "table": table, "comparison": comparison, "localisation": places,
                  "best_method": best_method(table, feature_sets), "baseline": BASELINE}
    return evaluation, scores
