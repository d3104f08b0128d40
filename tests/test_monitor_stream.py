"""The change-point monitor: Page's CUSUM against a hand recursion, a known mean shift located where it starts,
calibration holding the per-trace false-alarm rate, an exact save -> load -> score round trip, and its errors."""
import math

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lagrangian_lens import ChangePointMonitor
from lagrangian_lens.analysis.monitor import FEATURES, METHODS, FeatureTable
from lagrangian_lens.errors import CheckpointError, ConfigError, TrajectoryError

NAMES = tuple(FEATURES)[:2]


def trace(n: int, rng, shift_at: int | None = None, shift: float = 0.0) -> FeatureTable:
    """n rows of N(0, I_2), the first feature shifted by ``shift`` from row ``shift_at`` on."""
    x = rng.standard_normal((n, 2))
    if shift_at is not None:
        x[shift_at:, 0] += shift
    return FeatureTable(x, NAMES)


class FirstFeature:
    """A stand-in window monitor whose anomaly score is the first feature itself."""

    def anomaly_score(self, table):
        return table.values[:, 0]


def test_the_statistic_is_pages_recursion_and_the_change_point_the_excursions_start():
    cp = ChangePointMonitor(NAMES, drift=0.5)
    cp.monitor_, cp.score_mean_, cp.score_scale_, cp.threshold_ = FirstFeature(), 0.0, 1.0, 2.0
    z = np.array([0.2, 1.5, -3.0, 0.4, 1.0, 1.5, 1.2, -0.1])
    t = FeatureTable(np.stack([z, z], 1), NAMES)
    # C_r = max(0, C_{r-1} + z_r - 0.5): 0, 1.0, 0, 0, 0.5, 1.5, 2.2, 1.6.
    np.testing.assert_allclose(cp.anomaly_score(t), [0, 1.0, 0, 0, 0.5, 1.5, 2.2, 1.6], rtol=0, atol=1e-12)
    # The first C above 2 is row 6; its excursion began at row 4 (C_3 = 0), not at row 1's earlier one.
    assert cp.first_alarm(t) == 6 and cp.change_point(t) == 4
    np.testing.assert_allclose(cp.score_samples([t]), [-2.2], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(cp.predict([t, FeatureTable(np.zeros((3, 2)), NAMES)]), [-1, 1])
    quiet = FeatureTable(np.full((4, 2), 0.4), NAMES)  # below the drift everywhere: C stays 0, no alarm
    assert cp.first_alarm(quiet) is None and cp.change_point(quiet) is None


@pytest.mark.parametrize("method", METHODS)
def test_a_mean_shift_is_found_near_where_it_starts(method):
    rng = np.random.default_rng(0)
    cp = ChangePointMonitor(NAMES, method=method, target_fpr=0.05, seed=0)
    cp.fit([trace(100, rng) for _ in range(40)]).calibrate([trace(100, rng) for _ in range(60)])
    shifted = [trace(100, rng, shift_at=50, shift=2.0) for _ in range(40)]
    alarms = np.array([cp.first_alarm(t) for t in shifted], dtype=float)
    changes = np.array([cp.change_point(t) for t in shifted], dtype=float)
    # A 2-sigma shift is caught in every trace, mostly after it starts (nothing before row 50 is unusual) ...
    assert np.isfinite(alarms).all() and np.median(alarms) > 50
    # ... and Page's start of the excursion lies on it, closer than the alarm, which waits for the evidence.
    assert np.median(np.abs(changes - 50)) <= 2 < np.median(np.abs(alarms - 50))


def test_calibration_holds_the_per_trace_false_alarm_rate_within_binomial_error():
    rng = np.random.default_rng(1)
    cp = ChangePointMonitor(NAMES, target_fpr=0.1, seed=0)
    cp.fit([trace(60, rng) for _ in range(40)]).calibrate([trace(60, rng) for _ in range(400)])
    fresh = [trace(60, rng) for _ in range(2000)]
    rate = float(np.mean(cp.predict(fresh) == -1))
    # The threshold's own sampling (400 held-out traces) and the test's (2000) together: about 0.017 sd.
    assert abs(rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 * (1 / 400 + 1 / 2000))


@pytest.mark.parametrize("method", METHODS)
def test_save_load_and_score_round_trip_exactly(tmp_path, method):
    rng = np.random.default_rng(2)
    cp = ChangePointMonitor(NAMES, method=method, drift=0.7, seed=3).fit([trace(30, rng) for _ in range(10)])
    cp.calibrate([trace(30, rng) for _ in range(10)])
    arrays, meta = cp.state()
    save_file(arrays, str(tmp_path / "cp.safetensors"))
    back = ChangePointMonitor.from_state(load_file(str(tmp_path / "cp.safetensors")), meta)
    probe = trace(30, rng, shift_at=10, shift=3.0)
    np.testing.assert_array_equal(back.anomaly_score(probe), cp.anomaly_score(probe))
    assert (back.threshold_, back.drift, back.method, back.first_alarm(probe), back.change_point(probe)) == (
        cp.threshold_, 0.7, method, cp.first_alarm(probe), cp.change_point(probe))
    with pytest.raises(CheckpointError, match="change-point state format"):
        ChangePointMonitor.from_state(arrays, {**meta, "format": "other/1"})


def test_errors_name_the_fix():
    rng = np.random.default_rng(3)
    with pytest.raises(ConfigError, match="drift"):
        ChangePointMonitor(NAMES, drift=-1.0)
    with pytest.raises(ConfigError, match="method"):
        ChangePointMonitor(NAMES, method="knn")
    cp = ChangePointMonitor(NAMES)
    with pytest.raises(ConfigError, match=r"not fitted: call fit\(traces\)"):
        cp.anomaly_score(trace(5, rng))
    with pytest.raises(TrajectoryError, match="fit needs at least one trace"):
        cp.fit([])
    other = FeatureTable(rng.standard_normal((5, 2)), tuple(FEATURES)[2:4])
    with pytest.raises(TrajectoryError, match=r"fit: traces \[1\] have features"):
        cp.fit([trace(5, rng), other])
    cp.fit([trace(20, rng) for _ in range(3)])
    with pytest.raises(ConfigError, match=r"no threshold: call calibrate\(heldout_traces\)"):
        cp.first_alarm(trace(5, rng))


def test_a_generation_is_scored_as_it_grows(tokenizer):
    """Row r of a generated sequence's trace reads nothing after its last token: scoring the sequence generated so
    far at every step gives the rows of the finished trace, so an alarm can be raised during generation."""
    import dataclasses

    from lagrangian_lens.analysis.energy import EnergyConventions
    from lagrangian_lens.analysis.monitor import prefix_features
    from lagrangian_lens.trajectories import generate

    from .conftest import TEXTS, tiny_model

    model = tiny_model("llama", seed=2)
    (tr,) = generate(model, tokenizer, TEXTS[:1], new_tokens=16, context_tokens=None)
    conv, start = EnergyConventions(), tr.continuation.start  # the trace reads the generated steps only
    min_tokens = start + 4
    full = prefix_features(tr, None, conv, min_tokens=min_tokens, window=4)
    cp = ChangePointMonitor(full.names).fit([full])
    statistic = cp.anomaly_score(full)
    cp.threshold_ = float(np.median(statistic))  # a stand-in calibration that the trace crosses
    alarm = cp.first_alarm(full)
    assert alarm is not None
    for t in range(min_tokens, tr.n_positions + 2, 3):
        so_far = dataclasses.replace(tr, token_ids=tr.token_ids[:t], states=tr.states[:, :t - 1],
                                     logprobs=tr.logprobs[:t - 1], max_logprobs=tr.max_logprobs[:t - 1],
                                     entropy=tr.entropy[:t - 1])
        grown = prefix_features(so_far, None, conv, min_tokens=min_tokens, window=4)
        np.testing.assert_array_equal(grown.values, full.values[:t - min_tokens + 1])
        # The CUSUM is causal too: the statistic so far, and so the alarm once generation has reached it.
        np.testing.assert_array_equal(cp.anomaly_score(grown), statistic[:len(grown)])
        assert cp.first_alarm(grown) == (alarm if alarm < len(grown) else None)
