"""Grokking detection on logged training curves, as pure numpy: when generalisation starts and completes, where a
smoothed curve (the attention's specific heat C) peaks before then, and the lead time between the two.

The rules (``rules()`` writes them into every result, so a table always says how its epochs were found):

* onset: the first logged epoch whose test accuracy is >= ``ONSET_ACC`` (0.5);
* grokked: the first logged epoch whose test accuracy is >= ``GROKKED_ACC`` (0.95);
* C peak: the logged epoch where C, smoothed by a centred moving average over ``window`` logged points (fewer at
  the ends of the curve: the mean of the points there are), is largest among the epochs up to the horizon; the
  earliest such epoch on a tie; NaN values are skipped;
* horizon: the grokked epoch when the run reaches it (a peak after generalisation has completed cannot announce
  it), else the run's last logged epoch. A peak on the horizon's own epoch is flagged (``peak_at_horizon``): C was
  still rising there, so the epoch bounds the peak rather than locating it;
* lead = onset − C peak, in epochs: positive when the peak precedes the onset. A run with no onset (it never
  grokked) has no lead: None, never a number.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError, TrajectoryError

ONSET_ACC = 0.5  # test accuracy that marks the onset of generalisation
GROKKED_ACC = 0.95  # test accuracy that marks generalisation as complete
DEFAULT_WINDOW = 5  # logged points in the centred moving average of C


def _curve(epochs, values, name: str) -> tuple[np.ndarray, np.ndarray]:
    e, v = np.asarray(epochs), np.asarray(values, dtype=np.float64)
    if e.ndim != 1 or v.shape != e.shape:
        raise TrajectoryError(f"{name} {v.shape} must be one value per logged epoch {e.shape}; pass 1-D sequences "
                              "of equal length")
    if e.size > 1 and not bool((np.diff(e) > 0).all()):
        raise TrajectoryError(f"epochs must increase strictly, got {e.tolist()[:8]}...; pass the rows in log order")
    return e, v


def first_reaching(epochs, values, threshold: float) -> int | None:
    """The first epoch whose value is >= ``threshold``, or None when none is (NaN never counts)."""
    e, v = _curve(epochs, values, "values")
    hits = np.flatnonzero(v >= threshold)
    return int(e[hits[0]]) if hits.size else None


def moving_average(values, window: int) -> np.ndarray:
    """The centred moving average over ``window`` (odd) points; near the ends, the mean of the points the window
    covers; NaN values are skipped (a window of NaN only stays NaN)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ConfigError("smooth_window", f"must be an odd number of logged points >= 1, got {window!r}")
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    half = window // 2
    kernel = np.ones(window)
    sums = np.convolve(np.pad(np.where(ok, v, 0.0), half), kernel, mode="valid")  # (n,)
    counts = np.convolve(np.pad(ok.astype(np.float64), half), kernel, mode="valid")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def peak_epoch(epochs, values, *, window: int = DEFAULT_WINDOW, horizon: int | None = None) -> int | None:
    """The epoch where the smoothed ``values`` peak among the epochs <= ``horizon`` (all without one); the
    earliest on a tie; None when no finite value lies in range."""
    e, v = _curve(epochs, values, "values")
    smooth = moving_average(v, window)
    keep = np.isfinite(smooth) & (e <= horizon if horizon is not None else True)
    if not keep.any():
        return None
    return int(e[np.flatnonzero(keep)[np.argmax(smooth[keep])]])


@dataclass
class Grokking:
    """What the detector finds in one run (epochs are logged epochs; None where the rule finds nothing)."""

    onset: int | None  # first epoch with test accuracy >= ONSET_ACC
    grokked: int | None  # first epoch with test accuracy >= GROKKED_ACC
    heat_peak: int | None  # epoch of the smoothed C's maximum up to the horizon
    horizon: int | None  # the last epoch the peak search sees
    heat_peak_value: float | None  # the smoothed C at its peak
    peak_at_horizon: bool = False  # the peak is the last epoch searched: C still rose there (a bound, not a peak)

    def __post_init__(self):
        if self.onset is not None and self.grokked is not None and self.grokked < self.onset:
            raise TrajectoryError(f"grokked epoch {self.grokked} precedes onset {self.onset}: the thresholds are "
                                  "crossed in order, so these did not come from one curve")

    @property
    def lead(self) -> int | None:
        """onset − C peak (epochs); positive: the peak precedes the onset; None without an onset or a peak."""
        return None if self.onset is None or self.heat_peak is None else self.onset - self.heat_peak

    @property
    def peak_precedes_onset(self) -> bool | None:
        return None if self.lead is None else self.lead > 0

    def as_dict(self) -> dict:
        return {**asdict(self), "lead": self.lead, "peak_precedes_onset": self.peak_precedes_onset}


def detect_grokking(epochs, test_acc, heat, *, window: int = DEFAULT_WINDOW, onset_acc: float = ONSET_ACC,
                    grokked_acc: float = GROKKED_ACC) -> Grokking:
    """Onset, grokked epoch, C peak (up to the horizon) and lead of one run's logged curves, by the module's
    rules; ``epochs``, ``test_acc`` and ``heat`` are one value per logged row."""
    e, acc = _curve(epochs, test_acc, "test_acc")
    _curve(e, heat, "heat")
    if e.size == 0:
        raise TrajectoryError("no logged rows: the run logged nothing to detect grokking in; train it first")
    onset, grokked = first_reaching(e, acc, onset_acc), first_reaching(e, acc, grokked_acc)
    horizon = grokked if grokked is not None else int(e[-1])
    peak = peak_epoch(e, heat, window=window, horizon=horizon)
    value = None if peak is None else float(moving_average(heat, window)[np.flatnonzero(e == peak)[0]])
    return Grokking(onset, grokked, peak, horizon, value, peak_at_horizon=peak is not None and peak == horizon)


def rules(window: int = DEFAULT_WINDOW) -> dict[str, str]:
    """The detection rules in words, for a results file."""
    return {
        "onset": f"first logged epoch with test accuracy >= {ONSET_ACC}",
        "grokked": f"first logged epoch with test accuracy >= {GROKKED_ACC}",
        "heat_peak": f"logged epoch of the maximum of C after a centred moving average over {window} logged points "
                     "(shrinking at the ends), at epochs <= the horizon; earliest on a tie",
        "horizon": "the grokked epoch when reached, else the last logged epoch; a peak on it is flagged "
                   "(peak_at_horizon: C still rising, a bound rather than a peak)",
        "lead": "onset - heat_peak in epochs (positive: the peak precedes the onset); None without an onset",
    }
