"""Depth data for the shared-potential fit: the token time axis (one fit layer per model layer), and what each
centring subtracts."""
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.analysis.potential import PotentialConfig, analyse_token_axis
from lagrangian_lens.errors import ConfigError, TrajectoryError
from lagrangian_lens.mechanics.depth_data import DepthData
from lagrangian_lens.mechanics.potential_fit import MeanStepFit, StaticNull

from .test_potential_fit import simulate


def labelled(n_seq=2, n_layers=3, n_tok=5):
    """states[n, l, t] = 100·n + 10·l + t (d = 1): every sample names where it came from."""
    n, l, t = torch.meshgrid(torch.arange(n_seq), torch.arange(n_layers), torch.arange(n_tok), indexing="ij")
    return (100 * n + 10 * l + t).double()[..., None]  # (N, L+1, T, 1)


def test_along_tokens_every_layer_is_a_fit_layer_and_samples_are_positions_with_real_neighbours():
    mask = torch.tensor([[True] * 5, [True] * 4 + [False]])  # the second sequence is one token shorter
    data = DepthData(labelled(), mask).prepare(centering="none", skip_positions=1).along_tokens()
    assert data.n_fit_layers == 3 and data.split(0.5)[0].time_axis == "tokens"
    s = data.samples()
    # centres t with t-1, t, t+1 real and not skipped: t = 2, 3 in sequence 0 and t = 2 in sequence 1
    centres = torch.tensor([2.0, 3.0, 102.0], dtype=torch.float64)[:, None] + 10 * torch.arange(3.0)[None]  # (S, L+1)
    assert_close(s["x"][..., 0], centres)
    assert_close(s["v"], torch.ones_like(s["v"]))
    assert_close(s["dx"], torch.ones_like(s["dx"]))
    depth = DepthData(labelled(), mask).samples()  # along depth, for contrast: tokens are samples, steps are 10
    assert depth["x"].shape == (9, 1, 1) and (depth["dx"] == 10).all()


def test_a_token_axis_needs_three_positions():
    with pytest.raises(TrajectoryError, match="2 positions give no .* at least 3 are needed"):
        DepthData(labelled(n_tok=2), torch.ones(2, 2, dtype=torch.bool), time_axis="tokens")
    with pytest.raises(ConfigError, match="time_axis"):
        DepthData(labelled(), torch.ones(2, 5, dtype=torch.bool), time_axis="width")


def test_each_centring_removes_its_own_mean_of_real_tokens():
    data = simulate(n_seq=6, n_tok=7, n_layers=5)
    data.mask[0, 5:] = False  # padding: never part of a mean
    data.states[0, :, 5:] = 1e6

    def means(prepared, dims):
        w = prepared.mask[:, None, :, None].expand(*prepared.states.shape[:3], 1).double()
        return (prepared.states.double() * w).sum(dims) / w.sum(dims)

    raw = data.prepare(centering="none", skip_positions=1)
    per_sequence = data.prepare(centering="sequence", skip_positions=1)
    assert_close(means(per_sequence, (1, 2)), torch.zeros(6, 6, dtype=torch.float64), atol=1e-5, rtol=0)
    # each layer keeps its offset from the sequence's mean, and so each layer's mean step stays in Δx
    assert_close(means(per_sequence, (2,)), means(raw, (2,)) - means(raw, (1, 2))[:, None], atol=1e-5, rtol=0)
    per_layer = data.prepare(centering="sequence-layer", skip_positions=1)
    assert_close(means(per_layer, (2,)), torch.zeros(6, 6, 6, dtype=torch.float64), atol=1e-5, rtol=0)
    globally = data.prepare(centering="global", skip_positions=1)
    assert_close(means(globally, (0, 1, 2)), torch.zeros(6, dtype=torch.float64), atol=1e-5, rtol=0)
    # per sequence and layer, every sequence's mean step is zero, so the mean-step baseline predicts no motion
    train, test = per_layer.split(0.5)
    mean_step, null = MeanStepFit().fit(train).scores(test), StaticNull().scores(test)
    np.testing.assert_allclose(mean_step["r2_centered"], null["r2_centered"], atol=1e-5)
    with pytest.raises(ConfigError, match="centering: must be one of"):
        data.prepare(centering="layer")


def test_the_token_axis_fit_shares_one_potential_over_every_layer():
    """The simulated depth axis read as tokens (positions <-> layers): each of the 8 particles becomes a "layer"
    with the same damped dynamics along positions, so one V_ψ with α_ℓ, β_ℓ per layer explains all of them."""
    data = simulate(n_seq=12, n_tok=8, n_layers=12)
    as_tokens = DepthData(data.states.transpose(1, 2).contiguous(), torch.ones(12, 13, dtype=torch.bool))
    cfg = PotentialConfig(centering="none", skip_positions=0, width=32, max_epochs=100, symmetry="both", symmetry_k=6)
    result = analyse_token_axis(as_tokens, cfg)
    fit = result["fit"]
    assert result["n_layers"] == 8 and len(fit["r2_centered"]["per_layer"]) == 8 and len(fit["alpha"]) == 8
    np.testing.assert_allclose(fit["r2_centered"]["median"], 1.0, atol=0.02)
    np.testing.assert_allclose(fit["force_r2"]["median"], 1.0, atol=0.2)  # the potential explains what inertia cannot
    np.testing.assert_allclose(fit["alpha"], fit["alpha"][0], rtol=0.05)  # the same damping at every "layer"
    assert len(result["symmetry_per_layer"]["gap"]) == 8 and "gap" in result["symmetry"]
    np.testing.assert_allclose(result["symmetry_per_layer"]["gap"], 0.0, atol=0.01)  # conservative at every layer
