"""The energy anomaly monitor: detectors against analytic AUROCs, exact metrics, calibration, persistence, errors,
and the per-sequence and per-prefix features of a tiny model's trajectories against hand computations."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from sklearn.metrics import roc_auc_score
from torch.testing import assert_close

from lagrangian_lens.analysis.energy import EnergyConventions, analyse_energy
from lagrangian_lens.analysis.monitor import (
    FEATURE_SETS,
    FEATURES,
    METHODS,
    EnergyMonitor,
    FeatureTable,
    auroc,
    prefix_features,
    sequence_features,
    tpr_at_fpr,
)
from lagrangian_lens.analysis.monitor_features import ENERGY_FEATURES
from lagrangian_lens.errors import CheckpointError, ConfigError, TrajectoryError
from lagrangian_lens.trajectories import Trajectory, extract, readout

from .conftest import TEXTS, tiny_model

NAMES3 = tuple(FEATURES)[:3]  # mean_H, cv_H, drift_H: the names gaussian(n, 3, ...) gives its columns


def gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> FeatureTable:
    """n rows of N(shift·e_1, I_d), named after the first d features."""
    x = np.random.default_rng(seed).standard_normal((n, d))
    x[:, 0] += shift
    return FeatureTable(x, tuple(FEATURES)[:d])


def distance_auroc(d: int, lam: float) -> float:
    """P(‖z + μ‖² > ‖w‖²) for z, w ~ N(0, I_d), ‖μ‖² = lam, d even: the AUROC of the exact squared-distance score.

    ‖z + μ‖² is a Poisson(lam/2) mixture of χ²_{d+2j}, and P(χ²_{d+2j} > χ²_d) = P(Bin(d - 1 + j, ½) >= d/2)
    (a Beta(d/2, d/2 + j) tail at ½). For d = 2 the sum is 1 - ½ exp(-lam/4).
    """
    a, m, total = d // 2, lam / 2, 0.0
    for j in range(300):
        n = 2 * a - 1 + j
        poisson = math.exp(-m + j * math.log(m) - math.lgamma(j + 1))
        total += poisson * sum(math.comb(n, k) for k in range(a, n + 1)) / 2**n
    return total


@pytest.mark.parametrize("d, shift", [(2, 1.5), (4, 2.0)])
def test_mahalanobis_auroc_matches_the_analytic_value_of_a_gaussian_shift(d, shift):
    assert math.isclose(distance_auroc(2, shift**2), 1 - 0.5 * math.exp(-shift**2 / 4), rel_tol=1e-12)
    monitor = EnergyMonitor(tuple(FEATURES)[:d]).fit(gaussian(4000, d, seed=1))
    normal, anomalous = gaussian(4000, d, seed=2), gaussian(4000, d, seed=3, shift=shift)
    got = auroc(monitor.anomaly_score(normal), monitor.anomaly_score(anomalous))
    assert abs(got - distance_auroc(d, shift**2)) < 0.02
    # The projection on the (unknown to the monitor) shift direction reaches Φ(‖μ‖/√2), the best any score can.
    oracle = auroc(normal.values[:, 0], anomalous.values[:, 0])
    assert abs(oracle - 0.5 * (1 + math.erf(shift / 2))) < 0.02


def test_auroc_and_tpr_on_hand_made_scores_with_ties():
    # pairs (a, n): a=1 beats 0 and ties two 1s (2), a=2 beats three and ties one (3.5), a=3 beats all four (4)
    assert auroc([0, 1, 1, 2], [1, 2, 3]) == 9.5 / 12
    assert auroc([0, 1], [2, 3]) == 1.0 and auroc([2, 3], [0, 1]) == 0.0 and auroc([1, 1], [1]) == 0.5
    # The "higher" 0.8-quantile of 0..9 is 8 (index ceil(9·0.8) = 8): one normal score (1/10 <= 0.2) lies above it.
    assert tpr_at_fpr(np.arange(10.0), [8, 8.5, 9, 10, 3], fpr=0.2) == 3 / 5
    rng = np.random.default_rng(0)
    normal, anomalous = rng.integers(0, 6, 200), rng.integers(2, 8, 150)  # many ties
    labels = np.r_[np.zeros(200), np.ones(150)]
    assert math.isclose(auroc(normal, anomalous), roc_auc_score(labels, np.r_[normal, anomalous]), rel_tol=1e-12)
    with pytest.raises(ConfigError, match="normal_scores"):
        auroc([0.0, math.nan], [1.0])
    with pytest.raises(ConfigError, match="anomalous_scores"):
        tpr_at_fpr([0.0], [])


def roundtrip(monitor: EnergyMonitor, tmp_path) -> tuple[dict, dict]:
    """The monitor's state through a safetensors file and JSON, as the experiment stores it."""
    arrays, meta = monitor.state()
    save_file(arrays, str(tmp_path / "m.safetensors"))
    return load_file(str(tmp_path / "m.safetensors")), json.loads(json.dumps(meta))


