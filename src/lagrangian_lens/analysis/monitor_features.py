"""The energy anomaly monitor's features: one row of per-sequence energy statistics per trajectory (no I/O).

A sequence's features are the energy paper's run metrics taken on that sequence alone: ``analyse_energy`` on the
one trajectory gives its K/V/H means, the within-sequence CV and drift of H, the log-EL medians, the attractor mean
and the entropy mean, each under the energy metric's own definition (``mechanics.energy_stats``); the STP analysis's
mean normal acceleration ‖a⊥‖ (``mechanics.kinematics``) is taken along the same states. The ``streaming`` features
need nothing beyond the trajectory's states and log-probabilities, so ``prefix_features`` updates them token by
token with running sums, for a trace that can localise where a sequence turns anomalous.

Specific heat. A sequence's attention specific heat is not computed here (it needs the attention capture); a caller
passes it in: ``analyse_thermo(captures, conv, n_boot=0).replicates["mean_specific_heat"]["units"]`` (B,) holds
each sequence's pooled ⟨C⟩ (over its layers, heads and queries), one capture per trajectory in the same order.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, TrajectoryError
from ..mechanics.energy import energy_series
from ..mechanics.kinematics import triplet_kinematics
from ..trajectories import Trajectory
from .energy import EnergyConventions, analyse_energy

FEATURES: dict[str, str] = {
    "mean_H": "mean log-energy H_t = K_t + V_t over the sequence's valid steps (mean_log_energy of its row)",
    "cv_H": "std/|mean| of H_t within the sequence (of E_t = exp H_t on the linear energy_scale; avg_trajectory_cv "
            "of its row; NaN below 2 valid steps)",
    "drift_H": "Σ ΔH / Σ |ΔH| over consecutive valid steps: +1 a monotone rise, -1 a fall, 0 none (drift_h of its row)",
    "mean_K": "mean log-kinetic energy K_t = ln ½‖h_t - h_{t-1}‖² over the valid steps (mean_log_kinetic)",
    "mean_V": "mean log point-perplexity V_t = -ln p(x_{t+1} | h_t) over the valid steps: the perplexity baseline",
    "el_residual": "median log-Euler-Lagrange residual ‖Δp - g‖/(‖Δp‖ + ‖g‖) of its steps (el_residual_median)",
    "el_cos": "median cos(Δp, g) of the log-Euler-Lagrange sides over its steps (el_cos_median)",
    "attractor": "mean count of distinct argmax tokens on its segments h_{t-1} -> h_t (attractor_unique_tokens_mean)",
    "mean_entropy": "mean entropy (nats) of p(. | h_t) at its steps' positions; NaN when the trajectory kept none",
    "stp_normal_acc": "mean normal acceleration ‖a⊥‖ over its valid token triplets at the energy site (analyse_stp's "
                      "mean_a_perp)",
    "specific_heat": "its attention specific heat ⟨C⟩ pooled over layers, heads and queries (analyse_thermo's units)",
}
ENERGY_FEATURES = ("mean_H", "cv_H", "drift_H", "mean_K", "mean_V", "el_residual", "el_cos", "attractor",
                   "mean_entropy", "stp_normal_acc")
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "energy": ENERGY_FEATURES,
    "perplexity": ("mean_V",),  # the baseline the energy features have to beat
    "all": tuple(FEATURES),  # a monitor asking for "all" takes the ones its fit table holds (see EnergyMonitor)
    "streaming": ("mean_H", "cv_H", "drift_H", "mean_K", "mean_V", "mean_entropy", "stp_normal_acc"),
    "heat": ("specific_heat",),  # the attention's specific heat alone (it needs the attention capture)
}
# Feature -> the energy metric of analyse_energy that defines it, taken on one sequence's row.
ENERGY_METRIC = {"mean_H": "mean_log_energy", "cv_H": "avg_trajectory_cv", "drift_H": "drift_h",
                 "mean_K": "mean_log_kinetic", "mean_V": "mean_log_ppl", "el_residual": "el_residual_median",
                 "el_cos": "el_cos_median", "attractor": "attractor_unique_tokens_mean", "mean_entropy": "mean_entropy"}


@dataclass
class FeatureTable:
    """Per-sequence features: one row per sequence, one column per named feature (NaN: not available)."""

    values: np.ndarray  # (N, F) float64
    names: tuple[str, ...]  # (F,) feature names, each a key of FEATURES
    labels: tuple[str, ...] | None = None  # (N,) the source or type of each row, when known

    def __post_init__(self):
        self.values = np.asarray(self.values, dtype=np.float64)
        self.names = tuple(self.names)
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise TrajectoryError(f"FeatureTable.values must be (N, F) = (N, {len(self.names)}) for names "
                                  f"{self.names}; got shape {self.values.shape}")
        unknown = [n for n in self.names if n not in FEATURES]
        if unknown:
            raise TrajectoryError(f"FeatureTable names {unknown} are not features; known: {', '.join(FEATURES)}")
        if len(set(self.names)) != len(self.names):
            raise TrajectoryError(f"FeatureTable names {self.names} repeat a feature; give each column once")
        if self.labels is not None:
            self.labels = tuple(self.labels)
            if len(self.labels) != len(self):
                raise TrajectoryError(f"FeatureTable.labels has {len(self.labels)} entries for {len(self)} rows; give "
                                      "one label per row or none")

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def n_features(self) -> int:
        return self.values.shape[1]

    def select(self, names: Sequence[str]) -> FeatureTable:
        """The columns ``names`` in that order (labels kept)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise TrajectoryError(f"the feature table has no {missing} (it holds {list(self.names)}): compute them "
                                  "with sequence_features (or prefix_features), or use a monitor of features it holds")
        return FeatureTable(self.values[:, [self.names.index(n) for n in names]], tuple(names), self.labels)


