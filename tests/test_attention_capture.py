"""Attention capture on tiny models of every family: scores against the model's own attention, masks, restoring."""
import pytest
import torch
from torch import nn
from torch.testing import assert_close
from transformers import AutoConfig, AutoModelForCausalLM

from lagrangian_lens.errors import TrajectoryError, UnsupportedArchitectureError
from lagrangian_lens.trajectories import count_hooks
from lagrangian_lens.trajectories.attention import (
    CAPTURE,
    capture_attention,
    capture_attention_forward,
    record_attention,
)
from lagrangian_lens.trajectories.tokens import left_pad

from .conftest import TEXTS, TINY_CONFIGS, VOCAB, tiny_model

FAMILIES = sorted(TINY_CONFIGS)


def padded_batch(tokenizer):
    """TEXTS left-padded into one batch: (input_ids, attention_mask, position_ids, token lists)."""
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    return (*left_pad(ids, tokenizer.pad_token_id), ids)


def expected_visible(family: str, T: int) -> torch.Tensor:
    """(T, T) the keys each query may see: causal, and Gemma-3's sliding window of 8 (key within 8 back)."""
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    window = TINY_CONFIGS[family].get("sliding_window")
    return (j <= i) & ((i - j < window) if window else True)


@pytest.mark.parametrize("family", FAMILIES)
def test_softmax_of_scores_reproduces_eager_attention_with_left_padding(family, tokenizer):
    model = tiny_model(family, attn_implementation="eager")
    input_ids, mask, positions, ids = padded_batch(tokenizer)
    with torch.no_grad():
        attentions = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                           output_attentions=True).attentions  # per layer (B, H, P, P)
    captured = capture_attention(model, input_ids, mask)
    assert len(captured) == len(TEXTS)
    for b, (cap, tokens) in enumerate(zip(captured, ids)):
        real = mask[b].bool()
        own = torch.stack([a[b] for a in attentions])[:, :, real][:, :, :, real]  # (L, H, T, T)
        assert cap.scores.shape == (len(attentions), model.config.num_attention_heads, len(tokens), len(tokens))
        assert cap.token_ids.tolist() == tokens
        assert_close(cap.probabilities(), own, atol=1e-6, rtol=0)
        assert torch.equal(cap.visible, expected_visible(family, len(tokens)).expand_as(cap.visible))
    assert count_hooks(model) == 0 and model.config._attn_implementation == "eager"


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_keys_are_never_visible(family, tokenizer):
    model = tiny_model(family)
    input_ids, mask, positions, ids = padded_batch(tokenizer)
    with record_attention(model) as recorder, torch.no_grad():
        model(input_ids=input_ids, attention_mask=mask, position_ids=positions)
        calls = recorder.pop()
    P = input_ids.shape[1]
    for call in calls.values():
        for b, tokens in enumerate(ids):
            pad = P - len(tokens)
            assert not call.visible[b, :, :pad].any()  # no query sees a padding key
            assert torch.equal(call.visible[b, pad:, pad:], expected_visible(family, len(tokens)))


def test_scores_are_q_dot_k_over_root_d_with_positions_kept(tokenizer):
    """GPT-2 block 0 by hand: q, k from c_attn(ln_1(wte + wpe)), s = q·k/√d_k (a known answer, not a softmax)."""
    model = tiny_model("gpt2")
    ids = torch.tensor(tokenizer(TEXTS[0])["input_ids"])
    (cap,) = capture_attention(model, ids, layers=[0])
    t = model.transformer
    with torch.no_grad():
        h = t.h[0].ln_1(t.wte(ids) + t.wpe(torch.arange(len(ids))))
        q, k, _ = t.h[0].attn.c_attn(h).split(model.config.n_embd, dim=-1)
    H, d = model.config.n_head, model.config.n_embd // model.config.n_head
    q, k = q.view(-1, H, d).transpose(0, 1), k.view(-1, H, d).transpose(0, 1)
    assert cap.layers == (0,)
    assert_close(cap.scores[0], q @ k.transpose(1, 2) / d**0.5)


