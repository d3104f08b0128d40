"""Attention capture against the model's own eager attention on every architecture-table row, whichever path its
layers take (scores through the AttentionInterface, or log-probabilities from output_attentions), found at run time;
masks of every shape a model passes; restoring; and the AttentionScores container it fills."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lagrangian_lens.analysis.thermo import ThermoConventions, analyse_thermo
from lagrangian_lens.errors import TrajectoryError, UnsupportedArchitectureError
from lagrangian_lens.models.pretrained.architectures import blocks
from lagrangian_lens.models.pretrained.tiny import table_names
from lagrangian_lens.trajectories import attention as attention_module
from lagrangian_lens.trajectories import count_hooks
from lagrangian_lens.trajectories.attention import (
    CAPTURE,
    AttentionScores,
    capture_attention,
    capture_attention_forward,
    record_attention,
)
from lagrangian_lens.trajectories.attention_weights import attention_implementation, model_configs
from lagrangian_lens.trajectories.tokens import left_pad

from .conftest import TEXTS, TINY_CONFIGS, log_probability_models, sink_logit_model, table_model, tiny_model

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


def counting_forwards(model, monkeypatch) -> list[bool]:
    """Patch ``model.forward`` to log each call's output_attentions flag; returns the log."""
    calls, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: calls.append(bool(kw.get("output_attentions"))) or forward(**kw))
    return calls


def eager_attention(model, tokens: list[int]) -> torch.Tensor:
    """(L, H, T, T) the model's own eager attention of one sequence alone (batch 1, no padding)."""
    with attention_implementation(model_configs(model), "eager"), torch.no_grad():
        return torch.stack(model(input_ids=torch.tensor([tokens]), position_ids=torch.arange(len(tokens))[None],
                                 output_attentions=True).attentions)[:, 0]


@pytest.mark.parametrize("name", table_names())
def test_every_table_row_is_captured_as_its_own_eager_attention(name, tokenizer, monkeypatch):
    """Left-padded batch and batch 1, on whichever path the model's layers take: log-probabilities equal those of
    eager output_attentions, attention is causal, the path is found by the first capture and then remembered."""
    model = table_model(name)
    before = model.config._attn_implementation
    forwards = counting_forwards(model, monkeypatch)
    input_ids, mask, _, ids = padded_batch(tokenizer)
    captured = capture_attention(model, input_ids, mask)
    gauge = captured[0].gauge
    assert forwards == ([False] if gauge == "scores" else [False, True])  # one forward, or a second for ln p
    for cap, tokens in zip(captured, ids):
        T = len(tokens)
        assert cap.gauge == gauge and cap.token_ids.tolist() == tokens
        assert not (cap.visible & ~torch.ones(T, T, dtype=torch.bool).tril()).any()  # causal
        own = eager_attention(model, tokens)  # (L, H, T, T)
        (alone,) = capture_attention(model, torch.tensor(tokens))
        for got in (cap, alone):
            logp = torch.log_softmax(got.scores.masked_fill(~got.mask, -torch.inf), -1)
            assert torch.equal(logp == -torch.inf, own == 0)  # the same keys hidden
            assert_close(logp[own > 0], own[own > 0].log(), atol=1e-5, rtol=0)
    assert model.config._attn_implementation == before and count_hooks(model) == 0
    forwards.clear()
    capture_attention(model, input_ids, mask, layers=[-1])
    assert forwards == [gauge == "log-probabilities"]  # remembered: one forward per later capture


@pytest.mark.parametrize("name", table_names())
def test_shift_invariant_thermodynamics_agree_across_both_paths(name, tokenizer):
    """S, C, C(T) and the sink mass depend on the softmax alone, so the scores and the log-probabilities (forced
    onto the same model) give the same numbers; U and F are left unidentified on the second path."""
    model = table_model(name, initializer_range=0.5)  # peaked heads, so that the quantities vary
    input_ids, mask, _, _ = padded_batch(tokenizer)
    conv = ThermoConventions(temperatures=(0.5, 1.0, 2.0))
    default = analyse_thermo(capture_attention(model, input_ids, mask), conv, n_boot=0)
    logp = analyse_thermo(capture_attention(model, input_ids, mask, gauge="log-probabilities"), conv, n_boot=0)
    assert logp.gauge == "log-probabilities"
    for q in ("entropy", "specific_heat", "sink_mass"):
        assert_close(torch.tensor(logp.per_head[q]["value"]), torch.tensor(default.per_head[q]["value"]),
                     atol=1e-5, rtol=1e-4)
    assert_close(torch.tensor(logp.heat_curves), torch.tensor(default.heat_curves), atol=1e-5, rtol=1e-4)
    assert np.isnan(logp.per_head["energy"]["value"]).all()
    assert np.isfinite(default.per_head["energy"]["value"]).all() == default.scores_known