def _span(tr: Trajectory, conv: EnergyConventions) -> slice:
    return tr.continuation if conv.span == "continuation" else slice(0, tr.n_positions)


def _normal_acceleration(h: torch.Tensor) -> float:
    """Mean ‖a⊥‖ over the valid triplets of a path (T, d); NaN without one."""
    if h.shape[0] < 3:
        return math.nan
    k = triplet_kinematics(h)
    n = int(k["valid"].sum())
    return float(k["a_perp_norm"][k["valid"]].sum() / n) if n else math.nan


def sequence_features(trajectories: Sequence[Trajectory], readout: Callable, conv: EnergyConventions, *,
                      seed: int = 0, specific_heat: np.ndarray | None = None, device="cpu") -> FeatureTable:
    """Every energy feature of each trajectory (one teacher-forced pass), plus ``specific_heat`` (N,) when given.

    ``readout`` maps states at ``conv.site`` to logits on ``device`` (``trajectories.readout``). Each trajectory is
    analysed alone (``analyse_energy`` on it, no bootstrap), so a row never depends on the sequences scored with it:
    the attractor test samples at most ``conv.attractor_max_segments`` segments of each sequence (seeded by
    ``seed``; all of them when it has fewer), which is also the knob on its cost (11 read-outs per segment).
    ``mean_entropy`` is NaN for trajectories extracted without entropy; any feature a sequence cannot define
    (cv_H below 2 valid steps, STP below 3 states) is NaN, and a monitor fitted or scored on it says so.
    """
    if not trajectories:
        raise TrajectoryError("no trajectories to compute features of; give at least one")
    heat = None
    if specific_heat is not None:
        heat = np.asarray(specific_heat, dtype=np.float64)
        if heat.shape != (len(trajectories),):
            raise ConfigError("specific_heat", f"must be ({len(trajectories)},), one per trajectory; got shape "
                                               f"{heat.shape} (take analyse_thermo(...).replicates"
                                               "['mean_specific_heat']['units'])")
    rows = []
    for tr in trajectories:
        metrics = analyse_energy([tr], readout, conv, n_boot=0, seed=seed, device=device).metrics
        # A metric the row cannot define (its column all NaN) is absent from the metrics: NaN here.
        row = {name: metrics.get(metric, {}).get("value", math.nan) for name, metric in ENERGY_METRIC.items()}
        row["stp_normal_acc"] = _normal_acceleration(tr.at(conv.site)[_span(tr, conv)])
        rows.append([row[name] for name in ENERGY_FEATURES])
    values = np.array(rows, dtype=np.float64)  # (N, 10)
    names = ENERGY_FEATURES
    if heat is not None:
        values, names = np.concatenate([values, heat[:, None]], axis=1), (*names, "specific_heat")
    return FeatureTable(values, names)


