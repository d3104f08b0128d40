"""Jacobian steering (Algorithm 1) and its baselines on toy heads with known answers."""
import json
import math
import time

import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.errors import ConfigError, TrajectoryError
from lagrangian_lens.models.pretrained.architectures import unembedding
from lagrangian_lens.steering.baselines import compare_baselines
from lagrangian_lens.steering.jacobian import LineSearch, jacobian_steer, target_logprob_and_grad
from lagrangian_lens.trajectories import readout

from .conftest import tiny_model


def linear_head(V=50, d=16, seed=100, dtype=torch.float32, scale=1.0):
    """A bias-free linear read-out exposing its weight, and the same map without it (autograd only)."""
    W = scale * torch.randn(V, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)

    def head(h):
        return h @ W.T

    head.linear_weight = W
    return head, (lambda h: h @ W.T), W


def states(N, d, seed=1, dtype=torch.float32):
    return torch.randn(N, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_monotone(trace):
    for row in trace:
        row = row[~row.isnan()]
        assert (row[1:] >= row[:-1]).all(), row


def test_closed_form_gradient_equals_autograd_for_a_token_and_a_set():
    head, plain, W = linear_head()
    h = states(5, 16)
    ids = torch.tensor([0, 3, 7, 49, 12])
    mask = torch.zeros(5, 50, dtype=torch.bool)
    mask[torch.arange(5), ids] = True
    mask[:, 20:23] = True  # a three-token set added to every pair
    for target in (ids, mask):
        logp, g, logits = target_logprob_and_grad(h, target, head)
        logp_ag, g_ag, logits_ag = target_logprob_and_grad(h, target, plain)
        assert_close(g, g_ag)
        assert_close(logp, logp_ag)
        assert_close(logits, logits_ag)
    # known answers: ln p of a set is the logsumexp of its members' log-probs; one token is the special case
    log_probs = (h @ W.T).log_softmax(-1)
    assert_close(logp, log_probs.masked_fill(~mask, -math.inf).logsumexp(-1))
    one = target_logprob_and_grad(h, torch.zeros(5, 50, dtype=torch.bool).scatter_(1, ids[:, None], True), head)
    assert_close(one[0], log_probs.gather(1, ids[:, None])[:, 0])
    assert_close(one[1], target_logprob_and_grad(h, ids, head)[1])
    single = (W[ids] - log_probs.exp() @ W)  # W_t* - Σ p_j W_j
    assert_close(target_logprob_and_grad(h, ids, head)[1], single)


def test_final_readout_exposes_its_weight_and_the_closed_form_matches_autograd_through_it():
    model = tiny_model("llama")
    head = readout(model, "final")
    assert head.linear_weight is unembedding(model).weight
    assert readout(model, "block.-1").linear_weight is None  # the final norm comes first: not linear
    assert readout(tiny_model("gemma3_text"), "final").linear_weight is None  # soft-capped logits
    h = states(4, 32)
    ids = torch.tensor([5, 100, 4000, 49151])
    with torch.no_grad():  # autograd must work under the caller's no_grad
        logp, g, _ = target_logprob_and_grad(h, ids, head)
        logp_ag, g_ag, _ = target_logprob_and_grad(h, ids, lambda x: head(x))
    assert_close(g, g_ag)
    assert_close(logp, logp_ag)
    assert_close(logp, model.lm_head(h).log_softmax(-1).gather(1, ids[:, None])[:, 0].detach())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_theorem_e1_jacobian_needs_the_least_norm_for_a_small_gain(seed):
    # float64 and a gain of 1e-4 nats: the linear regime, where Theorem E.1 is exact to first order
    head, _, W = linear_head(seed=200 + seed, dtype=torch.float64)
    h = states(4, 16, seed=seed, dtype=torch.float64)
    ids = torch.tensor([1, 11, 22, 33])
    for i in range(4):
        logp, g, _ = target_logprob_and_grad(h[i], ids[i], head)
        result = jacobian_steer(h[i], ids[i], head, eta=float((logp + 1e-4).exp()), max_steps=50)
        assert result.success.all() and result.logp_gain.item() == pytest.approx(1e-4, rel=1e-3)
        baselines = compare_baselines(h[i], ids[i], head, result, seed=seed)
        r = result.delta_norm
        for method in ("additive", "random", "best_random"):
            assert (r <= baselines[method].norm_at_equal_gain * (1 + 1e-6)).all(), method
        u = W[ids[i]] / W[ids[i]].norm()
        assert (g @ u).item() > 0  # the additive direction does climb, so its ratio is finite
        assert_close(baselines["additive"].norm_ratio, g.norm(dim=-1) / (g @ u), rtol=1e-3, atol=0)


def test_algorithm_1_reaches_eta_on_a_well_conditioned_head():
    head, _, W = linear_head()
    h = states(8, 16)
    result = jacobian_steer(h, torch.arange(8) * 6, head, eta=0.9, max_steps=50)
    assert torch.equal(h, states(8, 16)) and torch.equal(result.h0, h)  # the input is never modified
    assert result.stop_reason == ("reached",) * 8 and result.success.all() and result.success_rate == 1.0
    assert (result.p_after >= 0.9).all() and (result.steps >= 1).all() and (result.steps <= 50).all()
    assert_monotone(result.p_trace)
    assert_close(result.p_trace[:, 0], result.p_before)
    last = result.p_trace.gather(1, result.steps[:, None])[:, 0]
    assert_close(last, result.p_after)  # the trace ends at the returned state, then NaN
    assert result.p_trace[torch.arange(51)[None] > result.steps[:, None]].isnan().all()
    action = (0.5 * result.delta_norm.double() ** 2).log() - (result.p_after.log() - result.p_before.log())
    assert_close(result.action_increment, action)
    natural, steered = (h @ W.T).log_softmax(-1), (result.h @ W.T).log_softmax(-1)
    assert_close(result.kl, (natural.exp() * (natural - steered)).sum(-1))  # KL(natural ‖ steered)
    assert torch.equal(result.top_before, natural.topk(10).indices)
    assert_close(result.top_p_after, steered.topk(10).values.double().exp())
    row = result.records(token_text=lambda t: f"<{t}>")[3]
    assert (row["steps"], row["stop_reason"], row["top_after"]) == (int(result.steps[3]), "reached",
                                                                    result.top_after[3].tolist())
    assert row["top_after_text"][0] == f"<{int(result.top_after[3, 0])}>"
    assert row["action_increment"] == pytest.approx(float(action[3]))


def test_an_unreachable_eta_stops_at_k_in_bounded_time():
    # p_t* can never exceed p_a or p_b when W_t* is their mean (convexity of exp), so p_t* <= 1/3 < η
    head, _, W = linear_head(V=10, d=8)
    W[0] = (W[1] + W[2]) / 2
    h = states(5, 8)
    start = time.perf_counter()
    result = jacobian_steer(h, torch.zeros(5, dtype=torch.long), head, eta=0.5, max_steps=15)
    assert time.perf_counter() - start < 30
    assert not result.success.any() and set(result.stop_reason) <= {"max_steps", "stalled"}
    assert (result.steps <= 15).all() and (result.p_after <= 1 / 3).all()
    assert_monotone(result.p_trace)


def test_a_pair_already_at_eta_does_not_move():
    head, _, _ = linear_head(scale=0.01)  # nearly uniform over 50 tokens: p ≈ 0.02 for everyone
    h = states(2, 16)
    result = jacobian_steer(h, torch.tensor([3, 4]), head, eta=0.01)
    assert result.stop_reason == ("reached", "reached") and result.steps.tolist() == [0, 0]
    assert torch.equal(result.h, h) and torch.equal(result.kl, torch.zeros(2))
    assert result.action_increment.isnan().all()  # ln(½‖δh‖²) is undefined at δh = 0
    for baseline in compare_baselines(h, torch.tensor([3, 4]), head, result, n_random=5).values():
        assert torch.equal(baseline.kl_at_equal_gain, torch.zeros(2))


def test_a_nonlinear_per_pair_readout_goes_through_autograd_and_mixes_no_rows():
    gen = torch.Generator().manual_seed(3)
    A, B, context = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((16, 32), (32, 50), (4, 32)))

    def mlp(x):  # row i of the context belongs to pair i, as in a read-out through later blocks
        return torch.tanh(x @ A + context) @ B

    h, ids = states(4, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        logp, g, _ = target_logprob_and_grad(h, ids, mlp)
    eps, fd = 1e-6, torch.empty_like(h)
    for j in range(16):
        step = torch.zeros(16, dtype=torch.float64)
        step[j] = eps
        diff = mlp(h + step).log_softmax(-1) - mlp(h - step).log_softmax(-1)
        fd[:, j] = diff.gather(1, ids[:, None])[:, 0] / (2 * eps)  # central differences
    assert_close(g, fd, rtol=1e-6, atol=1e-7)

    first = jacobian_steer(h, ids, mlp, eta=0.6, max_steps=10)
    moved = h.clone()
    moved[1] += 3.0
    second = jacobian_steer(moved, ids, mlp, eta=0.6, max_steps=10)
    keep = [0, 2, 3]
    assert_close(second.h[keep], first.h[keep])
    assert_close(second.p_trace[keep], first.p_trace[keep], equal_nan=True)
    assert not torch.equal(second.h[1], first.h[1])
    assert_monotone(first.p_trace)


def test_bad_settings_and_inputs_raise_errors_naming_them():
    head, plain, _ = linear_head()
    h, ids = states(3, 16), torch.tensor([0, 1, 2])

    def never_called(x):
        raise AssertionError("settings must be checked before the read-out runs")

    with pytest.raises(ConfigError, match=r"target: token id 50 .*V = 50"):
        jacobian_steer(h, torch.tensor([0, 50, 2]), head)
    with pytest.raises(ConfigError, match=r"target: token id -1"):
        target_logprob_and_grad(h, torch.tensor([0, -1, 2]), plain)
    with pytest.raises(ConfigError, match=r"target: the target set of pair 1 has no token"):
        jacobian_steer(h, torch.zeros(3, 50, dtype=torch.bool).index_fill_(0, torch.tensor([0, 2]), True), head)
    with pytest.raises(ConfigError, match=r"target: .*shape \(N,\) = \(3,\)"):
        jacobian_steer(h, torch.tensor([0, 1]), head)
    for eta in (0, 1, 1.5, math.nan):
        with pytest.raises(ConfigError, match="eta") as info:
            jacobian_steer(h, ids, never_called, eta=eta)
        assert info.value.field == "eta"
    with pytest.raises(ConfigError, match="max_steps: must be >= 1"):
        jacobian_steer(h, ids, never_called, max_steps=0)
    with pytest.raises(TrajectoryError, match=r"h has shape \(0, 16\)"):
        jacobian_steer(torch.zeros(0, 16), torch.zeros(0, dtype=torch.long), head)
    with pytest.raises(ConfigError, match="line_search.shrink"):
        LineSearch(shrink=1.0)
    result = jacobian_steer(h, ids, plain, max_steps=2)
    with pytest.raises(ConfigError, match="weight: the additive baseline needs"):
        compare_baselines(h, ids, plain, result)
    with pytest.raises(ConfigError, match="result: was computed from other states"):
        compare_baselines(h + 1, ids, head, result)


@pytest.mark.parametrize("set_target", [False, True])
def test_logit_bias_reaches_the_jacobian_probability_exactly(set_target):
    head, _, _ = linear_head()
    h = states(6, 16)
    target = torch.arange(6) * 7
    if set_target:
        target = torch.zeros(6, 50, dtype=torch.bool).scatter_(1, target[:, None], True)
        target[:, 45:48] = True
    result = jacobian_steer(h, target, head, eta=0.8)
    baselines = compare_baselines(h, target, head, result, n_random=20)
    bias = baselines["logit_bias"]
    assert (baselines["best_random"].gain_at_equal_norm >= baselines["random"].gain_at_equal_norm).all()
    assert_close(compare_baselines(h, target, head, result, n_random=1)["best_random"].direction,
                 baselines["random"].direction)  # one draw: the best is the first
    assert_close(bias.p_at_equal_gain, result.p_after, rtol=1e-5, atol=1e-6)
    p, q = result.p_before, result.p_after
    assert_close(bias.bias, (q * (1 - p) / (p * (1 - q))).log())  # e^b = p'(1-p)/(p(1-p'))
    for name, baseline in baselines.items():
        assert (baseline.kl_at_equal_gain.nan_to_num(0.0) >= 0).all(), name
        if baseline.kl_at_equal_norm is not None:
            assert (baseline.kl_at_equal_norm >= 0).all(), name
            assert_close(baseline.radius, result.delta_norm)
        reachable = baseline.p_at_equal_gain.isfinite()
        assert (baseline.p_at_equal_gain[reachable] >= result.p_after[reachable] * (1 - 1e-6)).all(), name
    assert (result.kl >= 0).all()
    json.dumps([*result.records(token_text=str), *bias.records(token_text=str)])


def test_one_dimensional_head_has_closed_form_norms_and_unreachable_rays():
    # p = σ(2h) from logits (h, -h): η = 0.9 needs h = ln(9)/2; a ray along -1 never gets there
    W = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)

    def head(x):
        return x @ W.T

    head.linear_weight = W
    h = torch.zeros(1, 1, dtype=torch.float64)
    result = jacobian_steer(h, torch.tensor([0]), head, eta=0.9, max_steps=50)
    assert result.success.all()
    assert_close(result.h[0, 0], 0.5 * result.p_after.logit()[0])  # σ(2h) = p_after
    seen = set()
    for seed in range(8):
        baselines = compare_baselines(h, torch.tensor([0]), head, result, n_random=1, seed=seed)
        additive, bias = baselines["additive"], baselines["logit_bias"]
        assert_close(additive.norm_at_equal_gain, result.delta_norm, rtol=1e-6, atol=0)
        assert_close(additive.gain_at_equal_norm, result.logp_gain)  # the same direction and norm
        assert torch.equal(additive.top_k_ids, additive.top_at_equal_norm)  # judged at the Jacobian's ‖δh‖
        assert torch.equal(bias.top_k_ids, bias.top_at_equal_gain) and bias.norm_ratio is None
        random = baselines["random"]
        seen.add(float(random.direction[0, 0]))
        if random.direction[0, 0] > 0:
            assert_close(random.norm_at_equal_gain, result.delta_norm, rtol=1e-6, atol=0)
        else:
            assert random.norm_at_equal_gain.isinf().all() and random.p_at_equal_gain.isnan().all()
            assert random.top_at_equal_gain.eq(-1).all()
    assert seen == {1.0, -1.0}
    # the best of 8 draws of ±1 is +1 (these seeds all hold one), whatever the first draw was
    for seed in range(4):
        best = compare_baselines(h, torch.tensor([0]), head, result, n_random=8, seed=seed)["best_random"]
        assert best.direction.item() == 1.0 and (best.gain_at_equal_norm >= result.logp_gain * (1 - 1e-9)).all()


def test_half_precision_states_are_steered_in_float32_and_returned_in_their_dtype():
    head, _, W = linear_head()
    h = states(3, 16).bfloat16()
    logp, g, logits = target_logprob_and_grad(h, torch.tensor([0, 1, 2]), head)
    assert g.dtype == torch.bfloat16 and logp.dtype == torch.float32 and logits.dtype == torch.float32
    result = jacobian_steer(h, torch.tensor([0, 1, 2]), head, eta=0.7)
    assert result.h.dtype == torch.bfloat16 and torch.equal(result.h0, h)
    at_returned = (result.h.float() @ W.T).log_softmax(-1)[torch.arange(3), torch.tensor([0, 1, 2])].double().exp()
    assert_close(result.p_after, at_returned, rtol=1e-5, atol=1e-7)  # float32 rounding, not bfloat16