def test_soft_cap_and_grouped_query_heads():
    """The function itself: the soft-cap squashes the scaled scores, and head h reads key head h // groups."""
    module = nn.Module().eval()
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    visible = torch.ones(1, 1, 3, 3, dtype=torch.bool).tril()
    out, weights = capture_attention_forward(module, q, k, v, visible, scaling=0.5, softcap=2.0)
    k_full, v_full = k[:, [0, 0, 1, 1]], v[:, [0, 0, 1, 1]]
    s = 2.0 * torch.tanh(q @ k_full.transpose(2, 3) * 0.5 / 2.0)
    p = torch.softmax(s.masked_fill(~visible, float("-inf")), -1)
    assert_close(weights, p)
    assert_close(out, (p @ v_full).transpose(1, 2))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_model_outputs_are_unchanged(family, tokenizer):
    input_ids, mask, positions, _ = padded_batch(tokenizer)
    for implementation in ("eager", "sdpa"):
        model = tiny_model(family, attn_implementation=implementation)
        with torch.no_grad():
            plain = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
            with record_attention(model) as recorder:
                captured = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
                recorder.pop()
        real = mask.bool()
        if implementation == "eager":  # the capture computes eager attention step for step
            assert torch.equal(captured[real], plain[real])
        else:
            assert_close(captured[real], plain[real], atol=1e-5, rtol=1e-5)
        assert model.config._attn_implementation == implementation


def test_batched_capture_equals_each_sequence_alone(tokenizer):
    model = tiny_model("llama")
    input_ids, mask, _, ids = padded_batch(tokenizer)
    batched = capture_attention(model, input_ids, mask)
    for cap, tokens in zip(batched, ids):
        (alone,) = capture_attention(model, torch.tensor(tokens))
        assert_close(cap.scores, alone.scores, atol=1e-5, rtol=1e-5)
        assert torch.equal(cap.visible, alone.visible)


def test_generation_steps_record_their_rows_against_every_cached_key(tokenizer):
    model = tiny_model("llama")
    ids = torch.tensor(tokenizer(TEXTS[0])["input_ids"])
    (full,) = capture_attention(model, ids)
    with record_attention(model, layers=[0, -1]) as recorder, torch.no_grad():
        out = model(input_ids=ids[None, :-1], use_cache=True)
        prompt = recorder.pop()
        model(input_ids=ids[None, -1:], past_key_values=out.past_key_values, use_cache=True)
        step = recorder.pop()
    assert sorted(step) == [0, 2] == list(recorder.layers)
    T = len(ids)
    for layer in (0, 2):
        assert step[layer].scores.shape == (1, 4, 1, T)
        assert_close(step[layer].scores[0, :, 0], full.scores[layer, :, -1], atol=1e-5, rtol=1e-5)
        assert_close(prompt[layer].scores[0], full.scores[layer, :, :-1, :-1], atol=1e-5, rtol=1e-5)
        assert step[layer].visible[0, 0].all()


def test_selected_layers_and_their_validation(tokenizer):
    model = tiny_model("llama")
    ids = torch.tensor(tokenizer(TEXTS[1])["input_ids"])
    (everything,) = capture_attention(model, ids)
    (last,) = capture_attention(model, ids, layers=[-1])
    assert last.layers == (2,) and everything.layers == (0, 1, 2)
    assert torch.equal(last.scores[0], everything.scores[2])
    with pytest.raises(TrajectoryError, match="the model has 3 blocks"):
        capture_attention(model, ids, layers=[3])
    with pytest.raises(TrajectoryError, match="hold no real token"):
        capture_attention(model, ids[None], torch.zeros(1, len(ids), dtype=torch.long))


def test_implementation_is_restored_after_an_exception():
    model = tiny_model("gemma3_text")
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"), record_attention(model):
        assert model.config._attn_implementation == CAPTURE
        raise RuntimeError("boom")
    assert model.config._attn_implementation == before and count_hooks(model) == 0
    with pytest.raises(TrajectoryError, match="already being recorded"), record_attention(model), \
            record_attention(model):
        pass
    assert model.config._attn_implementation == before
    (cap,) = capture_attention(model, torch.arange(5))  # the model is usable, and recordable, again
    assert cap.scores.shape == (2, 2, 5, 5)


def test_a_model_whose_attention_skips_the_interface_is_refused():
    config = AutoConfig.for_model("gptj", n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64,
                                  vocab_size=VOCAB)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    before = model.config._attn_implementation
    with pytest.raises(UnsupportedArchitectureError, match="AttentionInterface"):
        capture_attention(model, torch.arange(6))
    assert model.config._attn_implementation == before and count_hooks(model) == 0
