"""Change-point detection on a token-by-token trace of energy features: where in a sequence the text turns
anomalous, not only whether it does (no I/O).

A monitor of running means (``prefix_features`` without a window) sees a change halfway through a sequence
diluted by every token before it, so it alarms late or never. ``ChangePointMonitor`` instead scores sliding-window
rows (``prefix_features(window=W)``: the features of each prefix's last W steps) with an ``EnergyMonitor`` fitted
on the windows of in-distribution traces, and accumulates the standardised scores with Page's one-sided CUSUM:

    z_r = (s_r − μ) / σ          s_r the window monitor's anomaly score of row r; μ, σ its mean and std over the
                                 fit traces' rows
    C_r = max(0, C_{r−1} + z_r − drift),  C_{−1} = 0

An in-distribution trace keeps C near 0 (E z = 0 < drift); a lasting rise of the scores by more than ``drift`` standard
deviations makes C grow linearly until it crosses ``threshold_``. The first row with C_r > threshold_ is the alarm,
and the change point is the first row of the excursion that crossed (the row after C's last 0 before the alarm):
Page's estimate of where the rise began, which does not wait for the alarm's detection delay. ``threshold_`` is
calibrated so that ``target_fpr`` of held-out in-distribution traces alarm anywhere ("higher" quantile of their
maxima of C, as ``EnergyMonitor.calibrate`` on one row per trace).

Row r of a trace read the tokens < r + min_tokens of its sequence (``prefix_features``); the caller maps rows to
tokens. Persistence is the window monitor's ``state()`` under "monitor." plus the CUSUM's numbers: no pickle.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..checks import check_range
from ..errors import CheckpointError, ConfigError, TrajectoryError
from .monitor import EnergyMonitor
from .monitor_features import FeatureTable

STATE_FORMAT = "lagrangian-lens-change-point/1"
DRIFT = 0.5  # the CUSUM's reference drift in standard deviations: half of the smallest rise it is built to catch


def _stacked(traces: Sequence[FeatureTable], action: str) -> FeatureTable:
    """All rows of ``traces`` in one table (their names must agree)."""
    if not traces:
        raise TrajectoryError(f"{action} needs at least one trace (prefix_features of a sequence); got none")
    names = traces[0].names
    odd = [i for i, t in enumerate(traces) if t.names != names]
    if odd:
        raise TrajectoryError(f"{action}: traces {odd[:10]} have features {traces[odd[0]].names}, trace 0 {names}; "
                              "compute every trace with the same prefix_features call")
    return FeatureTable(np.concatenate([t.values for t in traces]), names)


class ChangePointMonitor:
    """CUSUM change-point detection on window-feature traces (module docstring).

    ``features``, ``method``, ``seed``: the window monitor's (``EnergyMonitor``). ``drift``: the CUSUM's reference
    drift in standard deviations of the window score. ``target_fpr``: the share of held-out traces ``calibrate``
    lets alarm anywhere.
    """

    def __init__(self, features: str | Sequence[str] = "streaming", method: str = "mahalanobis",
                 drift: float = DRIFT, target_fpr: float = 0.05, seed: int = 0):
        self.features = features if isinstance(features, str) else tuple(features)
        self.method = method
        self.drift = drift
        self.target_fpr = target_fpr
        self.seed = seed
        self._window_monitor()  # validates features, method, target_fpr and seed
        check_range("drift", drift, low=0, high=np.inf, high_open=True)

    def _window_monitor(self) -> EnergyMonitor:
        return EnergyMonitor(self.features, self.method, self.target_fpr, self.seed)

    def fit(self, traces: Sequence[FeatureTable]) -> ChangePointMonitor:
        """Fit the window monitor on every row of in-distribution ``traces`` and learn its scores' mean and std."""
        rows = _stacked(traces, "fit")
        self.monitor_ = self._window_monitor().fit(rows)
        scores = self.monitor_.anomaly_score(rows)
        self.score_mean_, self.score_scale_ = float(scores.mean()), float(scores.std()) or 1.0
        self.__dict__.pop("threshold_", None)
        return self

    def calibrate(self, heldout_traces: Sequence[FeatureTable]) -> ChangePointMonitor:
        """Set ``threshold_`` to the "higher" (1 - target_fpr) quantile of the held-out traces' maxima of C."""
        peaks = -self.score_samples(heldout_traces)
        self.threshold_ = float(np.quantile(peaks, 1 - self.target_fpr, method="higher"))
        return self

    # -- scoring -------------------------------------------------------------------------------------------------

    def anomaly_score(self, trace: FeatureTable) -> np.ndarray:
        """(R,) the CUSUM statistic C_r of each row of one trace (higher = more anomalous)."""
        return self._cusum(trace)[0]

    def _cusum(self, trace: FeatureTable) -> tuple[np.ndarray, np.ndarray]:
        """(C, start): C_r per row, and the first row of the excursion C_r belongs to (r + 1 where C_r = 0)."""
        self._check_fitted("anomaly_score")
        z = (self.monitor_.anomaly_score(trace) - self.score_mean_) / self.score_scale_  # (R,)
        c, start = np.empty_like(z), np.empty(z.shape, dtype=np.int64)
        level, begun = 0.0, 0
        for r, step in enumerate(z - self.drift):
            if level == 0.0:
                begun = r  # an excursion can only begin where the statistic stood at 0
            level = max(0.0, level + step)
            c[r], start[r] = level, begun if level > 0 else r + 1
        return c, start

    def score_samples(self, traces: Sequence[FeatureTable]) -> np.ndarray:
        """(N,) −max_r C_r of each trace: higher = more normal (scikit-learn's convention)."""
        if not traces:
            raise TrajectoryError("score_samples needs at least one trace; got none")
        return np.array([-float(self.anomaly_score(t).max()) for t in traces])

    def score(self, traces: Sequence[FeatureTable]) -> float:
        """Mean ``score_samples`` over the traces."""
        return float(np.mean(self.score_samples(traces)))

    def predict(self, traces: Sequence[FeatureTable]) -> np.ndarray:
        """(N,) int: +1 a trace that never alarms, -1 one that does."""
        threshold = self._threshold("predict")
        return np.where(-self.score_samples(traces) > threshold, -1, 1)

    def first_alarm(self, trace: FeatureTable) -> int | None:
        """The first row whose C exceeds ``threshold_``; None when none does."""
        alarms = np.flatnonzero(self.anomaly_score(trace) > self._threshold("first_alarm"))
        return int(alarms[0]) if alarms.size else None

    def change_point(self, trace: FeatureTable) -> int | None:
        """The first row of the excursion that raised the first alarm (Page's estimate of the change); None
        without an alarm."""
        c, start = self._cusum(trace)
        alarms = np.flatnonzero(c > self._threshold("change_point"))
        return int(start[alarms[0]]) if alarms.size else None

    # -- persistence ---------------------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able metadata): the window monitor's state under "monitor.", and the CUSUM's numbers."""
        self._check_fitted("state")
        arrays, meta = self.monitor_.state()
        return ({f"monitor.{k}": v for k, v in arrays.items()},
                {"format": STATE_FORMAT, "drift": self.drift, "target_fpr": self.target_fpr,
                 "score_mean": self.score_mean_, "score_scale": self.score_scale_,
                 "threshold": getattr(self, "threshold_", None), "monitor": meta})

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> ChangePointMonitor:
        """The monitor ``state()`` described, scoring exactly as it did."""
        if meta.get("format") != STATE_FORMAT:
            raise CheckpointError(f"change-point state format {meta.get('format')!r} is not {STATE_FORMAT!r}: save "
                                  "it again with ChangePointMonitor.state() of this version")
        inner = EnergyMonitor.from_state({k.removeprefix("monitor."): v for k, v in arrays.items()
                                          if k.startswith("monitor.")}, meta["monitor"])
        monitor = cls(inner.features, inner.method, meta["drift"], meta["target_fpr"], inner.seed)
        monitor.monitor_ = inner
        monitor.score_mean_, monitor.score_scale_ = float(meta["score_mean"]), float(meta["score_scale"])
        if meta.get("threshold") is not None:
            monitor.threshold_ = float(meta["threshold"])
        return monitor

    # -- helpers -------------------------------------------------------------------------------------------------

    def _check_fitted(self, action: str) -> None:
        if not hasattr(self, "monitor_"):
            raise ConfigError("fit", f"the change-point monitor is not fitted: call fit(traces) on in-distribution "
                                     f"window traces before {action}")

    def _threshold(self, action: str) -> float:
        self._check_fitted(action)
        if not hasattr(self, "threshold_"):
            raise ConfigError("calibrate", f"the change-point monitor has no threshold: call calibrate(heldout_traces) "
                                           f"after fit, before {action}")
        return self.threshold_
