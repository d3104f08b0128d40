"""Log-Euler–Lagrange residual and the neighbouring-attractor test, against constructed exact answers."""
import torch
from torch.testing import assert_close

from lagrangian_lens.mechanics import (
    attractor_unique_tokens,
    log_el_residual,
    logprob_gradients,
)


def linear_readout(d=6, V=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    return lambda h: h @ W.T


def test_logprob_gradient_matches_the_closed_form_of_a_linear_readout():
    readout = linear_readout()
    W = readout(torch.eye(6, dtype=torch.float64)).T  # (V, d)
    h = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 9, 2, 2])
    p = torch.softmax(h @ W.T, -1)
    expected = W[y] - p @ W  # ∇ log softmax(Wh)_y = W_y - E_p[W]
    assert_close(logprob_gradients(h, y, readout, chunk=2), expected)


def test_a_path_built_to_satisfy_the_log_el_equation_has_zero_residual():
    readout = linear_readout()
    y = torch.tensor([1, 4, 4, 7, 0, 2, 5, 5, 3, 8])
    h = [torch.zeros(6, dtype=torch.float64), torch.full((6,), 0.3, dtype=torch.float64)]
    for t in range(1, 9):  # p_{t+1} = p_t + ∇ ln p(y_t | h_t), with v = 2p/‖p‖²
        v = h[t] - h[t - 1]
        p = 2 * v / v.dot(v) + logprob_gradients(h[t][None], y[t:t + 1], readout)[0]
        h.append(h[t] + 2 * p / p.dot(p))
    h = torch.stack(h)
    grads = logprob_gradients(h, y, readout)
    rel, ok = log_el_residual(h, grads, torch.ones(9, dtype=torch.bool))
    assert ok.all()
    assert_close(rel, torch.zeros_like(rel), atol=1e-10, rtol=0)
    # and a perturbed path does not satisfy it
    h[5] += 0.05
    rel, _ = log_el_residual(h, logprob_gradients(h, y, readout), torch.ones(9, dtype=torch.bool))
    assert rel[3:6].min() > 1e-3


def test_attractor_counts_tokens_crossed_along_the_segment():
    readout = lambda h: h  # noqa: E731  argmax = the largest coordinate
    e = torch.eye(4)
    h0 = torch.stack([e[0], e[0], e[0] + 0.1 * e[1]])
    h1 = torch.stack([e[0] * 2, e[1], e[0] + 0.2 * e[1]])
    assert attractor_unique_tokens(h0, h1, readout).tolist() == [1, 2, 1]


def test_log_el_terms_compare_both_signs_the_angle_and_the_scale():
    from lagrangian_lens.mechanics.forces import log_el_terms

    gen = torch.Generator().manual_seed(3)
    h = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    v = h[1:] - h[:-1]
    p = 2 * v / (v * v).sum(-1, keepdim=True)
    grad = torch.zeros_like(h)
    grad[1:-1] = p[1:] - p[:-1]  # the gradient equals Δp: the + form of the equation holds exactly
    t = log_el_terms(h, grad, torch.ones(7, dtype=torch.bool))
    assert_close(t["plus"], torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close(t["minus"], torch.ones(6, dtype=torch.float64))
    assert_close(t["cos"], torch.ones(6, dtype=torch.float64))
    assert_close(t["scale"], torch.ones(6, dtype=torch.float64))
    flipped = log_el_terms(h, -3 * grad, torch.ones(7, dtype=torch.bool))  # the − form, three times too large
    assert_close(flipped["cos"], -torch.ones(6, dtype=torch.float64))
    assert_close(flipped["scale"], torch.full((6,), 1 / 3, dtype=torch.float64))
    assert_close(flipped["minus"], torch.full((6,), 0.5, dtype=torch.float64))  # ‖Δp − 3Δp‖ / (‖Δp‖ + 3‖Δp‖)


def test_logit_displacement_is_exact_for_a_bias_free_linear_head_and_not_through_a_norm():
    from lagrangian_lens.mechanics.forces import logit_displacement_error

    gen = torch.Generator().manual_seed(1)
    W = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    h0, h1 = torch.randn(9, 6, generator=gen, dtype=torch.float64), torch.randn(9, 6, generator=gen, dtype=torch.float64)
    linear = logit_displacement_error(h0, h1, lambda h: h @ W.T, W)
    assert_close(linear, torch.zeros(9, dtype=torch.float64), atol=1e-12, rtol=0)
    with_bias = logit_displacement_error(h0, h1, lambda h: h @ W.T + 5.0, W)  # a bias cancels in Δz
    assert_close(with_bias, torch.zeros(9, dtype=torch.float64), atol=1e-12, rtol=0)
    normed = logit_displacement_error(h0, h1, lambda h: torch.nn.functional.normalize(h, dim=-1) @ W.T, W)
    assert (normed > 0.1).all()
