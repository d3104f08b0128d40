"""Pretrained vs random separation: bootstrap replicates, Cliff's delta, the verdict, and the table column."""
import math

import numpy as np
import pytest
import torch

from lagrangian_lens.experiments.tables import SEPARATION_HEADER, summary_rows
from lagrangian_lens.mechanics.energy_stats import energy_metrics, energy_metrics_with_replicates
from lagrangian_lens.mechanics.separation import (
    DOES_NOT_SEPARATE,
    NEGLIGIBLE_DELTA,
    SEPARATES,
    cliffs_delta,
    separation,
)
from lagrangian_lens.mechanics.stats import (
    bootstrap_many,
    mean_within_row_cv,
    pad_rows,
    pooled_mean,
    pooled_median,
    replicates,
)


def brute_delta(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return sum(np.sign(x - y) for x in a for y in b) / (a.size * b.size)


@pytest.mark.parametrize("seed", range(5))
def test_cliffs_delta_equals_the_brute_force_count_with_ties_and_nan(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, size=rng.integers(2, 12)).astype(float)  # small integers: many ties
    b = rng.integers(0, 6, size=rng.integers(2, 12)).astype(float)
    a[rng.random(a.size) < 0.2] = np.nan
    if np.isfinite(a).sum() < 2:
        a = np.append(a, [1.0, 4.0])
    assert cliffs_delta(a, b) == pytest.approx(brute_delta(a, b), abs=1e-15)


def test_cliffs_delta_is_one_for_disjoint_samples_and_none_when_undefined():
    assert cliffs_delta([5, 6, 7], [1, 2]) == 1.0 and cliffs_delta([1, 2], [5, 6, 7]) == -1.0
    assert cliffs_delta([1.0, math.nan], [1, 2, 3]) is None  # one finite value on a side
    assert cliffs_delta([0.0, 0.0, 0.0], [0.0, 0.0]) is None  # no per-unit reading at all
    assert cliffs_delta([0.0, 0.0], [0.0, 1.0]) == -0.5


def two_tables(shift: float, n=40, steps=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, steps, generator=g, dtype=torch.float64) + torch.randn(n, 1, generator=g, dtype=torch.float64)
    b = torch.randn(n, steps, generator=g, dtype=torch.float64) + torch.randn(n, 1, generator=g, dtype=torch.float64)
    return {"x": a + shift}, {"x": b}


def separate(ta, tb, **kw):
    stats = {"mean": lambda t: pooled_mean(t["x"])}
    ea = bootstrap_many(stats, ta, n_boot=400, seed=1, keep_draws=True)["mean"]
    eb = bootstrap_many(stats, tb, n_boot=400, seed=1, keep_draws=True)["mean"]
    return separation(ea.draws, eb.draws, ea.units, eb.units, values=(ea.value, eb.value), **kw)


def test_clearly_different_samples_separate_and_one_distribution_does_not():
    sep = separate(*two_tables(shift=2.0))
    assert sep.verdict == SEPARATES and sep.paired
    assert sep.ci_low > 0 and sep.cliffs_delta > 0.8 and 1.5 < sep.difference < 2.5
    for seed in range(3):
        same = separate(*two_tables(shift=0.0, seed=seed))
        assert same.verdict == DOES_NOT_SEPARATE and same.ci_low < 0 < same.ci_high
        assert abs(same.cliffs_delta) < 0.5


def test_a_negligible_effect_does_not_separate_even_when_its_interval_excludes_zero():
    rng = np.random.default_rng(0)
    units_a, units_b = rng.normal(0.05, 1, 5000), rng.normal(0.0, 1, 5000)  # δ ≈ 0.03
    draws_a, draws_b = rng.normal(0.05, 0.001, 1000), rng.normal(0.0, 0.001, 1000)  # interval far from 0
    sep = separation(draws_a, draws_b, units_a, units_b)
    assert sep.ci_low > 0 and abs(sep.cliffs_delta) < NEGLIGIBLE_DELTA and sep.verdict == DOES_NOT_SEPARATE
    # without a per-unit reading (δ unavailable) the interval alone decides
    assert separation(draws_a, draws_b, np.zeros(5), np.zeros(5)).verdict == SEPARATES
    assert separation([], [], units_a, units_b).verdict == DOES_NOT_SEPARATE  # no bootstrap, no interval


def test_equal_row_counts_and_seed_make_a_paired_bootstrap():
    ta, tb = two_tables(shift=0.3)
    sep = separate(ta, tb)
    joint = {"a": ta["x"], "b": tb["x"]}  # the same rows resampled together: the paired bootstrap by construction
    est = bootstrap_many({"d": lambda t: pooled_mean(t["a"]) - pooled_mean(t["b"])}, joint, n_boot=400, seed=1,
                         keep_draws=True)["d"]
    lo, hi = np.percentile(est.draws, [2.5, 97.5])
    assert sep.ci_low == pytest.approx(lo, rel=1e-12) and sep.ci_high == pytest.approx(hi, rel=1e-12)


def test_unit_values_are_the_statistic_on_each_row_alone():
    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(n, generator=g, dtype=torch.float64) + 0.5 for n in (5, 9, 3, 7)]
    rows.append(torch.full((4,), math.nan, dtype=torch.float64))  # a row with no value: its units are NaN
    table = {"x": pad_rows(rows)}
    stats = {"mean": lambda t: pooled_mean(t["x"]), "median": lambda t: pooled_median(t["x"]),
             "cv": lambda t: mean_within_row_cv(t["x"])}
    est = bootstrap_many(stats, table, n_boot=50, keep_draws=True)
    for name, fn in stats.items():
        alone = [fn({"x": pad_rows([r])}).item() for r in rows]
        np.testing.assert_allclose(est[name].units, alone, rtol=1e-14)
        assert math.isnan(est[name].units[-1]) and est[name].draws.shape == (50,)
    plain = bootstrap_many(stats, table, n_boot=50)
    assert plain == est and plain["mean"].draws is None  # the replicates take no part in equality
    assert est["mean"].to_dict().keys() == {"value", "ci_low", "ci_high"}
    assert set(replicates(est)) == set(stats) and replicates(plain) == {}
    without = bootstrap_many(stats, table, n_boot=0, keep_draws=True)["mean"]
    assert without.draws.shape == (0,) and without.units.shape == (5,)