@pytest.mark.parametrize("method", METHODS)
def test_state_round_trip_is_exact(method, tmp_path):
    monitor = EnergyMonitor(NAMES3, method=method, seed=3).fit(gaussian(300, 3, 0)).calibrate(gaussian(200, 3, 1))
    arrays, meta = roundtrip(monitor, tmp_path)
    assert (meta["method"], meta["features"], meta["seed"], meta["target_fpr"]) == (method, list(NAMES3), 3, 0.05)
    back = EnergyMonitor.from_state(arrays, meta)
    probe = gaussian(100, 3, 2, shift=1.0)
    np.testing.assert_array_equal(back.score_samples(probe), monitor.score_samples(probe))
    assert back.threshold_ == monitor.threshold_ and back.feature_names_ == monitor.feature_names_
    np.testing.assert_array_equal(back.predict(probe), monitor.predict(probe))
    if method == "gaussian-mixture":
        assert monitor.bic_.shape == (4,) and monitor.estimator_.n_components == int(np.argmin(monitor.bic_)) + 1
        np.testing.assert_array_equal(back.bic_, monitor.bic_)


def test_a_tampered_isolation_forest_state_is_refused(tmp_path):
    monitor = EnergyMonitor(NAMES3, method="isolation-forest").fit(gaussian(200, 3, 0))
    arrays, meta = roundtrip(monitor, tmp_path)
    assert "threshold_" not in vars(EnergyMonitor.from_state(arrays, meta))  # saved uncalibrated, loads so
    nudged = dict(arrays, check_scores=arrays["check_scores"] + 1e-9)
    with pytest.raises(CheckpointError, match="refitted isolation forest misses its stored scores") as err:
        EnergyMonitor.from_state(nudged, meta)
    assert "\n" not in str(err.value) and "scikit-learn" in str(err.value)
    reseeded = dict(meta, estimator_params=dict(meta["estimator_params"], random_state=1))
    with pytest.raises(CheckpointError, match="misses its stored scores"):
        EnergyMonitor.from_state(arrays, reseeded)
    with pytest.raises(CheckpointError, match="lacks \\['seed'\\]"):
        EnergyMonitor.from_state(arrays, {k: v for k, v in meta.items() if k != "seed"})
    with pytest.raises(CheckpointError, match="format"):
        EnergyMonitor.from_state(arrays, dict(meta, format="other/1"))
    with pytest.raises(CheckpointError, match="fit_data"):
        EnergyMonitor.from_state({k: v for k, v in arrays.items() if k != "fit_data"}, meta)


@pytest.mark.parametrize("method", METHODS)
def test_calibration_holds_its_false_positive_rate(method):
    n_cal, n_test, p = 3000, 6000, 0.05
    monitor = EnergyMonitor(NAMES3, method=method, target_fpr=p).fit(gaussian(2000, 3, 0))
    heldout = gaussian(n_cal, 3, 1)
    monitor.calibrate(heldout)
    # On the held-out rows: at most n·p above ("higher" quantile); exactly n - 1 - ceil((n-1)(1-p)) without ties.
    above = int((monitor.anomaly_score(heldout) > monitor.threshold_).sum())
    assert above <= n_cal * p
    if method == "mahalanobis":
        assert above == n_cal - 1 - math.ceil((n_cal - 1) * (1 - p))
    fresh = np.mean(monitor.predict(gaussian(n_test, 3, 2)) == -1)
    # the threshold's own sampling error (held-out set) and the fresh sample's, both binomial
    assert abs(fresh - p) <= 3 * math.sqrt(p * (1 - p) * (1 / n_cal + 1 / n_test))


