"""Extraction and generation on tiny models of every supported family: hooks, batching, padding, caching."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lagrangian_lens.errors import TrajectoryError, UnsupportedArchitectureError
from lagrangian_lens.trajectories import (
    Decoding,
    Trajectory,
    count_hooks,
    expand_sites,
    extract,
    generate,
    load_trajectories,
    readout,
    record_sites,
    save_trajectories,
)

from .conftest import TEXTS, TINY_CONFIGS, VOCAB, tiny_model

FAMILIES = sorted(TINY_CONFIGS)


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_states_equal_output_hidden_states(family, tokenizer):
    model = tiny_model(family)
    tr = extract(model, tokenizer, TEXTS[:1], sites="all,final")[0]
    ids = tr.token_ids[None]
    hidden = model(ids, output_hidden_states=True).hidden_states  # embed, block 0..L-2, then final-normed
    n_blocks = len(hidden) - 1
    assert tr.sites == ("embed", *(f"block.{l}" for l in range(n_blocks)), "final")
    for l in range(n_blocks):  # hidden_states[l] is the raw residual entering block l
        assert_close(tr.states[l], hidden[l][0, :-1])
    assert_close(tr.at("final"), hidden[-1][0, :-1])
    assert count_hooks(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_readout_from_final_reproduces_the_model_logits(family, tokenizer):
    model = tiny_model(family)
    tr = extract(model, tokenizer, TEXTS[:1], sites="final,block.-1")[0]
    logits = model(tr.token_ids[None]).logits[0, :-1]
    assert_close(readout(model, "final")(tr.at("final")), logits)
    assert_close(readout(model, "block.-1")(tr.states[1]), logits, atol=1e-5, rtol=1e-4)  # last block + final norm
    logp = torch.log_softmax(logits, -1)
    assert_close(tr.logprobs, logp.gather(-1, tr.targets[:, None]).squeeze(-1))
    assert_close(tr.max_logprobs, logp.max(-1).values)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_teacher_forcing_equals_unbatched(family, tokenizer):
    model = tiny_model(family)
    batched = extract(model, tokenizer, TEXTS, sites="all,final", batch_size=3)
    for text, tr in zip(TEXTS, batched):
        single = extract(model, tokenizer, [text], sites="all,final")[0]
        assert torch.equal(single.token_ids, tr.token_ids)
        assert_close(tr.states, single.states, atol=1e-5, rtol=1e-4)
        assert_close(tr.logprobs, single.logprobs, atol=1e-5, rtol=1e-4)
        assert_close(tr.entropy, single.entropy, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_with_left_padding_and_cache_equals_teacher_forcing_its_own_output(family, tokenizer):
    model = tiny_model(family)
    gen = generate(model, tokenizer, TEXTS, new_tokens=8, sites="all,final", batch_size=3)
    for text, tr in zip(TEXTS, gen):
        assert tr.mode == "generated" and tr.n_positions == tr.n_context + 8 - 1
        again = extract(model, tokenizer, [tr.token_ids.tolist()], sites="all,final")[0]
        assert_close(tr.states, again.states, atol=1e-5, rtol=1e-4)
        assert_close(tr.logprobs, again.logprobs, atol=1e-5, rtol=1e-4)
        # greedy: the emitted token is the argmax, so realized and argmax PPL coincide on the continuation
        assert_close(tr.logprobs[tr.continuation], tr.max_logprobs[tr.continuation])
        single = generate(model, tokenizer, [text], new_tokens=8, sites="final")[0]
        assert torch.equal(single.token_ids, tr.token_ids)
    assert count_hooks(model) == 0


def test_sampling_is_seeded_and_probabilities_come_from_raw_logits(tokenizer):
    model = tiny_model("llama")
    dec = Decoding("sample", temperature=0.3, top_k=5, seed=7)
    a = generate(model, tokenizer, TEXTS[:2], new_tokens=6, decoding=dec)
    b = generate(model, tokenizer, TEXTS[:2], new_tokens=6, decoding=dec)
    assert all(torch.equal(x.token_ids, y.token_ids) for x, y in zip(a, b))
    again = extract(model, tokenizer, [a[0].token_ids.tolist()])[0]
    assert_close(a[0].logprobs, again.logprobs, atol=1e-5, rtol=1e-4)  # not the tempered distribution


def test_hooks_are_removed_even_when_the_forward_raises(tokenizer):
    model = tiny_model("llama")
    with pytest.raises(RuntimeError, match="boom"):
        with record_sites(model, expand_sites(model, "all,final")):
            assert count_hooks(model) == 5
            raise RuntimeError("boom")
    assert count_hooks(model) == 0


def test_sites_are_validated_with_helpful_messages():
    model = tiny_model("llama")
    assert expand_sites(model, "block.-1") == ("block.2",)
    with pytest.raises(ValueError, match="3 blocks"):
        expand_sites(model, "block.7")
    with pytest.raises(ValueError, match="unknown site"):
        expand_sites(model, "mlp")


class _MadeUpLM(nn.Module):
    """A causal LM with no layout to find (no block list, no norm): embedding, tanh, unembedding."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="made-up", num_hidden_layers=2, hidden_size=8)
        self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB, bias=False)

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.head(torch.tanh(self.embed(input_ids))))


