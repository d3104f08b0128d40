"""Known answers of the per-layer Jacobian-symmetry test, Δx_ℓ ≈ A·v + M_ℓ·x + b_ℓ (A shared): on exactly linear
flows the free fit recovers every M_ℓ, a symmetric M_ℓ costs nothing, and a curl shows at its own layer."""
import numpy as np
import torch
from torch.testing import assert_close

from lagrangian_lens.mechanics.depth_data import DepthData
from lagrangian_lens.mechanics.symmetry import JacobianSymmetryTest, PerLayerSymmetryTest, summarise_gaps

D, N_LAYERS, CURL_LAYER, DAMPING = 4, 6, 2, 0.6
OMEGA = 0.4 * torch.tensor([[0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1], [0, 0, -1, 0]], dtype=torch.float64)


def linear_flow(curl: bool, n_seq=30, n_tok=8, seed=0):
    """x_{ℓ+1} = x_ℓ + 0.6·v_ℓ + M_ℓ·x_ℓ + b_ℓ with M_ℓ symmetric and different at every layer, and (``curl``) an
    antisymmetric Ω added at layer CURL_LAYER. Returns the data and the true M_ℓ (L, d, d)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_seq, n_tok, D, generator=g, dtype=torch.float64)
    states, Ms = [x - 0.3 * torch.randn(n_seq, n_tok, D, generator=g, dtype=torch.float64), x], []
    for layer in range(N_LAYERS):
        S = torch.randn(D, D, generator=g, dtype=torch.float64)
        M = -0.2 * torch.eye(D, dtype=torch.float64) + 0.05 * (S + S.T) + (OMEGA if curl and layer == CURL_LAYER else 0)
        b = 0.1 * torch.randn(D, generator=g, dtype=torch.float64)
        x, x_prev = states[-1], states[-2]
        states.append(x + DAMPING * (x - x_prev) + x @ M.T + b)
        Ms.append(M)
    return DepthData(torch.stack(states, 1), torch.ones(n_seq, n_tok, dtype=torch.bool)), torch.stack(Ms)


def test_symmetric_layers_give_no_gap_and_the_free_fit_recovers_every_layer():
    train, test = linear_flow(curl=False)[0].split(0.25)
    per_layer = PerLayerSymmetryTest(k=D, ridge=0.0).fit(train)
    scores = per_layer.score(test)
    np.testing.assert_allclose(scores["r2_free"], 1.0, atol=1e-10)
    np.testing.assert_allclose(scores["gap"], 0.0, atol=1e-10)
    np.testing.assert_allclose(scores["gap_uncentered"], 0.0, atol=1e-10)
    np.testing.assert_allclose(scores["antisymmetry_ratio"], 0.0, atol=1e-6)
    A = per_layer.W_free_[:, :, :D]  # (L, k, k): one velocity map shared by every layer, the true one
    assert_close(A, DAMPING * torch.eye(D, dtype=torch.float64).expand_as(A), atol=1e-8, rtol=0)
    # pooled over layers, one M cannot be every layer's M_ℓ: the pooled test sees a gap where there is no curl
    assert JacobianSymmetryTest(k=D, ridge=0.0).fit(train).score(test)["gap"] > 1e-3


def test_a_curl_at_one_layer_shows_as_a_large_gap_at_that_layer():
    data, Ms = linear_flow(curl=True)
    train, test = data.split(0.25)
    per_layer = PerLayerSymmetryTest(k=D, ridge=0.0).fit(train)
    scores = per_layer.score(test)
    np.testing.assert_allclose(scores["r2_free"], 1.0, atol=1e-10)  # the free fit is exact at every layer
    P = per_layer.components_  # the free M_ℓ in PCA coordinates (a rotation, as k = d) is the true one rotated
    assert_close(per_layer.W_free_[:, :, D:2 * D], P.T @ Ms @ P, atol=1e-8, rtol=0)
    M = Ms[CURL_LAYER]
    ratio = np.zeros(N_LAYERS)
    ratio[CURL_LAYER] = float((M - M.T).norm() / (M + M.T).norm())
    np.testing.assert_allclose(scores["antisymmetry_ratio"], ratio, atol=1e-6)
    gap = np.array(scores["gap"])
    others = np.delete(gap, CURL_LAYER)
    assert gap[CURL_LAYER] > 0.1 and gap[CURL_LAYER] > 10 * np.abs(others).max(), gap
    summary = summarise_gaps(scores)
    assert summary["gap_max_layer"] == CURL_LAYER and summary["gap_max"] == gap[CURL_LAYER]
    np.testing.assert_allclose(summary["gap_median"], np.median(gap))


def test_one_layer_per_layer_equals_the_pooled_test():
    data = linear_flow(curl=True)[0]
    one_layer = DepthData(data.states[:, CURL_LAYER:CURL_LAYER + 3], data.mask)  # a single fit layer
    pooled = JacobianSymmetryTest(k=D).fit(one_layer)
    per_layer = PerLayerSymmetryTest(k=D).fit(one_layer)
    assert_close(per_layer.W_free_[0], pooled.W_free_)
    assert_close(per_layer.W_sym_[0], pooled.W_sym_)
    for key, value in pooled.score(one_layer).items():
        np.testing.assert_allclose(per_layer.score(one_layer)[key], [value], rtol=1e-10)