def test_monitor_follows_scikit_learn_conventions():
    monitor = EnergyMonitor(NAMES3)
    params = set(vars(monitor))
    assert params == {"features", "method", "target_fpr", "seed"}
    train = gaussian(200, 3, 0)
    assert monitor.fit(train) is monitor and monitor.calibrate(gaussian(100, 3, 1)) is monitor
    learned = set(vars(monitor)) - params
    assert learned and all(name.endswith("_") for name in learned)
    probe = gaussian(50, 3, 2, shift=2.0)
    scores = monitor.score_samples(probe)
    assert scores.shape == (50,) and monitor.score(probe) == scores.mean()
    np.testing.assert_array_equal(monitor.anomaly_score(probe), -scores)
    np.testing.assert_array_equal(monitor.predict(probe), np.where(-scores > monitor.threshold_, -1, 1))
    # Columns are taken by name: a table in another order (with extra columns) scores the same.
    shuffled = FeatureTable(np.c_[probe.values[:, ::-1], np.zeros(50)], (*NAMES3[::-1], "mean_V"))
    np.testing.assert_array_equal(monitor.score_samples(shuffled), scores)
    np.testing.assert_array_equal(monitor.score_samples(probe.values), scores)  # a bare array in fitted order
    monitor.fit(train)
    assert not hasattr(monitor, "threshold_")  # a refit drops the old threshold


def test_mahalanobis_score_is_the_negative_squared_distance():
    train = gaussian(500, 3, 0)
    monitor = EnergyMonitor(NAMES3).fit(train)
    z = (train.values - train.values.mean(0)) / train.values.std(0)
    precision = np.linalg.inv(np.cov(z.T, bias=True) + 1e-6 * np.eye(3))
    expected = -np.einsum("ni,ij,nj->n", z, precision, z)
    np.testing.assert_allclose(monitor.score_samples(train), expected, rtol=1e-10)


def test_first_alarm_is_the_first_prefix_over_the_threshold():
    monitor = EnergyMonitor(NAMES3).fit(gaussian(500, 3, 0)).calibrate(gaussian(500, 3, 1))
    trace = np.zeros((8, 3))
    assert monitor.first_alarm(FeatureTable(trace, NAMES3)) is None
    trace[5:] = 10.0
    assert monitor.first_alarm(FeatureTable(trace, NAMES3)) == 5


def test_errors_are_one_line_and_name_the_fix():
    fitted = EnergyMonitor(NAMES3).fit(gaussian(50, 3, 0))
    cases = [
        (ConfigError, "calibrate", lambda: fitted.predict(gaussian(5, 3, 1))),
        (ConfigError, "calibrate", lambda: fitted.first_alarm(gaussian(5, 3, 1))),
        (ConfigError, r"call fit\(X\)", lambda: EnergyMonitor(NAMES3).score_samples(gaussian(5, 3, 1))),
        (ConfigError, "mean_Q.*mean_entropy", lambda: EnergyMonitor(["mean_H", "mean_Q"])),
        (ConfigError, "energy, perplexity, all, streaming", lambda: EnergyMonitor("energies")),
        (ConfigError, "repeats", lambda: EnergyMonitor(["mean_H", "mean_H"])),
        (ConfigError, "method", lambda: EnergyMonitor(method="svm")),
        (ConfigError, "target_fpr", lambda: EnergyMonitor(target_fpr=1.0)),
        (TrajectoryError, r"no \['drift_H'\]", lambda: fitted.score_samples(gaussian(5, 2, 1))),
        (TrajectoryError, "not features", lambda: FeatureTable(np.zeros((2, 1)), ("speed",))),
    ]
    for kind, pattern, call in cases:
        with pytest.raises(kind, match=pattern) as err:
            call()
        assert "\n" not in str(err.value)
    values = np.random.default_rng(0).standard_normal((10, 2))
    values[[3, 7], 1] = math.nan
    with pytest.raises(TrajectoryError, match=r"'cv_H' is NaN or infinite in 2 of 10 rows \(first \[3, 7\]\)"):
        EnergyMonitor(["mean_H", "cv_H"]).fit(FeatureTable(values, ("mean_H", "cv_H")))
    values[:, 1] = math.nan
    with pytest.raises(TrajectoryError, match="keep_entropy=True"):
        EnergyMonitor(["mean_H", "mean_entropy"]).fit(FeatureTable(values, ("mean_H", "mean_entropy")))
    # "all" takes what the table holds: no entropy kept, no specific heat computed.
    monitor = EnergyMonitor("all").fit(FeatureTable(values, ("mean_H", "mean_entropy")))
    assert monitor.feature_names_ == ("mean_H",)


# -- features of a tiny model's trajectories ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tokenizer):
    model = tiny_model("llama", seed=1)
    return model, extract(model, tokenizer, TEXTS, sites="final,block.1")