def test_unsupported_architecture_lists_the_supported_ones(tokenizer):
    model = _MadeUpLM().eval()
    for sites in ("all", "block.0", "embed,final"):  # every depth site needs the layout
        with pytest.raises(UnsupportedArchitectureError, match=r"'made-up'(.|\n)*Supported: .*gpt_neox.*llama"
                                                               r"(.|\n)*add a row"):
            expand_sites(model, sites)
    with pytest.raises(UnsupportedArchitectureError, match="no nn.ModuleList of 2 blocks"):
        with record_sites(model, ("final", "embed")):
            pass
    assert count_hooks(model) == 0
    with pytest.raises(UnsupportedArchitectureError, match="Supported"):
        readout(model, "block.0")
    # 'final' needs only get_output_embeddings: the unembedding's input, and the logits read out from it.
    tr = extract(model, tokenizer, TEXTS[:1], sites="final")[0]
    with torch.no_grad():
        assert_close(tr.at("final"), torch.tanh(model.embed(tr.token_ids[:-1])))
        assert_close(readout(model, "final")(tr.at("final")), model(tr.token_ids[None]).logits[0, :-1])
    assert count_hooks(model) == 0


def test_nan_state_error_names_site_and_position():
    states = torch.zeros(2, 4, 3)
    states[1, 2, 0] = float("nan")
    with pytest.raises(TrajectoryError, match=r"site 'block.0', position 2"):
        Trajectory(torch.zeros(5, dtype=torch.long), states, torch.zeros(4), torch.zeros(4), ("embed", "block.0"), 1)


def test_trajectory_shape_validation():
    with pytest.raises(TrajectoryError, match=r"token_ids must be \(T\+1,\)"):
        Trajectory(torch.zeros(4, dtype=torch.long), torch.zeros(1, 4, 3), torch.zeros(4), torch.zeros(4), ("final",), 1)


def test_save_and_load_roundtrip(tmp_path, tokenizer):
    model = tiny_model("llama")
    trs = generate(model, tokenizer, TEXTS[:2], new_tokens=4, sites="embed,final", metadata={"k": 1})
    save_trajectories(trs, tmp_path / "t")
    back = load_trajectories(tmp_path / "t")
    for a, b in zip(trs, back):
        assert torch.equal(a.states, b.states) and torch.equal(a.token_ids, b.token_ids)
        assert (a.sites, a.n_context, a.mode, a.metadata) == (b.sites, b.n_context, b.mode, b.metadata)


def test_long_prompt_is_truncated_to_the_context_with_a_warning(tokenizer):
    model = tiny_model("llama", max_position_embeddings=32)
    long = " ".join(["word"] * 100)
    with pytest.warns(UserWarning, match="exceed the model context of 32"):
        tr = generate(model, tokenizer, [long], new_tokens=4, context_tokens=None)[0]
    assert len(tr.token_ids) == 32


def test_empty_prompts_are_rejected(tokenizer):
    from lagrangian_lens.errors import DataError

    model = tiny_model("llama")
    with pytest.raises(DataError, match="empty"):
        generate(model, tokenizer, [], new_tokens=2)
    with pytest.raises(DataError, match=r"index \[1\]"):
        extract(model, tokenizer, ["fine", "   "])
