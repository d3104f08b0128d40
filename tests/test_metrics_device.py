"""The torch step table, NaN-skipping statistics and shared-resample bootstrap, against direct NumPy formulas,
on every device at hand (CUDA when there is one)."""
import math
import warnings

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.analysis.energy import EnergyConventions, analyse_energy
from lagrangian_lens.mechanics import energy_metrics, energy_series, energy_table, log_el_residual, logprob_gradients
from lagrangian_lens.mechanics.energy import energy_series_many
from lagrangian_lens.mechanics.stats import (
    bootstrap,
    bootstrap_many,
    cv_of_row_means,
    drift,
    global_cv,
    mean_within_row_cv,
    normalise_by_row_mean_exp,
    pad_rows,
    pooled_mean,
    pooled_median,
    pooled_var,
    resample_indices,
    steps_diff,
)
from lagrangian_lens.trajectories import extract, readout

from .conftest import TEXTS, tiny_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TIGHT = dict(rtol=1e-12, atol=1e-12)


def nan_table(shape, seed=0, frac=0.3, loc=2.0) -> np.ndarray:
    """Random values with NaN holes, one all-NaN row and one row holding a single value."""
    rng = np.random.default_rng(seed)
    x = rng.normal(loc, 1.0, size=shape)
    x[rng.random(shape) < frac] = np.nan
    x[..., 1, :] = np.nan
    x[..., 2, :] = np.nan
    x[..., 2, 3] = 1.5
    return x


def numpy_reference(x: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics written straight from their definitions in NumPy, reducing the last two axes."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        flat = x.reshape(*x.shape[:-2], -1)
        row_cv = np.nanstd(x, axis=-1) / np.abs(np.nanmean(x, axis=-1))
        row_cv[(~np.isnan(x)).sum(-1) < 2] = np.nan
        means = np.nanmean(x, axis=-1)
        dx = x[..., 1:] - x[..., :-1]
        total = np.nansum(np.abs(dx), axis=(-2, -1))
        e = np.exp(x - np.nanmax(x, axis=-1, keepdims=True))
        return {
            "pooled_mean": np.nanmean(x, axis=(-2, -1)),
            "pooled_median": np.nanmedian(flat, axis=-1),
            "pooled_var": np.nanvar(x, axis=(-2, -1)),
            "global_cv": np.nanstd(x, axis=(-2, -1)) / np.abs(np.nanmean(x, axis=(-2, -1))),
            "mean_within_row_cv": np.nanmean(row_cv, axis=-1),
            "cv_of_row_means": np.nanstd(means, axis=-1) / np.abs(np.nanmean(means, axis=-1)),
            "drift": np.where(total > 0, np.nansum(dx, axis=(-2, -1)) / np.where(total > 0, total, 1.0), 0.0),
            "normalise_by_row_mean_exp": e / np.nanmean(e, axis=-1, keepdims=True),
        }


OURS = {"pooled_mean": pooled_mean, "pooled_median": pooled_median, "pooled_var": pooled_var,
        "global_cv": global_cv, "mean_within_row_cv": mean_within_row_cv, "cv_of_row_means": cv_of_row_means,
        "drift": lambda x: drift(steps_diff(x)), "normalise_by_row_mean_exp": normalise_by_row_mean_exp}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(7, 11), (5, 6, 9), (40, 3, 4)])  # a table, and stacks of resampled ones
def test_statistics_match_numpy_on_tables_with_nan(device, shape):
    x = nan_table(shape, seed=sum(shape))
    expected = numpy_reference(x)
    t = torch.from_numpy(x).to(device)
    for name, fn in OURS.items():
        got = fn(t)
        assert got.device == t.device and got.dtype == torch.float64, name
        assert_close(got.cpu(), torch.from_numpy(np.asarray(expected[name], dtype=np.float64)), equal_nan=True,
                     **TIGHT, msg=lambda m, name=name: f"{name}: {m}")


def test_median_of_an_even_count_averages_the_two_middle_values_with_ties():
    x = torch.tensor([[[1.0, 3.0, math.nan], [3.0, 7.0, math.nan]], [[2.0, 2.0, 2.0], [5.0, math.nan, math.nan]]],
                     dtype=torch.float64)
    assert_close(pooled_median(x), torch.tensor([3.0, 2.0], dtype=torch.float64), rtol=0, atol=0)
    assert_close(pooled_median(torch.full((2, 3), math.nan, dtype=torch.float64)),
                 torch.tensor(math.nan, dtype=torch.float64), equal_nan=True)


def test_host_arrays_stay_numpy_for_the_steps_writer():
    x = nan_table((6, 8))
    out = normalise_by_row_mean_exp(x)
    assert isinstance(out, np.ndarray)
    assert_close(torch.from_numpy(out), normalise_by_row_mean_exp(torch.from_numpy(x)), equal_nan=True, **TIGHT)