@pytest.mark.parametrize("gauge", [None, "log-probabilities"])
@pytest.mark.parametrize("name", table_names())
def test_implementation_is_restored_when_the_forward_raises(name, gauge, monkeypatch):
    """On either path (the probability path must switch to eager), also when a block raises mid-forward."""
    model = table_model(name)
    before, seen = model.config._attn_implementation, []

    def boom(*args, **kwargs):
        seen.append(model.config._attn_implementation)
        raise RuntimeError("boom")

    monkeypatch.setattr(blocks(model)[-1], "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        capture_attention(model, torch.arange(1, 7), gauge=gauge)
    assert seen == [CAPTURE if gauge is None else "eager"]
    assert model.config._attn_implementation == before and count_hooks(model) == 0
    monkeypatch.undo()
    (cap,) = capture_attention(model, torch.arange(1, 7), gauge=gauge)  # usable, and capturable, again
    assert cap.n_tokens == 6 and model.config._attn_implementation == before


def test_log_probabilities_are_the_scores_less_their_row_log_partition(tokenizer, monkeypatch):
    """Forced onto a model whose layers call the interface, the probability path gives ln p = s − ln Z."""
    model = tiny_model("llama", initializer_range=0.5)  # peaked attention, so the rows differ
    input_ids, mask, _, ids = padded_batch(tokenizer)
    scores = capture_attention(model, input_ids, mask)
    forwards = counting_forwards(model, monkeypatch)
    logp = capture_attention(model, input_ids, mask, gauge="log-probabilities")
    assert forwards == [True] and model.config._attn_implementation == "sdpa"
    for a, b in zip(scores, logp):
        assert (a.gauge, b.gauge) == ("scores", "log-probabilities") and torch.equal(a.visible, b.visible)
        log_z = torch.logsumexp(a.scores.masked_fill(~a.mask, -torch.inf), -1, keepdim=True)  # (L, H, T, 1)
        assert_close(b.scores[a.mask], (a.scores - log_z)[a.mask], atol=1e-5, rtol=1e-5)
    assert capture_attention(model, input_ids, mask)[0].gauge == "scores"  # forcing is not remembered


@pytest.mark.parametrize("name", log_probability_models())
def test_forcing_scores_on_layers_that_bypass_the_interface_is_refused(name):
    model = table_model(name)
    before = model.config._attn_implementation
    with pytest.raises(UnsupportedArchitectureError, match="without calling transformers' AttentionInterface"):
        capture_attention(model, torch.arange(6), gauge="scores")
    assert model.config._attn_implementation == before and count_hooks(model) == 0
    with pytest.raises(TrajectoryError, match="gauge 'logits' is not one of"):
        capture_attention(model, torch.arange(6), gauge="logits")


def test_a_per_head_additive_mask_is_part_of_the_scores_the_softmax_reads():
    """An ALiBi-style (B, H, q, k) mask: a finite bias per head on the visible keys, dtype-min on the hidden ones.
    The weights are softmax(s + bias), and the recorded scores are s + bias, which is what the softmax reads."""
    torch.manual_seed(0)
    B, H, T, d = 2, 4, 5, 8
    q, k, v = torch.randn(B, H, T, d), torch.randn(B, H, T, d), torch.randn(B, H, T, d)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])[:, None, None]  # (H, 1, 1)
    bias = -slopes * (torch.arange(T)[:, None] - torch.arange(T)[None])  # (H, T, T): −m_h (i − j)
    low = torch.finfo(torch.float32).min
    mask = torch.where(causal, bias, low).expand(B, H, T, T)
    model = nn.Module()
    model.config = SimpleNamespace(model_type="alibi-test")
    out, weights = capture_attention_forward(model, q, k, v, mask, scaling=d ** -0.5)
    s = q @ k.transpose(2, 3) * d ** -0.5
    p = torch.softmax((s + bias).masked_fill(~causal, -torch.inf), -1)
    assert_close(weights, p)
    assert_close(out, (p @ v).transpose(1, 2))
    visible, additive = attention_module._mask_parts(mask, s, "alibi-test")
    assert torch.equal(visible, causal.expand(B, T, T)) and torch.equal(additive, mask)
    with pytest.raises(TrajectoryError, match=r"hides different keys for different heads"):
        attention_module._mask_parts(mask.clone().index_fill_(1, torch.tensor([0]), 0.0), s, "alibi-test")
    with pytest.raises(TrajectoryError, match=r"mask of shape \(2, 3, 5, 5\) from model_type 'alibi-test'"):
        attention_module._mask_parts(mask[:, :3], s, "alibi-test")


