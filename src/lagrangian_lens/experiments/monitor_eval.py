"""The monitor experiment's fitting and evaluation, from feature tables: the sequence and stream monitors, then AUROC
and TPR per anomaly type, feature set and method, the paired comparison with the perplexity baseline, the realised
FPR at the calibrated threshold, and splice detection and localisation from the token-by-token traces. No I/O.

Three kinds of stream monitor read a sequence token by token (``STREAM_KINDS``), each calibrated so that the target
FPR of held-out traces alarm anywhere:

* ``prefix``: the sequence monitor (fitted on whole sequences) scoring each prefix's running means;
* ``window``: a monitor fitted on the calibration traces' windows, scoring each prefix's last W steps;
* ``cusum``: Page's CUSUM on that window score (``analysis.monitor_stream.ChangePointMonitor``), whose change
  point estimates where the rise began.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from ..analysis.monitor import EnergyMonitor, FeatureTable, auroc, tpr_at_fpr
from ..analysis.monitor_stream import ChangePointMonitor

BASELINE = "perplexity"  # the feature set energy has to beat: mean log point-perplexity
CI = 0.95  # level of the interval of every AUROC difference
# A paired comparison's verdict: the first side's AUROC (a feature set; a trained model) against the second's (the
# perplexity baseline; the random-weight twin), by the interval of the difference.
HIGHER, LOWER, UNCLEAR = "higher", "lower", "no clear difference"
STREAM_KINDS = ("prefix", "window", "cusum")
TRACE_OF = {"prefix": "prefix", "window": "window", "cusum": "window"}  # the traces each stream kind reads


def fit_monitors(feature_sets: dict[str, tuple[str, ...]], methods: Sequence[str], fit: FeatureTable,
                 heldout: FeatureTable, *, target_fpr: float, seed: int) -> dict[tuple[str, str], EnergyMonitor]:
    """One monitor per (feature set, method): fitted on ``fit``, its threshold calibrated on ``heldout``.
    ``feature_sets``: {set name: its feature names}."""
    return {(fs, m): EnergyMonitor(names, method=m, target_fpr=target_fpr, seed=seed).fit(fit).calibrate(heldout)
            for fs, names in feature_sets.items() for m in methods}


def fit_stream_monitors(feature_sets: dict[str, tuple[str, ...]], methods: Sequence[str], fit: FeatureTable,
                        fit_traces: dict[str, list[FeatureTable]], heldout_traces: dict[str, list[FeatureTable]], *,
                        target_fpr: float, seed: int, drift: float) -> dict[tuple[str, str, str], object]:
    """{(kind, feature set, method): monitor} of every stream kind (module docstring) for streaming feature sets.

    ``fit`` the calibration set's whole-sequence rows (the prefix monitor's fit), ``fit_traces`` and
    ``heldout_traces`` {"prefix" | "window": one trace per sequence} of the calibration and held-out sets. A trace
    alarms when its worst row does, so every threshold is calibrated on one row per held-out trace, its worst: a
    threshold calibrated on whole sequences would alarm on most traces, a short prefix's features being noisier.
    """
    out = {}
    for fs, names in feature_sets.items():
        for m in methods:
            prefix = EnergyMonitor(names, method=m, target_fpr=target_fpr, seed=seed).fit(fit)
            out["prefix", fs, m] = prefix.calibrate(worst_prefixes(prefix, heldout_traces["prefix"]))
            cusum = ChangePointMonitor(names, m, drift=drift, target_fpr=target_fpr, seed=seed).fit(fit_traces["window"])
            # The window monitor is the CUSUM's own, fitted on the same window rows: a copy, calibrated on its own.
            window = copy.deepcopy(cusum.monitor_)
            out["window", fs, m] = window.calibrate(worst_prefixes(window, heldout_traces["window"]))
            out["cusum", fs, m] = cusum.calibrate(heldout_traces["window"])
    return out


def worst_prefixes(monitor: EnergyMonitor, prefixes: list[FeatureTable]) -> FeatureTable:
    """(N, F) one row per sequence: the features of its trace's row (prefix or window) with the highest anomaly
    score."""
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
    """Higher or lower than the other side when the interval excludes 0; by the point value without one."""
    low, high = difference["ci_low"], difference["ci_high"]
    if low is None:
        return HIGHER if difference["difference"] > 0 else LOWER if difference["difference"] < 0 else UNCLEAR
    return HIGHER if low > 0 else LOWER if high < 0 else UNCLEAR


def alarm_token(row: int | None, min_prefix_tokens: int) -> int | None:
    """The index of the last token read by prefix row ``row`` (row r holds the tokens < r + min_prefix_tokens)."""
    return None if row is None else row + min_prefix_tokens - 1


def localisation(alarms: Sequence[int | None], splices: Sequence[int], normal_alarms: Sequence[int | None], *,
                 changes: Sequence[int | None] | None = None, spans: Sequence[tuple[int, int]] | None = None) -> dict:
    """How the first alarm of each spliced sequence falls against its splice token.

    ``alarms`` (N,) the first alarm token of each spliced sequence (None: never), ``splices`` (N,) the first
    pasted token, ``normal_alarms`` the first alarm tokens of the in-distribution test sequences (any alarm there is
    false). ``detected``: alarm at or after the splice; ``early``: before it (a false alarm on the head);
    ``median_abs_error``: median |alarm − splice| over the sequences that alarmed; ``median_delay``: median of
    alarm − splice over the detected ones. ``changes`` (N,) a change-point monitor's estimate of where the change
    began, per alarmed sequence: ``median_abs_change_error`` is its median |change − splice|. ``spans`` (N,) the
    first and last token each trace scores: ``chance_abs_error`` is the median over the alarmed sequences of the
    error a token drawn uniformly from the span makes on average, the level a localiser must beat.
    """
    alarmed = [i for i, a in enumerate(alarms) if a is not None]
    errors = np.array([alarms[i] - splices[i] for i in alarmed], dtype=np.float64)
    n = len(splices)

    def median(x) -> float | None:
        return float(np.median(x)) if len(x) else None

    out = {"n": n, "alarmed": len(alarmed) / n, "detected": float(np.sum(errors >= 0) / n),
           "early": float(np.sum(errors < 0) / n), "median_abs_error": median(np.abs(errors)),
           "median_delay": median(errors[errors >= 0]),
           "normal_alarmed": float(np.mean([a is not None for a in normal_alarms])) if normal_alarms else None}
    if changes is not None:
        out["median_abs_change_error"] = median([abs(changes[i] - splices[i]) for i in alarmed])
    if spans is not None:
        out["chance_abs_error"] = median([np.mean(np.abs(np.arange(spans[i][0], spans[i][1] + 1) - splices[i]))
                                          for i in alarmed])
    return out


def best_method(table: list[dict], feature_sets: Sequence[str]) -> str:
    """The method with the highest mean AUROC over anomaly types on the first feature set that is not the
    baseline (the energy set by default)."""
    energy = next((fs for fs in feature_sets if fs != BASELINE), feature_sets[0])
    by_method: dict[str, list[float]] = {}
    for row in table:
        if row["feature_set"] == energy:
            by_method.setdefault(row["method"], []).append(row["auroc"])
    return max(by_method, key=lambda m: (np.mean(by_method[m]), -list(by_method).index(m)))


def evaluate(monitors: dict[tuple[str, str], EnergyMonitor], stream_monitors: dict[tuple[str, str, str], object],
             tables: dict[str, FeatureTable], traces: dict[str, dict[str, list[FeatureTable]] | None],
             splice_tokens: Sequence[int], *, anomalies: Sequence[str], test: str, spliced: str, target_fpr: float,
             min_prefix_tokens: int, n_bootstrap: int, seed: int) -> tuple[dict, dict]:
    """(the evaluation for results.json, the scores behind it for the figures).

    ``monitors`` {(feature set, method): fitted, calibrated monitor}, ``stream_monitors`` {(kind, feature set,
    method): monitor} (``fit_stream_monitors``), calibrated per trace; ``tables`` the feature table of the
    in-distribution ``test`` set and of every anomaly type; ``traces`` {set: {"prefix" | "window": its traces}} of
    the ``test`` and ``spliced`` sets, whose first alarms localise the splices. A stream monitor's AUROC compares
    its traces' peak scores (spliced against test): whether it tells a spliced sequence from an intact one at all.
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
    for (kind, fs, m), monitor in stream_monitors.items():
        spliced_traces, test_traces = traces[spliced][TRACE_OF[kind]], traces[test][TRACE_OF[kind]]
        first = [alarm_token(monitor.first_alarm(p), min_prefix_tokens) for p in spliced_traces]
        normal_first = [alarm_token(monitor.first_alarm(p), min_prefix_tokens) for p in test_traces]
        changes = ([alarm_token(monitor.change_point(p), min_prefix_tokens) for p in spliced_traces]
                   if kind == "cusum" else None)
        spans = [(min_prefix_tokens - 1, min_prefix_tokens - 2 + len(p)) for p in spliced_traces]
        peaks = {name: np.array([monitor.anomaly_score(p).max() for p in t])
                 for name, t in (("test", test_traces), ("spliced", spliced_traces))}
        places.append({"kind": kind, "feature_set": fs, "method": m, "threshold": float(monitor.threshold_),
                       "auroc": float(auroc(peaks["test"], peaks["spliced"])),
                       **localisation(first, splice_tokens, normal_first, changes=changes, spans=spans)})
        trace = spliced_traces[0]  # the first spliced sequence, token by token
        scores["traces"].setdefault(kind, {}).setdefault(fs, {})[m] = {
            "tokens": [alarm_token(r, min_prefix_tokens) for r in range(len(trace))],
            "scores": monitor.anomaly_score(trace).tolist(), "splice": int(splice_tokens[0]),
            "threshold": float(monitor.threshold_), "first_alarm": first[0],
            "change_point": changes[0] if changes else None}
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


def twin_comparison(trained: dict, twin: dict, *, anomalies: Sequence[str], test: str, n_bootstrap: int,
                    seed: int) -> list[dict]:
    """Per (feature set, method, anomaly type) of two models' sequence monitors, the trained model's AUROC against
    its random-weight twin's on the same sequences (the sets are token ids, the same for both), with the paired
    bootstrap interval of the difference: whether the number separates training from architecture alone.
    ``trained``, ``twin``: the scores ``evaluate`` returned for each model; in each row ``auroc`` is the trained
    model's and ``baseline_auroc`` the twin's."""
    rows = []
    for fs, by_method in trained["sets"].items():
        for m, own in by_method.items():
            other = twin["sets"].get(fs, {}).get(m)
            if other is None:
                continue
            for kind in anomalies:
                diff = paired_auroc_difference(np.array(own[test]), np.array(own[kind]), np.array(other[test]),
                                               np.array(other[kind]), n_boot=n_bootstrap, seed=seed)
                rows.append({"anomaly": kind, "feature_set": fs, "method": m, **diff, "verdict": verdict(diff)})
    return rows