@pytest.mark.parametrize("device", DEVICES)
def test_pad_rows_marks_short_rows_and_invalid_steps_with_nan(device):
    rows = [np.arange(3.0), torch.arange(5.0), np.arange(1.0)]
    valid = [np.array([True, False, True]), torch.ones(5, dtype=torch.bool), np.array([False])]
    got = pad_rows(rows, valid, device=device)
    nan = math.nan
    expected = torch.tensor([[0, nan, 2, nan, nan], [0, 1, 2, 3, 4], [nan] * 5], dtype=torch.float64)
    assert got.device.type == device and got.dtype == torch.float64
    assert_close(got.cpu(), expected, equal_nan=True, rtol=0, atol=0)
    assert pad_rows([]).shape == (0, 0)


def random_series(n_rows=12, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_rows):
        T = 9 + 3 * (i % 4)
        h = torch.randn(T, 6, generator=g, dtype=torch.float64).cumsum(0)
        if i % 3 == 0:
            h[4] = h[3]  # a zero-velocity step
        out.append(energy_series(h.to(device), torch.rand(T, generator=g, dtype=torch.float64) * 4 + 0.5))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_stacked_trajectories_give_the_series_of_each_one_alone(device):
    g = torch.Generator().manual_seed(3)
    states = [torch.randn(T, 5, generator=g, dtype=torch.float64).cumsum(0) for T in (2, 7, 5, 9)]
    states[2][3] = states[2][2]  # a zero-velocity step
    neg_logp = [torch.rand(len(h), generator=g, dtype=torch.float64) for h in states]
    many = energy_series_many(torch.cat(states).to(device), torch.cat(neg_logp).to(device), [len(h) for h in states])
    for s, h, lp in zip(many, states, neg_logp):
        one = energy_series(h, lp)
        assert s.log_kinetic.device.type == device
        for a, b in ((s.log_kinetic, one.log_kinetic), (s.log_ppl, one.log_ppl), (s.valid, one.valid)):
            assert_close(a.cpu(), b, rtol=0, atol=0)
    assert not many[2].valid[2] and many[2].n_zero_velocity == 1