def test_energy_metrics_hand_back_replicates_of_every_bootstrapped_metric():
    from lagrangian_lens.mechanics import energy_series, energy_table

    g = torch.Generator().manual_seed(0)
    series = [energy_series(torch.randn(n, 6, generator=g, dtype=torch.float64),
                            torch.rand(n, generator=g, dtype=torch.float64) * 3) for n in (7, 11, 9, 8, 10, 12)]
    table = energy_table(series)
    metrics, reps = energy_metrics_with_replicates(table, n_boot=30)
    assert metrics == energy_metrics(table, n_boot=30)
    assert set(reps) == {name for name, v in metrics.items() if isinstance(v, dict)}
    assert all(r["draws"].shape == (30,) and r["units"].shape == (6,) for r in reps.values())
    # a spread across trajectories is 0 on any single one: no effect size, the interval alone decides
    units = reps["cv_of_trajectory_means"]["units"]
    assert np.all(units == 0) and cliffs_delta(units, units) is None


def test_summary_rows_add_one_separation_column_per_pair():
    sep = {"difference": 0.0812, "ci_low": 0.0701, "ci_high": 0.0903, "cliffs_delta": 0.93, "verdict": SEPARATES}
    flat = {"difference": 0.001, "ci_low": -0.01, "ci_high": 0.012, "cliffs_delta": None, "verdict": DOES_NOT_SEPARATE}
    entries = [
        {"run": "m__pretrained", "model": "m", "weights": "pretrained",
         "metrics": {"x": {"value": 1.0, "ci_low": 0.9, "ci_high": 1.1}, "y": 2.0, "z": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}},
         "separation": {"random": "m__random", "metrics": {"x": sep, "z": flat}}},
        {"run": "m__random", "model": "m", "weights": "random", "metrics": {"x": 0.9, "y": 2.0, "z": 0.5}},
    ]
    rows = summary_rows(entries, ("x", "y", "z"))
    assert rows[0] == ["metric", "m__pretrained", "m__random", SEPARATION_HEADER]
    assert rows[1][3] == "0.0812 [0.0701, 0.0903]; δ = 0.93; separates"
    assert rows[2][3] == "-"  # no replicates, no separation
    assert rows[3][3] == "0.001 [-0.01, 0.012]; δ = -; does not separate"
    for none in (None, {"random": "m__random", "metrics": {}}):  # no replicates in the stage: no column
        assert summary_rows([{**entries[0], "separation": none}], ("x",))[0] == ["metric", "m__pretrained"]
