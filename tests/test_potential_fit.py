"""Known-answer validation of the shared-potential diagnostic on synthetic depth trajectories."""
import functools

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lagrangian_lens.mechanics.depth_data import DepthData
from lagrangian_lens.mechanics.potential_fit import (
    KnownPotential,
    LinearReferenceFit,
    MLPPotential,
    Potential,
    SharedPotentialFit,
    VelocityOnlyFit,
    force_r2,
    profile_shape,
)
from lagrangian_lens.mechanics.symmetry import JacobianSymmetryTest

DT, GAMMA, MASS = 0.5, 0.4, 2.0
ALPHA, BETA = 1 / (1 + DT * GAMMA), DT**2 / (MASS * (1 + DT * GAMMA))
CENTRE = torch.tensor([1.0, -0.5, 0.3, 0.0, 0.8, -1.0])


def grad_v(x, layer=0, varying=False):
    """V = ½‖x‖² − 2·exp(−‖x − c‖²/2): a harmonic bowl with a Gaussian well (centre moves with depth if varying)."""
    c = CENTRE * (1 + 0.8 * layer) if varying else CENTRE
    r = x - c
    return x + 2.0 * torch.exp(-(r * r).sum(-1, keepdim=True) / 2) * r


def simulate(kind="conservative", n_seq=32, n_tok=12, n_layers=10, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(n_seq, n_tok, d, generator=g, dtype=torch.float64)
    v = 0.3 * torch.randn(n_seq, n_tok, d, generator=g, dtype=torch.float64)
    omega = torch.zeros(d, d, dtype=torch.float64)
    omega[0, 1], omega[1, 0], omega[2, 3], omega[3, 2] = 2.0, -2.0, 1.5, -1.5
    states = [x]
    for layer in range(n_layers):
        f = torch.zeros_like(x) if kind == "velocity" else -grad_v(x, layer, varying=kind == "layer-varying")
        if kind == "layer-varying":  # the bowl's bottom drifts with depth too: no single V has it
            f = f + 0.5 * layer * CENTRE.double()
        if kind == "curl":
            f = f + x @ omega.T
        v = (v + DT * f / MASS) / (1 + DT * GAMMA)
        x = x + DT * v
        states.append(x)
    return DepthData(torch.stack(states, dim=1).float(), torch.ones(n_seq, n_tok, dtype=torch.bool))


@functools.cache  # each flow is fitted once per session: its tests share the fit (none mutates it)
def fit_and_score(kind):
    data = simulate(kind)
    train, test = data.split(0.25, seed=0)
    fit = SharedPotentialFit(hidden=64, max_epochs=400, patience=40, lr=3e-3, seed=0).fit(train)
    return fit, fit.score(test), VelocityOnlyFit().fit(train).score(test), train, test


def test_conservative_system_is_recovered_with_its_constants():
    fit, r2, vel, train, test = fit_and_score("conservative")
    assert np.median(r2) > 0.999 and r2.min() > 0.99
    np.testing.assert_allclose(np.median(fit.alpha_), ALPHA, rtol=0.01)
    np.testing.assert_allclose(fit.alpha_, ALPHA, rtol=0.04)
    # β and V are identifiable only up to a common scale: the learned β_l must be constant across layers. The
    # first layers see the widest spread of states, where the MLP's V is least accurate, hence the looser bound.
    ratio = fit.beta_ / np.median(fit.beta_)
    np.testing.assert_allclose(ratio[3:], 1.0, atol=0.03)
    np.testing.assert_allclose(ratio, 1.0, atol=0.15)
    assert 1 - np.median(r2) < 0.1 * (1 - np.median(vel))  # the potential explains what velocity cannot
    # with the true potential plugged in, α and β come out exactly
    oracle = SharedPotentialFit(potential=KnownPotential(lambda x, aux: grad_v(x))).fit(train)
    np.testing.assert_allclose(oracle.alpha_, ALPHA, rtol=1e-5)
    np.testing.assert_allclose(oracle.beta_, BETA, rtol=1e-5)
    np.testing.assert_allclose(oracle.score(test), 1.0, atol=1e-6)


@pytest.mark.parametrize("kind", ["curl", "layer-varying"])
def test_non_conservative_systems_score_clearly_lower(kind):
    _, r2, _, _, _ = fit_and_score(kind)
    _, r2_cons, _, _, _ = fit_and_score("conservative")
    # "clearly lower": the unexplained variance is an order of magnitude above the conservative system's
    assert 1 - np.median(r2) > 10 * (1 - np.median(r2_cons))
    reference = LinearReferenceFit().fit(simulate(kind).split(0.25)[0]).score(simulate(kind).split(0.25)[1])
    assert reference.shape == r2.shape


def test_force_r2_is_near_one_on_a_conservative_flow_and_clearly_lower_on_curl_and_layer_varying_flows():
    force = {}
    for kind in ("conservative", "curl", "layer-varying"):
        fit, r2, vel, train, test = fit_and_score(kind)
        force[kind] = np.median(force_r2(r2, vel))
        velocity = VelocityOnlyFit().fit(train)
        (dx, fit_hat), velocity_hat = fit.predict(test), velocity.predict(test)[1]
        direct = 1 - ((dx - fit_hat) ** 2).double().sum((0, 2)) / ((dx - velocity_hat) ** 2).double().sum((0, 2))
        for centered in (True, False):  # 1 − SS_res(fit)/SS_res(velocity): the same under both R² definitions
            np.testing.assert_allclose(force_r2(fit.score(test, centered=centered),
                                                velocity.score(test, centered=centered)), direct.numpy(), rtol=1e-6)
    assert force["conservative"] > 0.95
    for kind in ("curl", "layer-varying"):  # clearly lower: 10x the unexplained share of the conservative flow
        assert force[kind] < 0.95 and 1 - force[kind] > 10 * (1 - force["conservative"]), force


def test_symmetry_test_flags_the_curl_and_passes_the_conservative_system():
    gaps = {}
    for kind in ("conservative", "curl"):
        train, test = simulate(kind, n_seq=48).split(0.25)
        gaps[kind] = JacobianSymmetryTest(k=6).fit(train).score(test)
    assert gaps["curl"]["gap"] > 1e-3 and gaps["curl"]["gap"] > 100 * abs(gaps["conservative"]["gap"])
    assert gaps["curl"]["antisymmetry_ratio"] > 0.5 > 0.05 > gaps["conservative"]["antisymmetry_ratio"]


def test_velocity_only_dynamics_gain_nothing_from_a_potential():
    fit, r2, vel, _, _ = fit_and_score("velocity")
    assert np.median(vel) > 0.999
    assert np.median(r2) < np.median(vel) + 1e-3


def test_symmetric_constraint_is_exact_when_the_truth_is_symmetric_linear():
    g = torch.Generator().manual_seed(0)
    S = torch.randn(4, 4, generator=g, dtype=torch.float64)
    S = (S + S.T) / 10
    x = torch.randn(20, 5, 4, generator=g, dtype=torch.float64)
    states = [x - 0.1, x]
    for _ in range(6):
        states.append(states[-1] + 0.5 * (states[-1] - states[-2]) + states[-1] @ S.T)
    data = DepthData(torch.stack(states, 1), torch.ones(20, 5, dtype=torch.bool))
    test = JacobianSymmetryTest(k=4, ridge=0.0).fit(data)
    M = test.W_sym_[:, 4:8]
    torch.testing.assert_close(M, M.T)
    assert test.score(data)["r2_symmetric"] > 0.999999


def test_profile_shapes_follow_the_stated_rule():
    assert profile_shape(np.array([0.9, 0.91, 0.92, 0.9])) == "uniform"
    assert profile_shape(np.array([0.9, 0.8, 0.6, 0.5, 0.3, 0.2])) == "decaying"
    assert profile_shape(np.array([0.9, 0.85, 0.3, 0.2, 0.8, 0.9])) == "bathtub"
    assert profile_shape(np.array([0.1, 0.2, 0.4, 0.5, 0.7, 0.9])) == "other"


def test_depth_data_validates_and_splits_by_sequence():
    from lagrangian_lens.errors import TrajectoryError

    with pytest.raises(TrajectoryError, match="at least 3 states"):
        DepthData(torch.zeros(2, 2, 3, 4), torch.ones(2, 3))
    with pytest.raises(TrajectoryError, match="mask must be"):
        DepthData(torch.zeros(2, 4, 3, 4), torch.ones(3, 3))
    data = simulate(n_seq=10)
    train, test = data.split(0.3, seed=1)
    assert train.n_sequences == 7 and test.n_sequences == 3
    prepared = data.prepare(centering="sequence", skip_positions=2)
    assert not prepared.mask[:, :2].any()
    centred = prepared.states.permute(0, 2, 1, 3)[prepared.mask].reshape(10, -1, 6).mean(1)
    torch.testing.assert_close(centred, torch.zeros_like(centred), atol=1e-5, rtol=0)


def test_helmholtz_augmentation_shrinks_on_a_conservative_system_and_not_on_a_curl():
    """The skew term Ω of harmonic+helmholtz, fitted as the menu fits it, stays near 0 where the force is a
    gradient and grows where it has a curl, which it then captures under either R² definition and beyond inertia."""
    from lagrangian_lens.analysis.potential import scored
    from lagrangian_lens.mechanics.potential_forms import ParametricPotential

    norms = {}
    for kind in ("conservative", "curl"):
        train, test = simulate(kind).split(0.25)
        velocity = VelocityOnlyFit().fit(train).scores(test)
        rows = {}
        for name, options in (("harmonic", {}), ("harmonic+helmholtz", {"helmholtz": True})):
            fit = SharedPotentialFit(potential=ParametricPotential(6, "harmonic", **options), max_epochs=150, seed=0,
                                     lr=1e-2).fit(train)
            rows[name] = {**scored(fit.scores(test), velocity), **fit.potential_.augmentation_norms()}
        norms[kind] = rows["harmonic+helmholtz"]["helmholtz_omega_fro"]
        if kind == "curl":
            for name in ("r2_centered", "r2_uncentered", "force_r2"):
                assert rows["harmonic+helmholtz"][name]["median"] > rows["harmonic"][name]["median"]
    assert norms["conservative"] < 0.1 * norms["curl"]


def test_the_menu_fits_every_form_and_augmentation():
    from lagrangian_lens.analysis.potential import PotentialConfig, functional_form_menu

    train, test = simulate("conservative", n_seq=8).split(0.25)
    rows = functional_form_menu(train, test, PotentialConfig(menu_k=4, max_epochs=3))
    assert [r["variant"] for r in rows] == ["harmonic", "gaussian", "morse", "lorentzian", "log_saturation", "weibull",
                                            "power", "gaussian+metric", "harmonic+helmholtz", "harmonic+gauge=constant",
                                            "harmonic+gauge=rank1", "harmonic+gauge=rank2"]
    assert all(np.isfinite(r["force_r2"]["median"]) for r in rows)


def test_the_shared_silu_mlp_gradient_equals_autograd_and_so_do_its_parameter_gradients():
    from lagrangian_lens.nn import silu_mlp, silu_mlp_input_grad

    torch.manual_seed(0)
    hidden = nn.ModuleList([nn.Linear(5, 7), nn.Linear(7, 9), nn.Linear(9, 4)]).double()
    out = nn.Linear(4, 1, bias=False).double()
    nn.init.normal_(out.weight)
    z = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    closed = silu_mlp_input_grad(hidden, out.weight, z)
    auto, = torch.autograd.grad(silu_mlp(hidden, out, z).sum(), z, create_graph=True)
    assert closed.shape == z.shape
    assert_close(closed, auto)
    # Training differentiates through the force, so the closed form must also have autograd's parameter gradients.
    weights, params = torch.randn_like(z), [*hidden.parameters(), out.weight]
    for a, c in zip(torch.autograd.grad((auto * weights).sum(), params),
                    torch.autograd.grad((closed * weights).sum(), params)):
        assert_close(c, a)
    potential = MLPPotential(5, hidden=8).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert_close(potential.grad(x), torch.autograd.grad(potential(x).sum(), x)[0])


def test_every_potential_implements_the_protocol_and_an_incomplete_one_is_refused():
    from lagrangian_lens.errors import ConfigError
    from lagrangian_lens.mechanics.potential_forms import ParametricPotential

    x = torch.randn(2, 3, 6)
    for potential in (MLPPotential(6), KnownPotential(lambda x, aux: x), ParametricPotential(6, "harmonic")):
        assert isinstance(potential, Potential)
    assert KnownPotential(lambda x, aux: x).nonconservative(x, x) is None
    assert ParametricPotential(6, "harmonic", helmholtz=True).nonconservative(x, x).shape == x.shape

    class GradOnly(nn.Module):
        def grad(self, x, aux=None):
            return x

    with pytest.raises(ConfigError, match="PotentialBase"):
        SharedPotentialFit(potential=GradOnly()).fit(simulate(n_seq=4, n_tok=3, n_layers=3))


def test_fit_trains_a_copy_of_the_given_potential_so_repeated_fits_are_equal():
    data = simulate(n_seq=8, n_tok=6, n_layers=4)
    potential = MLPPotential(6, hidden=16)
    before = {k: v.clone() for k, v in potential.state_dict().items()}

    def fit():
        return SharedPotentialFit(potential=potential, max_epochs=6, patience=6, batch_size=64, seed=0).fit(data)

    first, second = fit(), fit()
    for name, value in potential.state_dict().items():
        assert_close(value, before[name], rtol=0, atol=0)  # the constructor argument is never trained
    assert first.potential_ is not potential and second.potential_ is not first.potential_
    assert not torch.equal(first.potential_.out.weight, potential.out.weight)  # the copy did train
    assert_close(torch.as_tensor(first.alpha_), torch.as_tensor(second.alpha_))
    assert_close(torch.as_tensor(first.beta_), torch.as_tensor(second.beta_))
    for a, b in zip(first.potential_.parameters(), second.potential_.parameters()):
        assert_close(a, b)