def by_hand(tr: Trajectory, site: str = "final") -> dict[str, float]:
    """The streaming features of one trajectory (span: all positions, one context token) in plain numpy."""
    h = tr.at(site).double().numpy()
    v = np.diff(h, axis=0)
    k = np.log(0.5 * (v**2).sum(1))
    pot = -tr.logprobs.double().numpy()[1:]
    e = k + pot
    d1, d2 = v[:-1], v[1:]
    u = d1 / np.linalg.norm(d1, axis=1, keepdims=True)
    a = d2 - d1
    perp = a - (a * u).sum(1, keepdims=True) * u
    return {"mean_H": e.mean(), "cv_H": e.std() / abs(e.mean()), "drift_H": np.diff(e).sum() / np.abs(np.diff(e)).sum(),
            "mean_K": k.mean(), "mean_V": pot.mean(), "mean_entropy": tr.entropy.double().numpy()[1:].mean(),
            "stp_normal_acc": np.linalg.norm(perp, axis=1).mean()}


def test_sequence_features_match_hand_computations(lm):
    model, trs = lm
    conv = EnergyConventions()
    table = sequence_features(trs, readout(model, "final"), conv)
    assert table.names == ENERGY_FEATURES == FEATURE_SETS["energy"] and table.values.shape == (len(TEXTS), 10)
    # TEXTS[1] is 3 tokens: one step, so no CV, no EL residual (it needs two steps) and no STP triplet.
    assert [tr.n_positions for tr in trs][1] == 2 and np.isfinite(table.values[[0, 2]]).all()
    undefined = [n for n, x in zip(table.names, table.values[1]) if not np.isfinite(x)]
    assert undefined == ["cv_H", "el_residual", "el_cos", "stp_normal_acc"]
    for i, tr in [(0, trs[0]), (2, trs[2])]:
        expected = by_hand(tr)
        got = table.select(tuple(expected)).values[i]
        assert_close(torch.from_numpy(got), torch.tensor(list(expected.values()), dtype=torch.float64))
    # mean_V against the energy table of every trajectory analysed together
    joint = analyse_energy(trs, readout(model, "final"), conv, n_boot=0).table
    assert_close(table.select(["mean_V"]).values[:, 0], np.nanmean(joint["V"], axis=1))
    assert_close(table.select(["el_cos"]).values[[0, 2], 0], np.nanmedian(joint["el_cos"][[0, 2]], axis=1))
    assert_close(table.select(["attractor"]).values[:, 0], np.nanmean(joint["attractor"], axis=1))


def test_sequence_features_do_not_depend_on_the_batch(lm):
    model, trs = lm
    conv = EnergyConventions(attractor_max_segments=3)  # the attractor samples segments: per sequence, not per batch
    read = readout(model, "final")
    together = sequence_features(trs, read, conv, seed=5)
    for i, tr in enumerate(trs):
        np.testing.assert_array_equal(sequence_features([tr], read, conv, seed=5).values[0], together.values[i])


def test_sequence_features_entropy_and_specific_heat(lm):
    model, trs = lm
    read = readout(model, "final")
    heat = np.array([1.0, 2.0, 3.0])
    table = sequence_features(trs, read, EnergyConventions(), specific_heat=heat)
    assert table.names == (*ENERGY_FEATURES, "specific_heat") and table.names == FEATURE_SETS["all"]
    np.testing.assert_array_equal(table.select(["specific_heat"]).values[:, 0], heat)
    with pytest.raises(ConfigError, match=r"specific_heat: must be \(3,\)"):
        sequence_features(trs, read, EnergyConventions(), specific_heat=heat[:2])
    bare = [dataclasses.replace(tr, entropy=None) for tr in trs]
    table = sequence_features(bare, read, EnergyConventions())
    entropy = table.names.index("mean_entropy")
    assert np.isnan(table.values[:, entropy]).all()
    np.testing.assert_array_equal(np.delete(table.values, entropy, 1),
                                  np.delete(sequence_features(trs, read, EnergyConventions()).values, entropy, 1))


def truncate(tr: Trajectory, t: int) -> Trajectory:
    """The trajectory of the first t tokens (positions 0..t-2)."""
    return dataclasses.replace(tr, token_ids=tr.token_ids[:t], states=tr.states[:, :t - 1],
                               logprobs=tr.logprobs[:t - 1], max_logprobs=tr.max_logprobs[:t - 1],
                               entropy=tr.entropy[:t - 1])


