"""Known answers of the separator's scoring: both R² definitions, the static null and mean-step baselines,
force_r2, the middle band, what position 0 carries, and the final norm's gain."""
import numpy as np
import pytest
import torch
from torch import nn

from lagrangian_lens.analysis.potential import PotentialConfig, norm_gain, position_zero, scored
from lagrangian_lens.errors import ConfigError
from lagrangian_lens.mechanics.depth_data import DepthData
from lagrangian_lens.mechanics.potential_fit import (
    MeanStepFit,
    StaticNull,
    VelocityOnlyFit,
    force_r2,
    middle_band,
    r2_per_layer,
)


def drifting(n_seq=200, n_tok=8, n_layers=5, d=3, seed=0):
    """A random walk through depth with a mean step per layer μ_l: Δx_l = μ_l + noise."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n_layers, d, generator=g, dtype=torch.float64)  # (L, d)
    steps = mu[None, :, None] + 0.5 * torch.randn(n_seq, n_layers, n_tok, d, generator=g, dtype=torch.float64)
    x0 = torch.randn(n_seq, 1, n_tok, d, generator=g, dtype=torch.float64)
    return DepthData(torch.cat([x0, x0 + steps.cumsum(1)], dim=1), torch.ones(n_seq, n_tok, dtype=torch.bool))


def centred_total(dx):
    return ((dx - dx.mean(0)) ** 2).sum((0, 2))  # (L,)


def test_the_static_null_scores_zero_uncentred_and_minus_the_mean_steps_share_centred():
    data = drifting()
    dx = data.samples()["dx"]  # (S, L, d)
    n, mean = dx.shape[0], dx.mean(0)  # (L, d)
    scores = StaticNull().fit(data).scores(data)
    np.testing.assert_array_equal(scores["r2_uncentered"], 0.0)
    np.testing.assert_allclose(scores["r2_centered"], (-n * (mean**2).sum(1) / centred_total(dx)).numpy(), rtol=1e-12)
    assert (scores["r2_centered"] < -0.5).all()  # here the mean step is most of the motion


def test_the_mean_step_scores_zero_centred_on_its_train_data_and_about_zero_on_fresh_data():
    train, test = drifting().split(0.5, seed=0)
    fit = MeanStepFit().fit(train)
    own = fit.scores(train)
    np.testing.assert_array_equal(own["r2_centered"], 0.0)  # exactly: the same mean, computed the same way
    dx_train = train.samples()["dx"]
    np.testing.assert_allclose(own["r2_uncentered"],
                               (len(dx_train) * (dx_train.mean(0) ** 2).sum(1) / (dx_train**2).sum((0, 2))).numpy(),
                               rtol=1e-12)
    dx = test.samples()["dx"]  # on fresh data: minus the squared distance between the two means, as a share
    expected = -len(dx) * ((dx.mean(0) - dx_train.mean(0)) ** 2).sum(1) / centred_total(dx)
    fresh = fit.score(test)
    np.testing.assert_allclose(fresh, expected.numpy(), rtol=1e-10)
    np.testing.assert_allclose(fresh, 0.0, atol=0.01)


def test_r2_definitions_differ_only_in_the_total_they_divide_by():
    g = torch.Generator().manual_seed(1)
    dx, dx_hat = torch.randn(50, 4, 3, generator=g) + 2.0, torch.randn(50, 4, 3, generator=g)
    res = ((dx.double() - dx_hat.double()) ** 2).sum((0, 2))
    np.testing.assert_allclose(r2_per_layer(dx, dx_hat, centered=True), (1 - res / centred_total(dx.double())).numpy())
    np.testing.assert_allclose(r2_per_layer(dx, dx_hat, centered=False),
                               (1 - res / (dx.double() ** 2).sum((0, 2))).numpy())


def test_force_r2_is_the_share_of_the_velocity_residual_explained():
    np.testing.assert_allclose(force_r2([0.9, 0.5, 0.2], [0.8, 0.5, 0.6]), [0.5, 0.0, -1.0])
    data = drifting(n_seq=20)
    velocity = VelocityOnlyFit().fit(data).scores(data)
    entry = scored(velocity, velocity)  # the velocity-only fit adds nothing to itself
    np.testing.assert_array_equal(entry["force_r2"]["per_layer"], 0.0)
    assert set(entry) == {"r2_centered", "r2_uncentered", "force_r2", "shape"}


@pytest.mark.parametrize(("n", "layers"), [(12, [4, 5, 6, 7]), (10, [3, 4, 5, 6]), (5, [1, 2, 3]), (2, [0, 1]),
                                           (1, [0])])
def test_the_middle_band_is_the_middle_third_never_empty(n, layers):
    assert list(range(n))[middle_band(n)] == layers


def test_scored_profiles_give_median_and_middle_band_mean():
    r2 = np.arange(12) / 12
    entry = scored({"r2_centered": r2, "r2_uncentered": r2 + 0.1}, {"r2_centered": np.zeros(12)})
    np.testing.assert_allclose(entry["r2_centered"]["middle_mean"], 5.5 / 12)
    np.testing.assert_allclose(entry["r2_uncentered"]["middle_mean"], 5.5 / 12 + 0.1)
    np.testing.assert_allclose(entry["r2_centered"]["median"], 5.5 / 12)
    np.testing.assert_allclose(entry["force_r2"]["per_layer"], r2)  # against a velocity R² of 0: R² itself


def test_position_zero_carries_the_predictable_variance_when_it_moves_predictably():
    """Position 0 moves as x_{l+1} = 1.5 x_l on a large scale (a linear map predicts it exactly); every other
    position is a random walk, whose steps nothing predicts."""
    g = torch.Generator().manual_seed(0)
    n_seq, n_tok, n_layers, d = 60, 6, 5, 3
    x0, steps = torch.randn(n_seq, 1, n_tok, d, generator=g), 0.3 * torch.randn(n_seq, n_layers, n_tok, d, generator=g)
    states = torch.cat([x0, x0 + steps.cumsum(1)], dim=1)  # (N, L+1, T, d)
    scale = 30 * torch.randn(n_seq, 1, 1, generator=g) * torch.tensor([1.0, -2.0, 0.5])
    states[:, :, 0] = scale * 1.5 ** torch.arange(n_layers + 1.0)[None, :, None]
    data = DepthData(states, torch.ones(n_seq, n_tok, dtype=torch.bool))
    result = position_zero(data, PotentialConfig(centering="none"))
    with_0, without_0 = (result[k]["r2_centered"]["per_layer"] for k in ("with_position_0", "without_position_0"))
    np.testing.assert_allclose(with_0, 1.0, atol=0.05)
    np.testing.assert_allclose(without_0, 0.0, atol=0.15)


def test_the_norm_gain_is_measured_whatever_the_parametrisation():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    g = torch.Generator().manual_seed(0)
    for d in (8, 7):  # even and odd widths
        gain = 1 + 0.1 * torch.randn(d, generator=g)
        layer_norm, rms_norm, gemma = nn.LayerNorm(d), nn.RMSNorm(d, eps=1e-6), Gemma3RMSNorm(d)
        with torch.no_grad():
            layer_norm.weight.copy_(gain)
            layer_norm.bias.normal_(generator=g)  # the bias cancels
            rms_norm.weight.copy_(gain)
            gemma.weight.copy_(gain - 1)  # Gemma scales by 1 + w
        expected = [gain.mean(), gain.std(), (gain - 1).abs().max()]
        for norm in (layer_norm, rms_norm, gemma):
            stats = norm_gain(norm, d)
            np.testing.assert_allclose([stats["mean"], stats["std"], stats["max_abs_dev"]], expected, atol=1e-4)
        assert norm_gain(gemma, d)["module"] == "Gemma3RMSNorm"
    assert norm_gain(nn.Identity(), 8) is None and norm_gain(None, 8) is None
    unit = norm_gain(nn.LayerNorm(8, elementwise_affine=False), 8)
    np.testing.assert_allclose([unit["mean"], unit["std"], unit["max_abs_dev"]], [1.0, 0.0, 0.0], atol=1e-4)


def test_potential_settings_are_validated():
    with pytest.raises(ConfigError, match="centering: 'layer' is not one of sequence, sequence-layer"):
        PotentialConfig(centering="layer")
    with pytest.raises(ConfigError, match="symmetry: 'diagonal' is not one of pooled, per-layer, both"):
        PotentialConfig(symmetry="diagonal")
