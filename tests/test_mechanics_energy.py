"""Energy mechanics on synthetic trajectories with known answers."""
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.errors import TrajectoryError
from lagrangian_lens.mechanics import (
    energy_metrics,
    energy_series,
    energy_table,
    velocities,
    zero_velocity,
)
from lagrangian_lens.mechanics.stats import (
    bootstrap,
    cv_of_row_means,
    global_cv,
    mean_within_row_cv,
)


def line(T=20, d=8, speed=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    start = torch.randn(d, generator=g, dtype=torch.float64)
    return start + speed * torch.arange(T, dtype=torch.float64)[:, None] * direction


def test_constant_speed_line_has_constant_kinetic_energy_and_zero_acceleration():
    h = line(speed=0.5)
    v = velocities(h)
    assert_close(v[1:] - v[:-1], torch.zeros_like(v[1:]), atol=1e-12, rtol=0)
    s = energy_series(h, torch.full((20,), 2.0, dtype=torch.float64))
    assert_close(s.log_kinetic, torch.full((19,), math.log(0.5 * 0.25), dtype=torch.float64))
    assert_close(s.log_energy, torch.full((19,), math.log(0.125) + 2.0, dtype=torch.float64))


def test_conserved_energy_gives_zero_cv_and_zero_drift():
    # axis-aligned lines with dyadic speeds: every K_t is exactly equal, so ΔH is exactly 0
    series = [energy_series(torch.eye(8, dtype=torch.float64)[k] * 0.5 * torch.arange(20.0, dtype=torch.float64)[:, None],
                            torch.full((20,), 1.5, dtype=torch.float64)) for k in range(4)]
    m = energy_metrics(energy_table(series), n_boot=50)
    for key in ("global_cv", "avg_trajectory_cv", "cv_of_trajectory_means", "mean_abs_delta_h", "drift_h"):
        assert m[key]["value"] == pytest.approx(0.0, abs=1e-12), key
    assert m["mean_log_energy"]["value"] == pytest.approx(math.log(0.125) + 1.5)
    assert m["kv_ratio_of_means"]["value"] == pytest.approx(math.log(0.125) / 1.5)


def test_known_ppl_series_is_the_log_potential_from_the_emitting_position():
    h = line(T=6)
    neg_logp = torch.tensor([9.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    s = energy_series(h, neg_logp)
    # step i covers position t = i + 1, so the first position's potential is never used
    assert_close(s.log_ppl, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64), rtol=0, atol=0)


def test_cv_definitions_match_a_direct_numpy_computation():
    rng = np.random.default_rng(1)
    rows = [rng.normal(3.0, 0.5, size=n) for n in (10, 14, 7)]
    from lagrangian_lens.mechanics.stats import pad_rows

    x = pad_rows(rows)
    flat = np.concatenate(rows)
    assert global_cv(x).item() == pytest.approx(flat.std() / abs(flat.mean()))
    assert mean_within_row_cv(x).item() == pytest.approx(np.mean([r.std() / abs(r.mean()) for r in rows]))
    means = np.array([r.mean() for r in rows])
    assert cv_of_row_means(x).item() == pytest.approx(means.std() / abs(means.mean()))


def test_bootstrap_interval_brackets_the_value_and_is_reproducible():
    rng = np.random.default_rng(2)
    table = {"x": torch.from_numpy(rng.normal(1.0, 1.0, size=(40, 10)))}
    est = bootstrap(lambda t: torch.nanmean(t["x"], dim=(-2, -1)), table, n_boot=500, seed=3)
    again = bootstrap(lambda t: torch.nanmean(t["x"], dim=(-2, -1)), table, n_boot=500, seed=3)
    assert est == again
    assert est.low < est.value < est.high
    # the interval's half-width is close to 1.96 standard errors of the mean of 40 row means
    se = table["x"].mean(1).std().item() / math.sqrt(40)
    assert (est.high - est.low) / 2 == pytest.approx(1.96 * se, rel=0.25)


def test_zero_velocity_steps_are_counted_and_excluded_never_nan():
    h = line(T=10)
    h[5] = h[4]  # a repeated state: one zero-velocity step
    s = energy_series(h, torch.ones(10, dtype=torch.float64))
    assert s.n_zero_velocity == 1 and not s.valid[4]  # step 4 covers v_5 = h_5 - h_4
    assert torch.isfinite(s.log_kinetic).all()
    m = energy_metrics(energy_table([s]), n_boot=0)
    assert m["n_steps"] == 8
    assert all(np.isfinite(v["value"]) for v in m.values() if isinstance(v, dict))


def test_zero_velocity_rule_is_relative_to_the_state_norm():
    h = torch.tensor([[1000.0, 0.0], [1000.0 + 1e-5, 0.0], [1001.0, 0.0]], dtype=torch.float64)
    assert zero_velocity(h, rtol=1e-6).tolist() == [True, False]


def test_a_trajectory_too_short_for_a_velocity_is_a_clear_error():
    with pytest.raises(TrajectoryError, match="no velocity"):
        energy_series(torch.zeros(1, 4), torch.zeros(1))


def test_drift_is_plus_one_for_monotone_rise():
    rows = [energy_series(line(T=8, speed=s), torch.arange(8, dtype=torch.float64)) for s in (1.0, 2.0)]
    m = energy_metrics(energy_table(rows), n_boot=0)
    assert m["drift_h"]["value"] == pytest.approx(1.0)
    assert m["mean_delta_h"]["value"] == pytest.approx(1.0)


def test_classical_energy_and_log_lagrangian_follow_their_definitions():
    from lagrangian_lens.mechanics import energy_metrics, energy_series, energy_table

    gen = torch.Generator().manual_seed(0)
    series = [energy_series(torch.randn(n, 6, generator=gen, dtype=torch.float64),
                            torch.rand(n, generator=gen, dtype=torch.float64) * 3) for n in (7, 11)]
    k = [s.log_kinetic.numpy() for s in series]
    v = [s.log_ppl.numpy() for s in series]
    metrics = energy_metrics(energy_table(series), n_boot=0)
    classical = np.concatenate([np.exp(a) + b for a, b in zip(k, v)])  # ½‖v‖² − ln p
    lagrangian = [a - b for a, b in zip(k, v)]
    assert metrics["classical_energy_cv"]["value"] == pytest.approx(classical.std() / abs(classical.mean()), rel=1e-12)
    assert metrics["mean_log_lagrangian"]["value"] == pytest.approx(np.concatenate(lagrangian).mean(), rel=1e-12)
    assert metrics["log_action_per_step"]["value"] == pytest.approx(np.mean([x.mean() for x in lagrangian]), rel=1e-12)