def test_a_model_neither_path_reads_is_refused(monkeypatch):
    # Learned sink logits: the interface path refuses them, and their probabilities do not sum to 1.
    sinks = sink_logit_model()
    with pytest.raises(UnsupportedArchitectureError, match="s_aux"):
        capture_attention(sinks, torch.arange(6))
    with pytest.raises(UnsupportedArchitectureError, match="sum to 1 ± 0.[0-9]+ over the visible keys"):
        capture_attention(sinks, torch.arange(6), gauge="log-probabilities")
    # No attention weights at all.
    model = tiny_model("llama")
    monkeypatch.setattr(model, "forward", lambda **kw: SimpleNamespace(attentions=None))
    with pytest.raises(UnsupportedArchitectureError, match="neither capture reads its attention"):
        capture_attention(model, torch.arange(6), gauge="log-probabilities")
    assert sinks.config._attn_implementation == "eager" and count_hooks(sinks) == 0
    assert model.config._attn_implementation == "sdpa" and count_hooks(model) == 0


def test_attention_scores_normalise_their_mask_and_fill_defaults():
    L, H, T = 2, 3, 4
    scores = torch.zeros(L, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    shared = AttentionScores(scores, causal)
    for mask in (causal.expand(L, T, T).clone(), causal.expand(L, 1, T, T).clone()):
        assert torch.equal(AttentionScores(scores, mask).visible, shared.visible)
    assert shared.visible.shape == (L, T, T) and shared.mask.shape == (L, H, T, T)
    assert (shared.n_layers, shared.n_heads, shared.n_tokens) == (L, H, T)
    assert shared.layers == (0, 1) and shared.layer_names == ("block.0", "block.1")
    assert shared.token_ids is None and torch.equal(shared.token_positions, torch.arange(T))
    uniform = causal / causal.sum(-1, keepdim=True)  # equal scores: query i spreads 1 / (i + 1) over keys 0..i
    assert_close(shared.probabilities(), uniform.expand(L, H, T, T))
    placed = AttentionScores(scores, causal, torch.arange(T), positions=torch.tensor([5, 6, 7, 8]), layers=[4, 1])
    assert placed.layers == (4, 1) and placed.layer_names == ("block.4", "block.1")
    assert torch.equal(placed.token_positions, torch.tensor([5, 6, 7, 8]))


@pytest.mark.parametrize("kwargs, match", [
    ({"visible": torch.ones(4, 4)}, "must be bool"),
    ({"visible": torch.ones(2, 3, 4, 4, dtype=torch.bool)}, r"one mask per layer, shared by the heads"),
    ({"visible": torch.zeros(4, 4, dtype=torch.bool)}, "a query sees no key"),
    ({"token_ids": torch.zeros(4)}, r"token_ids must be ints of shape \(4,\)"),
    ({"positions": torch.tensor([0, 1, -1, 2])}, "positions must be >= 0"),
    ({"layers": (0,)}, "1 block indices for 2 rows"),
    ({"gauge": "logits"}, "gauge 'logits' is not one of"),
    ({"scores": torch.ones(2, 3, 4, 4), "gauge": "log-probabilities"}, r"reach 1 at a visible key, but log-prob"),
])
def test_attention_scores_reject_bad_fields(kwargs, match):
    fields = {"scores": torch.zeros(2, 3, 4, 4), "visible": torch.ones(4, 4, dtype=torch.bool).tril(), **kwargs}
    with pytest.raises(TrajectoryError, match=match):
        AttentionScores(**fields)