def numpy_metrics(t: dict[str, np.ndarray]) -> dict[str, float]:
    """A few energy metrics from their definitions, on the host table."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        v = np.where(t["V"] > 1e-6, t["V"], np.nan)
        dh = np.diff(t["H"], axis=1)
        a = t["attractor"][np.isfinite(t["attractor"])]
        return {"mean_kv_ratio": np.nanmean(t["K"] / v),
                "kv_ratio_of_means": np.nanmean(t["K"]) / np.nanmean(t["V"]),
                "global_cv": np.nanstd(t["H"]) / abs(np.nanmean(t["H"])),
                "drift_h": np.nansum(dh) / np.nansum(np.abs(dh)),
                "el_residual_median": np.nanmedian(t["el"]),
                "entropy_variance": np.nanvar(t["entropy"]),
                "attractor_unique_tokens_sem": a.std(ddof=1) / math.sqrt(a.size)}


def extra_rows(series, seed=0):
    rng = np.random.default_rng(seed)
    el = [np.where(rng.random(len(s.valid)) < 0.2, np.nan, rng.random(len(s.valid))) for s in series]
    att = [np.where(rng.random(len(s.valid)) < 0.5, np.nan, rng.integers(1, 4, len(s.valid))) for s in series]
    ent = [rng.random(len(s.valid)) * 3 for s in series]
    return {"el": el, "attractor": att, "entropy": ent}


@pytest.mark.parametrize("device", DEVICES)
def test_energy_metrics_point_values_follow_their_numpy_definitions(device):
    series = random_series(device=device)
    table = energy_table(series, **extra_rows(series))
    assert all(v.device.type == device and v.dtype == torch.float64 for v in table.values())
    assert torch.isnan(table["K"][0, 3]) and torch.isnan(table["H"][0, 3])  # the zero-velocity step of row 0
    m = energy_metrics(table, n_boot=0)
    host = {k: v.cpu().numpy() for k, v in table.items()}
    for name, value in numpy_metrics(host).items():
        got = m[name]["value"] if isinstance(m[name], dict) else m[name]
        assert isinstance(got, float)
        assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(value, dtype=torch.float64), **TIGHT,
                     msg=name)
    assert m["n_steps"] == int(np.isfinite(host["H"]).sum()) == sum(int(s.valid.sum()) for s in series)
    assert m["attractor_segments"] == int(np.isfinite(host["attractor"]).sum())


def test_undefined_metrics_are_python_nan_never_inf():
    # one trajectory, every step zero velocity except one: CVs within rows, drift and ΔH are undefined
    h = torch.zeros(4, 3, dtype=torch.float64)
    h[3, 0] = 1.0
    s = energy_series(h, torch.ones(4, dtype=torch.float64))
    m = energy_metrics(energy_table([s], attractor=[np.full(3, np.nan)]), n_boot=100)
    for name, value in m.items():
        for x in (value.values() if isinstance(value, dict) else [value]):
            assert isinstance(x, (int, float)) and not math.isinf(x), name
    assert math.isnan(m["avg_trajectory_cv"]["value"]) and m["attractor_unique_tokens_sem"] == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_bootstrap_intervals_bracket_the_value_shrink_with_more_rows_and_repeat_by_seed(device):
    stats = {name: (lambda t, fn=fn: fn(t["x"])) for name, fn in
             (("mean", pooled_mean), ("cv", global_cv), ("median", pooled_median))}

    def widths(n_rows):
        table = {"x": torch.from_numpy(nan_table((n_rows, 30), seed=n_rows, loc=5.0)).to(device)}
        est = bootstrap_many(stats, table, n_boot=400, seed=1)
        for name, e in est.items():
            assert e.low <= e.value <= e.high, name
        assert est == bootstrap_many(stats, table, n_boot=400, seed=1)
        assert est != bootstrap_many(stats, table, n_boot=400, seed=2)
        return {name: e.high - e.low for name, e in est.items()}

    small, large = widths(20), widths(320)
    for name in stats:
        assert 0 < large[name] < small[name] / 2, name  # 16x the rows: about a quarter of the width


def test_chunking_does_not_change_the_intervals():
    table = {"x": torch.from_numpy(nan_table((25, 12)))}
    one = bootstrap(lambda t: global_cv(t["x"]), table, n_boot=300, seed=4, chunk=300)
    many = bootstrap(lambda t: global_cv(t["x"]), table, n_boot=300, seed=4, chunk=7)
    assert one == many


def test_percentiles_interpolate_like_numpy_over_the_same_resamples():
    x = torch.from_numpy(nan_table((15, 10), seed=9))
    est = bootstrap(lambda t: pooled_mean(t["x"]), {"x": x}, n_boot=200, ci=0.9, seed=5)
    draws = pooled_mean(x[resample_indices(15, 200, 5, "cpu")]).numpy()
    low, high = np.percentile(draws, [5, 95])
    assert_close(torch.tensor([est.low, est.high], dtype=torch.float64), torch.tensor([low, high]), **TIGHT)


def test_the_cpu_bootstrap_restores_the_thread_count():
    before = torch.get_num_threads()
    bootstrap(lambda t: pooled_mean(t["x"]), {"x": torch.from_numpy(nan_table((10, 5)))}, n_boot=20)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("device", DEVICES)
def test_resample_indices_are_drawn_on_the_device(device):
    idx = resample_indices(9, 50, seed=0, device=device)
    assert idx.device.type == device and idx.shape == (50, 9) and 0 <= idx.min() and idx.max() < 9
    assert torch.equal(idx, resample_indices(9, 50, seed=0, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_analyse_energy_hands_back_a_host_table_and_plain_numbers(device, tokenizer):
    model = tiny_model("llama").to(device)
    trs = extract(model, tokenizer, TEXTS, sites="final")
    conv = EnergyConventions(span="all")
    result = analyse_energy(trs, readout(model, "final"), conv, n_boot=50, device=device)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float64 for v in result.table.values())
    assert result.table["H"].shape == result.step_positions.shape
    for name, value in result.metrics.items():
        for x in (value.values() if isinstance(value, dict) else [value]):
            assert isinstance(x, (int, float)) and not math.isinf(x), name
    # the table is the per-step energy and EL residual of each trajectory, computed from its states alone
    for b, tr in enumerate(trs):
        h = tr.at("final").double()
        k = torch.log(0.5 * (h[1:] - h[:-1]).square().sum(-1))
        v = -tr.logprobs[1:].double()
        assert_close(torch.from_numpy(result.table["H"][b, :len(k)]), k + v, **TIGHT)
        grad = logprob_gradients(tr.at("final").to(device), tr.targets.to(device), readout(model, "final")).cpu()
        rel, ok = log_el_residual(h, grad, torch.ones(len(k), dtype=torch.bool))
        assert ok.all() and math.isnan(result.table["el"][b, len(k) - 1])
        assert_close(torch.from_numpy(result.table["el"][b, :len(k) - 1]), rel, **TIGHT)
    if device != "cpu":  # the same numbers as on the CPU, up to the order of floating-point sums
        on_cpu = analyse_energy(trs, readout(model.cpu(), "final"), conv, n_boot=50, device="cpu")
        for name in ("global_cv", "mean_log_energy", "drift_h", "el_residual_median"):
            assert_close(torch.tensor(result.metrics[name]["value"]), torch.tensor(on_cpu.metrics[name]["value"]),
                         rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_kept_replicates_reproduce_the_interval_and_each_row_alone(device):
    x = nan_table((30, 12), seed=4, loc=5.0)
    table = {"x": torch.from_numpy(x).to(device)}
    stats = {"mean": lambda t: pooled_mean(t["x"]), "median": lambda t: pooled_median(t["x"])}
    est = bootstrap_many(stats, table, n_boot=300, seed=2, keep_draws=True)
    for name, e in est.items():
        assert isinstance(e.draws, np.ndarray) and e.draws.shape == (300,) and e.units.shape == (30,)
        assert np.percentile(e.draws[np.isfinite(e.draws)], [2.5, 97.5]) == pytest.approx([e.low, e.high], rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_allclose(est["mean"].units, np.nanmean(x, axis=1), rtol=1e-12)  # all-NaN row: NaN
        np.testing.assert_allclose(est["median"].units, np.nanmedian(x, axis=1), rtol=1e-12)
