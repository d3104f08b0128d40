"""Site edits, read-outs through the remaining blocks, and steered generation, on tiny random models."""
import pytest
import torch
from torch.testing import assert_close
from transformers import StaticCache

from lagrangian_lens.errors import ConfigError, DataError, TrajectoryError
from lagrangian_lens.steering.generate import concept_targets, steer_generate
from lagrangian_lens.steering.inject import edit_site, position_readout, replace_last, site_readout
from lagrangian_lens.trajectories import count_hooks, extract, generate, readout
from lagrangian_lens.trajectories.generate import StepInputs

from .conftest import TEXTS, TINY_CONFIGS, VOCAB, tiny_model

FAMILIES = sorted(TINY_CONFIGS)
SITES = ("embed", "block.0", "block.-1", "final")
STRONG = dict(initializer_range=1.0)  # larger weights: logits wide enough for p >= 0.6 from depth sites


def token_ids(n: int = 3, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 1000, (n, length), generator=torch.Generator().manual_seed(seed))


# --- edit_site and site_readout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", SITES)
def test_readout_of_the_natural_state_gives_the_natural_logits_and_leaves_no_trace(family, site):
    model = tiny_model(family)
    ids = token_ids()
    natural = model(ids).logits[:, -1]  # (N, V)
    h0, read = site_readout(model, ids, site)
    assert_close(read(h0), natural, atol=1e-5, rtol=1e-5)
    if site != "final":
        moved = read(h0 + torch.randn_like(h0))
        assert (moved - natural).abs().max() > 1e-3  # the state is used...
    assert torch.equal(read(h0), read(h0))  # ...and every call starts from the same cache
    assert count_hooks(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", SITES)
def test_readout_of_any_state_equals_the_full_forward_with_that_state(family, site):
    model = tiny_model(family)
    ids = token_ids(length=10)  # longer than gemma3's sliding window of 8: its cache must be restored, not cropped
    h = site_readout(model, ids, site)[0] + torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    with edit_site(model, site, replace_last(h)):
        full = model(ids).logits[:, -1]  # no cache: all positions in one forward
    assert_close(site_readout(model, ids, site)[1](h), full, atol=1e-5, rtol=1e-5)
    if site in ("block.-1", "final"):  # from the last block on, the logit lens is the model itself
        assert_close(full, readout(model, site)(h), atol=1e-5, rtol=1e-5)
    assert count_hooks(model) == 0


def test_readout_of_a_single_token_needs_no_cache():
    model = tiny_model("llama")
    ids = token_ids(length=1)
    h0, read = site_readout(model, ids, "block.1")
    assert_close(read(h0), model(ids).logits[:, -1], atol=1e-5, rtol=1e-5)


def test_a_cache_written_in_place_is_copied_not_changed():
    model = tiny_model("llama")
    ids = token_ids()
    with torch.no_grad():
        cache = StaticCache(config=model.config, max_cache_len=16)  # its layers write keys in place
        model(ids[:, :-1], past_key_values=cache, use_cache=True)
        keys = [layer.keys.clone() for layer in cache.layers]
        h0, read = position_readout(model, "block.1", ids[:, -1:], cache=cache)
        read(h0 + torch.randn_like(h0))
        assert_close(read(h0), model(ids).logits[:, -1], atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == ids.shape[1] - 1
    assert all(torch.equal(before, layer.keys) for before, layer in zip(keys, cache.layers))


# RMSNorm (llama, qwen2, gemma3) computes in float32 even in a float64 model, which bounds how well a difference
# quotient can agree; the LayerNorm families run in float64 throughout.
@pytest.mark.parametrize(("family", "rtol"), [("gpt2", 1e-6), ("gpt_neox", 1e-6), ("llama", 1e-3), ("qwen2", 1e-3),
                                              ("gemma3_text", 1e-3)])
@pytest.mark.parametrize("site", ["embed", "block.0"])
def test_readout_gradient_matches_finite_differences(family, rtol, site):
    model = tiny_model(family).double()
    ids = token_ids(length=10)
    h0, read = site_readout(model, ids, site)
    target = torch.tensor([5, 6, 7])

    def f(h):  # (N, d) -> (N,) ln p(target), rows independent
        return read(h).log_softmax(-1).gather(-1, target[:, None])[:, 0]

    h = h0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(h).sum(), h)
    v = torch.randn(h0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    v *= 1e-2 * h0.norm(dim=-1, keepdim=True) / v.norm(dim=-1, keepdim=True)  # a step of 1% of each state

    def central(step):  # (N,) central difference quotient along v
        with torch.no_grad():
            return (f(h0 + step * v) - f(h0 - step * v)) / (2 * step)

    richardson = (4 * central(0.5) - central(1.0)) / 3  # cancels the O(step²) error
    assert_close((grad * v).sum(-1), richardson, atol=0, rtol=rtol)
    assert count_hooks(model) == 0


def test_edit_site_removes_its_hook_on_exit_and_on_error():
    model = tiny_model("llama")
    ids = token_ids()
    x = torch.randn(3, 12, 32)
    with edit_site(model, "final", lambda state: x) as site:
        assert str(site) == "final" and count_hooks(model) == 1
        logits = model(ids).logits
    assert_close(logits, readout(model, "final")(x))
    assert count_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with edit_site(model, "block.-1", lambda state: state):
            raise RuntimeError("boom")
    assert count_hooks(model) == 0
    with pytest.raises(TrajectoryError, match=r"3 blocks \(block.0..block.2"):
        with edit_site(model, "block.3", lambda state: state):
            pass
    assert count_hooks(model) == 0


# --- steer_generate -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_steering_below_the_natural_probability_reproduces_the_natural_generation(family, tokenizer):
    model = tiny_model(family)  # prompts longer than gemma3's window of 8: its running cache is restored too
    natural = generate(model, tokenizer, TEXTS, new_tokens=5, batch_size=2)
    greedy = torch.stack([tr.token_ids[-5:] for tr in natural])  # (3, 5): each is its step's argmax, p >= 1/V
    run = steer_generate(model, tokenizer, TEXTS, targets=greedy, site="block.1", new_tokens=5, eta=1e-6,
                         batch_size=2)
    assert len(run.steps) == 2 * 5 and len(run.records()) == 3 * 5  # two batches, five steps
    for step in run.steps:
        assert step.result.success.all() and (step.result.delta_norm == 0).all()
    for steered, nat, again in zip(run.steered, run.natural, natural):
        assert torch.equal(steered.token_ids, nat.token_ids) and torch.equal(nat.token_ids, again.token_ids)
        assert_close(steered.states, nat.states)
        assert_close(steered.logprobs, nat.logprobs)
        assert steered.metadata["steering"]["site"] == "block.1"
    assert count_hooks(model) == 0


@pytest.mark.parametrize("site", ["final", "block.0"])
def test_a_reached_eta_holds_in_the_distribution_the_generation_used(site, tokenizer):
    model = tiny_model("llama", **STRONG)
    targets = token_ids(3, 4, seed=3)
    run = steer_generate(model, tokenizer, TEXTS, targets=targets, site=site, new_tokens=4, eta=0.6, batch_size=2,
                         record_natural=False)
    head = readout(model, "final")
    assert run.natural is None and run.success_rate > 0.5
    for step in run.steps:
        for i, row in enumerate(step.rows):
            tr = run.steered[row]
            pos = tr.n_context - 1 + step.step
            logp = head(tr.at("final")[pos]).log_softmax(-1)  # (V,) what the steered model emitted from
            assert_close(tr.logprobs[pos], logp[tr.token_ids[pos + 1]])
            if step.result.success[i]:
                target = targets[row, step.step]
                assert_close(logp[target].exp().double(), step.result.p_after[i], atol=1e-5, rtol=1e-4)
                assert logp[target].exp() >= 0.6 - 1e-5
                assert tr.token_ids[pos + 1] == target  # p > 1/2 makes the target the greedy choice
    assert count_hooks(model) == 0


def test_a_concept_set_is_reached_as_a_whole(tokenizer):
    model = tiny_model("llama")
    concept = concept_targets(tokenizer, ["cat", "dog"])
    run = steer_generate(model, tokenizer, TEXTS[:2], targets=concept, new_tokens=3, eta=0.6, record_natural=False)
    head = readout(model, "final")
    assert run.success_rate == 1.0
    for tr in run.steered:
        p = head(tr.at("final")[tr.continuation]).softmax(-1)[:, list(concept)].sum(-1)  # (3,)
        assert (p >= 0.6 - 1e-5).all()


def _one_step_run(model, tokenizer, site):
    run = steer_generate(model, tokenizer, TEXTS[:1], targets=[[7]], site=site, new_tokens=5, eta=0.6,
                         steer_steps=[0], record_natural=False)
    (step,) = run.steps
    assert step.result.success.all()
    tr = run.steered[0]
    return tr, tr.n_context - 1, step.result.delta[0]


def test_a_block_edit_propagates_through_the_cache_into_later_positions(tokenizer):
    model = tiny_model("llama", **STRONG)
    tr, pos, delta = _one_step_run(model, tokenizer, "block.0")
    same_tokens = extract(model, tokenizer, [tr.token_ids.tolist()])[0].at("final")  # (T, d) unsteered model
    steered = tr.at("final")
    assert_close(steered[:pos], same_tokens[:pos], atol=1e-5, rtol=1e-5)  # earlier positions untouched
    assert ((steered[pos:] - same_tokens[pos:]).norm(dim=-1) > 1e-3).all()  # the steered one and every later one
    bump = torch.zeros(1, len(tr.token_ids), 32)
    bump[0, pos] = delta

    with edit_site(model, "block.0", lambda state: state + bump):  # the same δh in a teacher-forced forward
        again = extract(model, tokenizer, [tr.token_ids.tolist()])[0].at("final")
    assert_close(steered, again, atol=1e-4, rtol=1e-4)
    assert count_hooks(model) == 0


def test_a_final_edit_changes_only_its_own_position(tokenizer):
    model = tiny_model("llama")
    tr, pos, delta = _one_step_run(model, tokenizer, "final")
    same_tokens = extract(model, tokenizer, [tr.token_ids.tolist()])[0].at("final")
    steered = tr.at("final")
    keep = torch.arange(len(steered)) != pos
    assert_close(steered[keep], same_tokens[keep], atol=1e-5, rtol=1e-5)
    assert_close(steered[pos], same_tokens[pos] + delta, atol=1e-5, rtol=1e-5)
    assert delta.norm() > 1.0


def test_rows_without_a_target_generate_as_if_unsteered(tokenizer):
    model = tiny_model("llama", **STRONG)
    seen = []

    def only_first_row(step, generated):
        seen.append((step, tuple(generated.shape)))
        return torch.tensor([11, -1, -1])

    run = steer_generate(model, tokenizer, TEXTS, targets=only_first_row, site="block.1", new_tokens=3, eta=0.6)
    assert seen == [(0, (3, 0)), (1, (3, 1)), (2, (3, 2))]
    assert all(step.rows == (0,) for step in run.steps)
    assert not torch.equal(run.steered[0].token_ids, run.natural[0].token_ids)
    for steered, natural in zip(run.steered[1:], run.natural[1:]):
        assert torch.equal(steered.token_ids, natural.token_ids)
        assert_close(steered.states, natural.states)


def test_hooks_are_removed_when_generation_fails_midway(tokenizer):
    model = tiny_model("llama")

    def failing(step, generated):
        if step == 2:
            raise RuntimeError("no target for step 2")
        return torch.full((len(generated),), 5)

    for site in ("final", "block.1"):
        with pytest.raises(RuntimeError, match="no target"):
            steer_generate(model, tokenizer, TEXTS, targets=failing, site=site, new_tokens=4, max_steps=2)
        assert count_hooks(model) == 0


def test_the_step_hook_sees_each_steps_inputs(tokenizer):
    model = tiny_model("llama")
    seen: list[StepInputs] = []
    out = generate(model, tokenizer, TEXTS, new_tokens=3, batch_size=2, step_hook=seen.append)
    assert [(s.step, s.rows) for s in seen] == [(0, range(0, 2)), (1, range(0, 2)), (2, range(0, 2)),
                                                (0, range(2, 3)), (1, range(2, 3)), (2, range(2, 3))]
    first = seen[0]
    assert first.past_key_values is None and first.input_ids.shape == first.attention_mask.shape
    last = seen[2]
    assert last.input_ids.shape == (2, 1) and last.generated.shape == (2, 2)
    assert torch.equal(last.generated, torch.stack([tr.token_ids[-3:-1] for tr in out[:2]]))
    plain = generate(model, tokenizer, TEXTS, new_tokens=3, batch_size=2)
    for a, b in zip(out, plain):  # a hook that returns None changes nothing
        assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.states, b.states)


def test_concept_targets_are_first_tokens_with_and_without_a_space(tokenizer):
    ids = concept_targets(tokenizer, ["cat", "photosynthesis", "cat"])
    assert ids == (9786, 2644, 43042, 19173)
    assert [tokenizer.decode([i]) for i in ids] == ["cat", " cat", "photos", " photosynthesis"]


@pytest.mark.parametrize(("kwargs", "error", "field"), [
    (dict(prompts=[]), DataError, None),
    (dict(eta=0.0), ConfigError, "eta"),
    (dict(eta=1.0), ConfigError, "eta"),
    (dict(max_steps=0), ConfigError, "max_steps"),
    (dict(new_tokens=0), ConfigError, "new_tokens"),
    (dict(site="block.3"), ConfigError, "site"),
    (dict(site="mlp"), ConfigError, "site"),
    (dict(targets=[[1, 2], [3, VOCAB], [4]]), ConfigError, "targets"),
    (dict(targets={5, VOCAB + 1}), ConfigError, "targets"),
    (dict(targets=torch.ones(2, 3, dtype=torch.long)), ConfigError, "targets"),
    (dict(steer_steps=[0, 4]), ConfigError, "steer_steps"),
])
def test_bad_settings_fail_before_the_model_runs(kwargs, error, field, tokenizer):
    model = tiny_model("llama")
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    settings = dict(prompts=TEXTS, targets=[[1], [2], [3]], new_tokens=4) | kwargs
    try:
        with pytest.raises(error) as info:
            steer_generate(model, tokenizer, settings.pop("prompts"), **settings)
    finally:
        handle.remove()
    assert calls == [] and count_hooks(model) == 0
    assert "\n" not in str(info.value)
    if field is not None:
        assert info.value.field == field