def _running(x: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n + 1,) running sums: entry m is the sum of the first m values."""
    return torch.cat([x.new_zeros(1), torch.cumsum(x, 0)])


def prefix_features(trajectory: Trajectory, readout: Callable | None, conv: EnergyConventions, *,
                    min_tokens: int = 8, window: int | None = None) -> FeatureTable:
    """The ``streaming`` features of every prefix of one sequence: row r reads the tokens < r + ``min_tokens``.

    Rows run over prefixes of t = min_tokens .. T+1 tokens; a prefix of t tokens holds positions 0 .. t-2, so its
    steps and triplets are those of the whole sequence that end before position t-1. ``window`` None: each row
    pools every step of its prefix (the last row is the whole sequence, equal to its ``sequence_features`` on these
    columns). ``window`` W: each row pools only its prefix's last W steps (fewer while the prefix holds fewer), the
    ΔH pairs and triplets inside them, so a change in the text shows at full strength W steps after it instead of
    diluted by everything read before. Each column comes from running sums over steps (the CV's second moment taken
    about the first valid value, against cancellation), so the trace costs one pass. ``readout`` is not called:
    the streaming features need only the states and log-probabilities (the argument keeps the signature of
    ``sequence_features``). ``min_tokens`` must leave every prefix 3 states in the analysed span (two steps for the
    CV, one triplet for STP); ``window`` must be >= 2 steps for the same reason.
    """
    sl = _span(trajectory, conv)
    lowest, n_tokens = sl.start + 4, trajectory.n_positions + 1
    if not lowest <= min_tokens <= n_tokens:
        raise ConfigError("min_tokens", f"must be in [{lowest}, {n_tokens}] for this trajectory ({n_tokens} tokens, "
                                        f"span from position {sl.start}): every prefix needs 3 states in the span")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 2):
        raise ConfigError("window", f"must be an int >= 2 steps (two steps for the CV, one triplet), or None for "
                                    f"running means from the start; got {window!r}")
    h = trajectory.at(conv.site)[sl]  # (S, d)
    logp = trajectory.logprobs if conv.ppl == "realized" else trajectory.max_logprobs
    series = energy_series(h, -logp[sl], conv.zero_velocity_rtol)  # n = S - 1 steps
    valid = series.valid.cpu()
    k, v = series.log_kinetic.cpu(), series.log_ppl.cpu()
    h_steps = (k + v).masked_fill(~valid, math.nan)  # (n,)
    x = h_steps if conv.energy_scale == "log" else torch.exp(h_steps)
    # Prefix of t tokens: steps [first, hi) with hi = t - 2 - span start; row r is t = min_tokens + r.
    hi = torch.arange(min_tokens, n_tokens + 1) - 2 - sl.start  # (R,)
    first = torch.zeros_like(hi) if window is None else (hi - window).clamp_min(0)  # (R,)

    def pooled(y: torch.Tensor, end: torch.Tensor) -> torch.Tensor:  # (R,) sum of y over [first, end)
        sums = _running(y)
        return sums[end] - sums[first]

    count = pooled(valid.double(), hi)

    def mean_of(y: torch.Tensor) -> torch.Tensor:  # (R,) mean of y over the row's valid steps
        return pooled(torch.where(valid, y, 0.0), hi) / count

    shift = x[valid][0] if bool(valid.any()) else torch.tensor(0.0, dtype=torch.float64)
    dx = torch.where(valid, x - shift, 0.0)
    m1, m2 = pooled(dx, hi) / count, pooled(dx.square(), hi) / count
    cv = (m2 - m1.square()).clamp_min(0).sqrt() / (m1 + shift).abs()
    cv = cv.masked_fill(count < 2, math.nan)

    dh = h_steps[1:] - h_steps[:-1]  # (n - 1,) NaN unless both steps are valid
    moved = torch.nan_to_num(dh, nan=0.0)
    total, rise = pooled(moved.abs(), hi - 1), pooled(moved, hi - 1)  # ΔH_j needs steps j, j + 1 < hi
    drift = torch.where(total > 0, rise / torch.where(total > 0, total, 1.0), 0.0)

    if trajectory.entropy is None:
        entropy = torch.full(hi.shape, math.nan, dtype=torch.float64)
    else:  # the entropy at the steps' end positions
        entropy = pooled(trajectory.entropy[sl][1:].double().cpu(), hi) / (hi - first)

    kin = triplet_kinematics(h)  # (S - 2,) triplet j spans steps j, j + 1: a row holds triplets [first, hi - 1)
    ok = kin["valid"].cpu()
    normal = pooled(torch.where(ok, kin["a_perp_norm"].cpu(), 0.0), hi - 1) / pooled(ok.double(), hi - 1)

    columns = {"mean_H": mean_of(k + v), "cv_H": cv, "drift_H": drift, "mean_K": mean_of(k), "mean_V": mean_of(v),
               "mean_entropy": entropy, "stp_normal_acc": normal}
    names = FEATURE_SETS["streaming"]
    return FeatureTable(torch.stack([columns[n] for n in names], 1).numpy(), names)
