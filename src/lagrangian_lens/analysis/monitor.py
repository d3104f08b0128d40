"""The energy anomaly monitor: a density model of per-sequence energy features with a calibrated threshold, its
persistence as plain arrays, and the AUROC and TPR-at-FPR of anomaly scores (no I/O).

The features come from ``analysis.monitor_features`` (re-exported here); change-point detection along a
sequence's window trace is ``analysis.monitor_stream.ChangePointMonitor``. ``EnergyMonitor`` follows scikit-learn's
conventions: settings in ``__init__``, learned attributes ending in ``_``, ``score_samples`` higher = more normal,
``predict`` +1 inlier / -1 anomaly. Features are standardised with the fit set's mean and std (a constant feature
keeps scale 1, as ``StandardScaler`` does), then scored by one scikit-learn density model:

* ``mahalanobis``: ``EmpiricalCovariance``, score = -squared Mahalanobis distance. A ridge of ``RIDGE`` (relative to
  the unit variances) is added to the covariance before inverting it: the energy set is singular by construction
  (mean_H = mean_K + mean_V on every row), and with the ridge the null direction weighs nothing as long as new
  rows keep the identity, while a merely ill-conditioned direction cannot blow the distances up.
* ``isolation-forest``: ``IsolationForest(random_state=seed)`` with its defaults.
* ``gaussian-mixture``: ``GaussianMixture`` (full covariances, ``random_state=seed``) with the number of components
  of lowest BIC among 1..4 (at most one per fit row); score = log-density.

Calibration: ``threshold_`` is the (1 - target_fpr) quantile of the held-out anomaly scores with numpy's "higher"
rule, an observed score, so at most a target_fpr share of the held-out rows lie strictly above it (ties only lower
the share); a fresh in-distribution row exceeds it with probability (n - j)/(n + 1) for the j-th (0-based) order
statistic j = ceil((n - 1)(1 - target_fpr)), about target_fpr.

Persistence (``state`` / ``from_state``, no pickle): the scaler and the Mahalanobis and mixture models are plain
arrays, set back onto a fresh estimator. An isolation forest's trees are not, so its state keeps the standardised
fit rows and the hyper-parameters and ``from_state`` refits with the same ``random_state``, then checks that the
rebuilt forest scores the fit rows as stored (max abs difference <= 1e-12): another scikit-learn version (its
version is in the metadata) or a tampered state fails there with a ``CheckpointError`` instead of scoring quietly
differently.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sklearn
from sklearn.covariance import EmpiricalCovariance
from sklearn.ensemble import IsolationForest
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from ..checks import check_choice, check_range
from ..errors import CheckpointError, ConfigError, TrajectoryError
from .monitor_features import FEATURE_SETS, FEATURES, FeatureTable, prefix_features, sequence_features

__all__ = ["FEATURES", "FEATURE_SETS", "METHODS", "EnergyMonitor", "FeatureTable", "auroc", "prefix_features",
           "sequence_features", "tpr_at_fpr"]

METHODS = ("mahalanobis", "isolation-forest", "gaussian-mixture")
STATE_FORMAT = "lagrangian-lens-monitor/1"
RIDGE = 1e-6  # added to the standardised covariance's diagonal (module docstring)
MAX_COMPONENTS = 4  # the mixture's BIC search runs over 1..MAX_COMPONENTS components
REFIT_TOLERANCE = 1e-12  # a refitted isolation forest must reproduce its stored scores this closely
META_KEYS = ("method", "requested_features", "features", "target_fpr", "seed", "estimator_params")
ESTIMATORS = {"mahalanobis": EmpiricalCovariance, "isolation-forest": IsolationForest,
              "gaussian-mixture": GaussianMixture}
# The fitted arrays that fully define each plain-array estimator's scores.
FITTED_ARRAYS = {"mahalanobis": ("location_", "covariance_", "precision_"),
                 "gaussian-mixture": ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_")}


def _fit_estimator(method: str, z: np.ndarray, seed: int):
    """(the fitted estimator, the BIC of each candidate mixture or None) on standardised rows ``z`` (N, F)."""
    if method == "mahalanobis":
        est = EmpiricalCovariance().fit(z)
        est.covariance_ = est.covariance_ + RIDGE * np.eye(z.shape[1])
        est.precision_ = np.linalg.inv(est.covariance_)
        return est, None
    if method == "isolation-forest":
        return IsolationForest(random_state=seed).fit(z), None
    fits = [GaussianMixture(k, covariance_type="full", random_state=seed).fit(z)
            for k in range(1, min(MAX_COMPONENTS, z.shape[0]) + 1)]
    bic = np.array([g.bic(z) for g in fits])  # (K,)
    return fits[int(np.argmin(bic))], bic  # argmin: the fewest components among equal BICs


class EnergyMonitor:
    """An anomaly detector on per-sequence features (module docstring): fit on in-distribution rows, calibrate the
    threshold on held-out ones, then score, predict or trace prefixes.

    ``features``: a set name of FEATURE_SETS, one feature name, or a list of names. "all" takes every feature the
    fit table holds that is not entirely NaN (so the specific heat only when it was computed, the entropy only when
    kept). ``target_fpr``: the held-out false-positive rate ``calibrate`` sets the threshold for.
    """

    def __init__(self, features: str | Sequence[str] = "energy", method: str = "mahalanobis",
                 target_fpr: float = 0.05, seed: int = 0):
        self.features = features if isinstance(features, str) else tuple(features)
        self.method = method
        self.target_fpr = target_fpr
        self.seed = seed
        self._requested_names()  # validates the request
        check_choice("method", method, METHODS)
        check_range("target_fpr", target_fpr, low=0, high=1, low_open=True, high_open=True)
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError("seed", f"must be an int >= 0, got {seed!r}")

    def _requested_names(self) -> tuple[str, ...]:
        """The requested feature names (FEATURE_SETS["all"] for "all", resolved against the table at fit)."""
        request = self.features
        if isinstance(request, str):
            if request in FEATURE_SETS:
                return FEATURE_SETS[request]
            request = (request,)
        unknown = [n for n in request if n not in FEATURES]
        if unknown or not request:
            raise ConfigError("features", f"{list(unknown or request)} is not a feature set or list of features; sets: "
                                          f"{', '.join(FEATURE_SETS)}; features: {', '.join(FEATURES)}")
        if len(set(request)) != len(request):
            raise ConfigError("features", f"{list(request)} repeats a feature; give each once")
        return tuple(request)

    # -- fitting -------------------------------------------------------------------------------------------------

    def fit(self, X: FeatureTable) -> EnergyMonitor:
        """Learn the standardisation and the density model from in-distribution rows; drops an earlier threshold."""
        names = self._requested_names()
        if self.features == "all":
            if not isinstance(X, FeatureTable):
                raise TrajectoryError("features='all' resolves against a FeatureTable's names; got a bare array")
            names = tuple(n for n in names if n in X.names and not np.isnan(X.values[:, X.names.index(n)]).all())
            if not names:
                raise TrajectoryError(f"features='all' finds no feature with values in the table ({list(X.names)}); "
                                      "compute them with sequence_features")
        raw = self._matrix(X, names)
        if raw.shape[0] < 2:
            raise TrajectoryError(f"fit needs at least 2 rows to estimate a spread; got {raw.shape[0]}")
        scaler = StandardScaler().fit(raw)
        self.feature_names_ = names
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_  # (F,) each; scale 1 where a feature is constant
        z = self._standardise(raw)
        self.estimator_, bic = _fit_estimator(self.method, z, self.seed)
        for stale in ("threshold_", "bic_", "fit_data_"):
            self.__dict__.pop(stale, None)
        if bic is not None:
            self.bic_ = bic  # (K,) BIC of 1..K components
        if self.method == "isolation-forest":
            self.fit_data_ = z  # (N, F) what its state rebuilds the forest from
        return self

    def calibrate(self, X_heldout: FeatureTable) -> EnergyMonitor:
        """Set ``threshold_`` to the "higher" (1 - target_fpr) quantile of held-out in-distribution anomaly scores."""
        scores = self.anomaly_score(X_heldout)
        if scores.size == 0:
            raise TrajectoryError("calibrate needs at least 1 held-out row; got an empty table")
        self.threshold_ = float(np.quantile(scores, 1 - self.target_fpr, method="higher"))
        return self

    # -- scoring -------------------------------------------------------------------------------------------------

    def score_samples(self, X: FeatureTable | np.ndarray) -> np.ndarray:
        """(N,) how normal each row is, higher = more normal (scikit-learn's convention).

        ``X``: a FeatureTable holding the fitted features (any order, more allowed), or an (N, F) array whose
        columns are ``feature_names_`` in order.
        """
        self._check_fitted("score_samples")
        z = self._standardise(self._matrix(X, self.feature_names_))
        if self.method == "mahalanobis":
            return -self.estimator_.mahalanobis(z)
        return self.estimator_.score_samples(z)

    def anomaly_score(self, X: FeatureTable | np.ndarray) -> np.ndarray:
        """(N,) -score_samples: higher = more anomalous."""
        return -self.score_samples(X)

    def predict(self, X: FeatureTable | np.ndarray) -> np.ndarray:
        """(N,) int: +1 inlier, -1 anomaly (anomaly score strictly above ``threshold_``)."""
        return np.where(self.anomaly_score(X) > self._threshold("predict"), -1, 1)

    def score(self, X: FeatureTable | np.ndarray) -> float:
        """Mean ``score_samples`` over the rows (higher = more normal)."""
        return float(np.mean(self.score_samples(X)))

    def first_alarm(self, prefixes: FeatureTable) -> int | None:
        """The first row of a prefix trace (``prefix_features``) whose anomaly score exceeds ``threshold_``;
        None when none does. Row r read the tokens < r + min_tokens."""
        alarms = np.flatnonzero(self.anomaly_score(prefixes) > self._threshold("first_alarm"))
        return int(alarms[0]) if alarms.size else None

    # -- persistence ---------------------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able metadata): everything ``from_state`` needs to rebuild this monitor's scores."""
        self._check_fitted("state")
        arrays = {"scaler.mean": self.mean_, "scaler.scale": self.scale_}
        if self.method == "isolation-forest":
            arrays |= {"fit_data": self.fit_data_, "check_scores": self.estimator_.score_samples(self.fit_data_)}
        else:
            arrays |= {f"estimator.{name}": getattr(self.estimator_, name) for name in FITTED_ARRAYS[self.method]}
        meta = {"format": STATE_FORMAT, "sklearn_version": sklearn.__version__, "method": self.method,
                "requested_features": self.features if isinstance(self.features, str) else list(self.features),
                "features": list(self.feature_names_), "target_fpr": self.target_fpr, "seed": self.seed,
                "threshold": getattr(self, "threshold_", None), "estimator_params": self.estimator_.get_params(),
                "bic": self.bic_.tolist() if hasattr(self, "bic_") else None}
        return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> EnergyMonitor:
        """The monitor ``state()`` described, scoring exactly as it did (an isolation forest refitted and checked)."""
        if meta.get("format") != STATE_FORMAT:
            raise CheckpointError(f"monitor state format {meta.get('format')!r} is not {STATE_FORMAT!r}: save it again "
                                  "with EnergyMonitor.state() of this version")
        absent = [k for k in META_KEYS if k not in meta]
        if absent:
            raise CheckpointError(f"monitor state metadata lacks {absent}: save it again with EnergyMonitor.state()")
        method = meta["method"]
        needed = ["scaler.mean", "scaler.scale"] + (["fit_data", "check_scores"] if method == "isolation-forest" else
                                                    [f"estimator.{n}" for n in FITTED_ARRAYS.get(method, ())])
        missing = [k for k in needed if k not in arrays]
        if missing:
            raise CheckpointError(f"monitor state lacks arrays {missing} for method {method!r}: save it again with "
                                  "EnergyMonitor.state()")
        a = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
        monitor = cls(meta["requested_features"], method, meta["target_fpr"], meta["seed"])
        monitor.feature_names_ = tuple(meta["features"])
        monitor.mean_, monitor.scale_ = a["scaler.mean"], a["scaler.scale"]
        estimator = ESTIMATORS[method](**meta["estimator_params"])
        if method == "isolation-forest":
            monitor.fit_data_ = a["fit_data"]
            estimator.fit(monitor.fit_data_)
            error = float(np.max(np.abs(estimator.score_samples(monitor.fit_data_) - a["check_scores"])))
            if not error <= REFIT_TOLERANCE:
                raise CheckpointError(f"the refitted isolation forest misses its stored scores by {error:.3g} "
                                      f"(> {REFIT_TOLERANCE}): saved with scikit-learn {meta['sklearn_version']}, "
                                      f"running {sklearn.__version__}, or the state was altered; refit the monitor")
        else:
            for name in FITTED_ARRAYS[method]:
                setattr(estimator, name, a[f"estimator.{name}"])
            estimator.n_features_in_ = len(monitor.feature_names_)
        monitor.estimator_ = estimator
        if meta.get("bic") is not None:
            monitor.bic_ = np.asarray(meta["bic"], dtype=np.float64)
        if meta.get("threshold") is not None:
            monitor.threshold_ = float(meta["threshold"])
        return monitor

    # -- helpers -------------------------------------------------------------------------------------------------

    def _check_fitted(self, action: str) -> None:
        if not hasattr(self, "estimator_"):
            raise ConfigError("fit", f"the monitor is not fitted: call fit(X) on in-distribution rows before {action}")

    def _threshold(self, action: str) -> float:
        self._check_fitted(action)
        if not hasattr(self, "threshold_"):
            raise ConfigError("calibrate", f"the monitor has no threshold: call calibrate(X_heldout) after fit, "
                                           f"before {action}")
        return self.threshold_

    def _standardise(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.mean_) / self.scale_  # (N, F)

    @staticmethod
    def _matrix(X: FeatureTable | np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """(N, F) the columns ``names`` of ``X``, refused with the feature and rows where any is NaN or infinite."""
        if isinstance(X, FeatureTable):
            values = X.select(names).values
        else:
            values = np.asarray(X, dtype=np.float64)
            if values.ndim != 2 or values.shape[1] != len(names):
                raise TrajectoryError(f"an array of features must be (N, {len(names)}) with columns {list(names)}; "
                                      f"got shape {values.shape}; pass a FeatureTable to select by name")
        bad = ~np.isfinite(values)
        if bad.any():
            col = int(np.flatnonzero(bad.any(0))[0])
            rows = np.flatnonzero(bad[:, col])
            fix = ("the trajectories kept no entropy: extract with keep_entropy=True" if names[col] == "mean_entropy"
                   else f"see FEATURES[{names[col]!r}] for when a sequence cannot define it")
            raise TrajectoryError(f"feature {names[col]!r} is NaN or infinite in {rows.size} of {len(values)} rows "
                                  f"(first {rows[:10].tolist()}) ({fix}); drop those rows or use features without it")
        return values


def _scores(name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ConfigError(name, f"must be a non-empty 1-D array of finite scores; got shape {x.shape} "
                                f"with {int((~np.isfinite(x)).sum())} non-finite")
    return x


def auroc(normal_scores, anomalous_scores) -> float:
    """P(anomalous > normal) + ½ P(tie) over all pairs of anomaly scores (Mann-Whitney), exactly."""
    normal = np.sort(_scores("normal_scores", normal_scores))
    anomalous = _scores("anomalous_scores", anomalous_scores)
    below = np.searchsorted(normal, anomalous, side="left")  # (M,) normal scores strictly below each anomalous one
    at_or_below = np.searchsorted(normal, anomalous, side="right")
    # Twice the Mann-Whitney U is an integer (exact in float64 up to 2**53 pairs): one division at the end.
    return float((below + at_or_below).sum() / (2 * normal.size * anomalous.size))


def tpr_at_fpr(normal_scores, anomalous_scores, fpr: float = 0.05) -> float:
    """Share of anomalous scores strictly above the threshold ``calibrate`` would set on ``normal_scores``: their
    "higher" (1 - fpr) quantile, at which at most an ``fpr`` share of the normal scores lies above."""
    check_range("fpr", fpr, low=0, high=1, low_open=True, high_open=True)
    threshold = np.quantile(_scores("normal_scores", normal_scores), 1 - fpr, method="higher")
    return float(np.mean(_scores("anomalous_scores", anomalous_scores) > threshold))