@pytest.mark.parametrize("conv", [EnergyConventions(), EnergyConventions(site="block.1", energy_scale="linear",
                                                                         ppl="argmax", span="all")],
                         ids=["default", "block-linear-argmax-all"])
def test_prefix_rows_equal_features_of_the_truncated_sequence(lm, conv):
    model, trs = lm
    tr = dataclasses.replace(trs[2], n_context=3)  # the span then starts at position 2 under "continuation"
    read = readout(model, conv.site)
    start = 2 if conv.span == "continuation" else 0
    min_tokens = start + 4
    trace = prefix_features(tr, read, conv, min_tokens=min_tokens)
    streaming = FEATURE_SETS["streaming"]
    assert trace.names == streaming and len(trace) == tr.n_positions + 2 - min_tokens
    for r in range(len(trace)):
        whole = sequence_features([truncate(tr, r + min_tokens)], read, conv).select(streaming)
        assert_close(trace.values[r], whole.values[0], msg=f"prefix row {r}")
    assert_close(trace.values[-1], sequence_features([tr], read, conv).select(streaming).values[0])
    with pytest.raises(ConfigError, match=rf"min_tokens: must be in \[{min_tokens}, {tr.n_positions + 1}\]"):
        prefix_features(tr, read, conv, min_tokens=min_tokens - 1)
    with pytest.raises(ConfigError, match="min_tokens"):
        prefix_features(tr, read, conv, min_tokens=tr.n_positions + 2)


def positions(tr: Trajectory, a: int, b: int) -> Trajectory:
    """The trajectory of positions a .. b-1 alone (tokens a .. b), its own context one token."""
    return dataclasses.replace(tr, token_ids=tr.token_ids[a:b + 1], states=tr.states[:, a:b],
                               logprobs=tr.logprobs[a:b], max_logprobs=tr.max_logprobs[a:b],
                               entropy=tr.entropy[a:b], n_context=1)


@pytest.mark.parametrize("window", [2, 3, 5])
def test_window_rows_equal_features_of_the_windows_own_states(lm, window):
    model, trs = lm
    conv, read = EnergyConventions(), readout(lm[0], "final")
    tr = trs[2]
    trace = prefix_features(tr, read, conv, min_tokens=4, window=window)
    running = prefix_features(tr, read, conv, min_tokens=4)
    assert trace.names == running.names and len(trace) == len(running)
    for r in range(len(trace)):
        steps = r + 2  # the prefix of r + 4 tokens holds positions 0 .. r + 2, so r + 2 steps
        first = max(steps - window, 0)  # the window's steps [first, steps) join positions first .. steps
        alone = sequence_features([positions(tr, first, steps + 1)], read, conv).select(trace.names)
        assert_close(trace.values[r], alone.values[0], equal_nan=True, msg=f"window row {r}")
        if steps <= window:  # a window holding the whole prefix is the running mean
            assert_close(trace.values[r], running.values[r], equal_nan=True)
    with pytest.raises(ConfigError, match=r"window: must be an int >= 2 steps .* got 1"):
        prefix_features(tr, read, conv, min_tokens=4, window=1)


def test_prefix_rows_skip_zero_velocity_steps_as_the_energy_table_does(lm):
    model, trs = lm
    states = trs[2].states.clone()
    states[:, 2] = states[:, 1]  # steps 1 and 5 have zero velocity: left out of every mean, CV and drift
    states[:, 6] = states[:, 5]
    tr = dataclasses.replace(trs[2], states=states)
    conv, read = EnergyConventions(), readout(model, "final")
    trace = prefix_features(tr, read, conv, min_tokens=4)
    # Row 0 (2 steps, 1 valid) has no CV; rows 0 and 1 hold only triplets with a zero step, so no STP.
    undefined = {(int(r), trace.names[c]) for r, c in zip(*np.nonzero(np.isnan(trace.values)))}
    assert undefined == {(0, "cv_H"), (0, "stp_normal_acc"), (1, "stp_normal_acc")}
    for r in range(len(trace)):
        whole = sequence_features([truncate(tr, r + 4)], read, conv).select(trace.names)
        assert_close(trace.values[r], whole.values[0], equal_nan=True, msg=f"prefix row {r}")


def test_prefix_features_without_entropy_are_nan_there(lm):
    model, trs = lm
    trace = prefix_features(dataclasses.replace(trs[0], entropy=None), None, EnergyConventions(), min_tokens=4)
    entropy = trace.names.index("mean_entropy")
    assert np.isnan(trace.values[:, entropy]).all() and np.isfinite(np.delete(trace.values, entropy, 1)).all()
