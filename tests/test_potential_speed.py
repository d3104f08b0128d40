"""The fast shared-potential fit: its answers, not its speed (timings live in benchmarks/bench_potential.py).

Known answers: a damped particle in a known potential is recovered on held-out sequences; the variable-projection
α, β are the least-squares solve; a given potential is never trained in place; the convergence rule ends an easy
fit before ``max_epochs``; bad settings are refused with the field named.
"""
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.errors import ConfigError
from lagrangian_lens.mechanics.depth_data import DepthData
from lagrangian_lens.mechanics.potential_fit import MLPPotential, SharedPotentialFit
from lagrangian_lens.mechanics.potential_solver import _Stopper, forces, normal_equations, solve_coefficients

DT, GAMMA, MASS = 0.5, 0.4, 2.0
ALPHA = 1 / (1 + DT * GAMMA)  # the exact α of the integrator below


@pytest.fixture(autouse=True)
def one_thread():
    """These fits are small: one thread is faster, and immune to the other processes on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def damped_flow(n_seq=24, n_tok=10, n_layers=8, d=4, seed=0) -> DepthData:
    """Semi-implicit damped dynamics in V = ½‖x‖² − exp(−‖x − c‖²/2): Δx = α·v − β·∇V exactly."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.linspace(-1, 1, d, dtype=torch.float64)
    x = 1.2 * torch.randn(n_seq, n_tok, d, generator=g, dtype=torch.float64)
    v = 0.3 * torch.randn(n_seq, n_tok, d, generator=g, dtype=torch.float64)
    states = [x]
    for _ in range(n_layers):
        r = x - centre
        grad = x + torch.exp(-(r * r).sum(-1, keepdim=True) / 2) * r  # (n_seq, n_tok, d)
        v = (v - DT * grad / MASS) / (1 + DT * GAMMA)
        x = x + DT * v
        states.append(x)
    return DepthData(torch.stack(states, 1).float(), torch.ones(n_seq, n_tok, dtype=torch.bool))


def test_the_default_fit_recovers_a_damped_potential_flow_on_held_out_sequences():
    train, test = damped_flow().split(0.25, seed=0)
    fit = SharedPotentialFit(hidden=32).fit(train)
    r2 = fit.score(test)
    assert np.median(r2) > 0.99 and r2.min() > 0.95
    np.testing.assert_allclose(np.median(fit.alpha_), ALPHA, rtol=0.02)
    # what callers report: the settings used, why it stopped, and the (seconds, median validation R²) trace
    assert fit.settings_["solver"] == "joint" and fit.settings_["schedule"] == "anneal"
    assert fit.settings_["batch_size"] == 64 and fit.stop_reason_ in ("annealed", "patience", "max_epochs")
    assert len(fit.trace_) == len(fit.history_) and fit.best_epoch_ == int(np.argmin(fit.history_))
    times = [t for t, _ in fit.trace_]
    assert times == sorted(times) and fit.trace_[-1][1] > 0.99


def test_variable_projection_coefficients_are_the_least_squares_solve_for_a_fixed_potential():
    torch.manual_seed(0)
    s = damped_flow(n_seq=6).samples()
    s = {k: v.double() for k, v in s.items()}
    potential = MLPPotential(4, hidden=16, init_scale=1.0).double()
    with torch.no_grad():
        f = forces(potential, s)  # (S, L, d)
    alpha, beta = solve_coefficients(*normal_equations(s["v"], f, s["dx"]))
    for l in range(s["x"].shape[1]):
        design = torch.stack([s["v"][:, l].reshape(-1), f[:, l].reshape(-1)], 1)  # (S·d, 2)
        direct = torch.linalg.lstsq(design, s["dx"][:, l].reshape(-1, 1)).solution.squeeze(1)
        assert_close(torch.stack([alpha[l], beta[l]]), direct)
    # a vanishing force leaves β undetermined: the solve gives β = 0 and the velocity-only α, not a NaN
    alpha0, beta0 = solve_coefficients(*normal_equations(s["v"], torch.zeros_like(f), s["dx"]))
    assert_close(beta0, torch.zeros_like(beta0))
    assert_close(alpha0, (s["dx"] * s["v"]).sum((0, 2)) / (s["v"] ** 2).sum((0, 2)))


def test_a_varpro_fit_ends_on_the_exact_solve_for_its_fitted_potential():
    data = damped_flow(n_seq=12)
    fit = SharedPotentialFit(hidden=16, solver="varpro", max_epochs=5, seed=3).fit(data)
    s = fit._samples(data.split(fit.val_fraction, fit.seed)[0])  # the training part the fit saw
    with torch.no_grad():
        alpha, beta = solve_coefficients(*normal_equations(s["v"], forces(fit.potential_, s), s["dx"]))
    assert_close(torch.as_tensor(fit.alpha_), alpha.float())
    assert_close(torch.as_tensor(fit.beta_), beta.float())


@pytest.mark.parametrize("settings", [{}, {"solver": "varpro"}, {"polish_steps": 3}])
def test_fitting_with_a_given_potential_leaves_the_callers_object_untouched(settings):
    data = damped_flow(n_seq=8, n_tok=6, n_layers=5)
    potential = MLPPotential(4, hidden=8)
    before = {k: v.clone() for k, v in potential.state_dict().items()}
    fit = SharedPotentialFit(potential=potential, max_epochs=4, **settings).fit(data)
    for name, value in potential.state_dict().items():
        assert_close(value, before[name], rtol=0, atol=0)
    assert fit.potential_ is not potential
    assert not torch.equal(fit.potential_.out.weight, potential.out.weight)  # the copy did train


@pytest.mark.parametrize("schedule, reason", [("anneal", "annealed"), ("plateau", "converged")])
def test_the_convergence_rule_ends_an_easy_fit_before_max_epochs(schedule, reason):
    train, test = damped_flow(n_seq=32).split(0.25, seed=0)
    fit = SharedPotentialFit(hidden=16, schedule=schedule, tol=0.05, window=100, patience=1000,
                             max_epochs=1000).fit(train)
    assert fit.stop_reason_ == reason and len(fit.history_) < 1000
    assert np.median(fit.score(test)) > 0.98


def test_the_stopping_rule_compares_the_best_loss_before_and_within_the_window():
    stopper = _Stopper(patience=100, tol=0.1, window=2)
    for loss in (1.0, 0.5, 0.4):
        stopper.update(loss)
    assert not stopper.converged  # fewer than two windows seen
    stopper.update(0.3)
    assert not stopper.converged  # best 0.5 before the window, 0.3 within: 40% better
    stopper.update(0.29)
    stopper.update(0.295)
    assert stopper.converged  # best 0.3 before, 0.29 within: 3% < 10%


@pytest.mark.parametrize("field, value", [
    ("solver", "adam"), ("schedule", "step"), ("batch_size", 0), ("lr", 0.0), ("tol", 1.5), ("window", 0),
    ("polish_steps", -1), ("decay_fraction", 0.0), ("max_epochs", 2.5)])
def test_bad_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field) as err:
        SharedPotentialFit(**{field: value})
    assert err.value.field == field


def test_anneal_without_a_convergence_test_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="tol > 0") as err:
        SharedPotentialFit(tol=0.0)
    assert err.value.field == "tol"
    SharedPotentialFit(tol=0.0, schedule="plateau")  # the original fit's settings stay valid
