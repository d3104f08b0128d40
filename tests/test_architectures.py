"""Every architecture-table row, and the fallback for unlisted decoders, checked against transformers itself.

For each family a tiny random model is built offline, and the states the hooks record are compared with a
plain forward's ``output_hidden_states``. The convention found in transformers 5.23 for every family here
(``capture_outputs`` with ``tie_last_hidden_states``, or the hand-written loops of falcon/bloom/gptj, which
append the ``ln_f`` output last) is: ``L + 1`` entries, ``hidden_states[0]`` the residual entering block 0,
``hidden_states[l + 1]`` block l's raw output for ``l < L - 1``, and ``hidden_states[-1]`` the *last
hidden state*: the last block's output after the final norm (and after OPT's project_out), which is the
unembedding's input. So the raw last block is compared through the final norm, and ``final`` directly.
"""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from transformers import AutoConfig, AutoModelForCausalLM

from lagrangian_lens.errors import TrajectoryError, UnsupportedArchitectureError
from lagrangian_lens.models.pretrained import architectures
from lagrangian_lens.models.pretrained.architectures import ARCHITECTURES, arch_for, discover, final_map
from lagrangian_lens.trajectories import count_hooks, expand_sites, extract, readout, record_sites

from .conftest import TEXTS, VOCAB

_ATTN = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
_GEMMA = dict(_ATTN, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
_MOE = dict(_ATTN, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16)
_OPT = dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256)

# name -> AutoConfig.for_model kwargs (model_type defaults to the name); vocab_size=VOCAB is added to each.
CONFIGS = {
    "llama": _ATTN,
    "mistral": _ATTN,
    "qwen2": _ATTN,
    "qwen3": dict(_ATTN, head_dim=8),
    "gemma": _GEMMA,
    "gemma2": dict(_GEMMA, sliding_window=8, query_pre_attn_scalar=16),  # final_logit_softcapping 30 by default
    "gemma3_text": dict(_GEMMA, sliding_window=8, final_logit_softcapping=30.0),
    "smollm3": _ATTN,
    "olmo2": _ATTN,
    "phi3": _ATTN,
    "phi": dict(_ATTN, num_key_value_heads=4),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=256),
    "gpt_neox": dict(_ATTN, num_key_value_heads=None),
    "opt": _OPT,
    "opt-project-out": dict(_OPT, word_embed_proj_dim=16),  # opt-350m's layout: lm_head sees project_out(h)
    "opt-post-ln": dict(_OPT, do_layer_norm_before=False),  # no final norm at all (final_layer_norm is None)
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=8, n_positions=256),
    "mixtral": dict(_ATTN, num_local_experts=2, num_experts_per_tok=1),
    "qwen2_moe": dict(_MOE, shared_expert_intermediate_size=16),
    "qwen3_moe": dict(_MOE, head_dim=8),
    # Real transformers decoders deliberately absent from the table: they go through the fallback.
    "stablelm": dict(_ATTN, num_key_value_heads=4),
    "starcoder2": _ATTN,
}
_SPECIAL = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
UNLISTED = ("stablelm", "starcoder2")
TABLE_FAMILIES = [name for name in CONFIGS if name not in UNLISTED]


@functools.cache
def build(name: str) -> nn.Module:
    """A tiny float32 eval-mode model; cached, as no test changes one (every hook is removed again)."""
    # Special tokens inside the tiny vocabulary: some defaults (smollm3's 128004) would not fit its embedding.
    kwargs = {k: v for k, v in {**_SPECIAL, **CONFIGS[name]}.items() if v is not None}
    model_type = kwargs.pop("model_type", name)
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type=model_type, vocab_size=VOCAB, **kwargs)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    # Norms start as identical identities (weight 1, bias 0), so any norm would pass for the final one: make
    # each one distinct, so that a wrong final-norm path fails the comparisons below.
    with torch.no_grad():
        for module in model.modules():
            if "Norm" in type(module).__name__:
                for p in module.parameters(recurse=False):
                    p.add_(0.3 * torch.randn_like(p))
    return model


def plain_forward(model: nn.Module, ids: torch.Tensor):
    """Logits, output_hidden_states, and the unembedding's input seen by a plain pre-hook of the test's own."""
    seen = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
    finally:
        handle.remove()
    return out.logits[0, :-1], [h[0, :-1] for h in out.hidden_states], seen[0][0, :-1]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hooked_states_and_readouts_equal_a_plain_forward(name, tokenizer):
    model = build(name)
    assert arch_for(model).discovered == (name in UNLISTED)
    depth = extract(model, tokenizer, TEXTS[:1], sites="all")[0]
    assert count_hooks(model) == 0
    fin = extract(model, tokenizer, TEXTS[:1], sites="final")[0]  # apart: OPT-350m's final is narrower
    assert count_hooks(model) == 0
    logits, hidden, head_in = plain_forward(model, depth.token_ids[None])
    n_blocks = len(depth.sites) - 1
    assert len(hidden) == n_blocks + 1 == model.config.num_hidden_layers + 1
    assert_close(depth.at("embed"), hidden[0])
    for l in range(n_blocks - 1):
        assert_close(depth.at(f"block.{l}"), hidden[l + 1])
    last = depth.at(f"block.{n_blocks - 1}")
    with torch.no_grad():  # the last entry is normed: the raw last block goes through the final norm first
        assert_close(final_map(model)(last), hidden[-1], atol=1e-5, rtol=1e-4)
        assert_close(fin.at("final"), head_in)
        assert_close(fin.at("final"), hidden[-1])
        assert_close(readout(model, "final")(fin.at("final")), logits)
        # The logit lens at the last block is exact: final norm (and projection), then the unembedding.
        assert_close(readout(model, "block.-1")(last), logits, atol=1e-5, rtol=1e-4)
    assert count_hooks(model) == 0


def test_final_and_depth_sites_of_different_widths_are_refused_with_the_fix(tokenizer):
    model = build("opt-project-out")
    with pytest.raises(TrajectoryError, match="'final' has width 16(.|\n)*hidden_size 32(.|\n)*separate calls"):
        extract(model, tokenizer, TEXTS[:1], sites="all,final")
    assert count_hooks(model) == 0


@pytest.mark.parametrize("name", ["llama", "opt-project-out", "bloom", "stablelm"])
def test_hooks_are_removed_when_the_body_raises(name):
    model = build(name)
    with pytest.raises(RuntimeError, match="boom"):
        with record_sites(model, ("embed", "block.0", "block.1", "final")):
            assert count_hooks(model) == model.config.num_hidden_layers + 2
            raise RuntimeError("boom")
    assert count_hooks(model) == 0


@pytest.mark.parametrize("name", TABLE_FAMILIES)
def test_the_fallback_finds_what_the_table_says(name):
    """Discovery, ignoring the table, agrees with every row whose layout it can see."""
    model, row = build(name), ARCHITECTURES[build(name).config.model_type]
    if name == "opt-project-out":  # project_out sits between norm and unembedding: only a row can say so
        with pytest.raises(UnsupportedArchitectureError, match="width 16, not hidden_size 32"):
            discover(model)
        return
    if name == "opt-post-ln":  # no final norm to find: only a row can say it is absent on purpose
        with pytest.raises(UnsupportedArchitectureError, match="found none"):
            discover(model)
        return
    found = discover(model)
    assert found.discovered and not row.discovered
    assert (found.layers, found.final_norm, found.unembed) == (row.layers, row.final_norm, row.unembed)


def test_an_unlisted_llama_goes_through_the_fallback(monkeypatch, tokenizer):
    model = build("llama")
    listed = extract(model, tokenizer, TEXTS[:1], sites="all,final")[0]
    monkeypatch.delitem(ARCHITECTURES, "llama")
    assert "llama" not in ARCHITECTURES and "llama" not in architectures.supported_model_types()
    spec = arch_for(model)
    assert spec.discovered and (spec.layers, spec.final_norm, spec.unembed) == ("model.layers", "model.norm", "lm_head")
    found = extract(model, tokenizer, TEXTS[:1], sites="all,final")[0]
    assert found.sites == listed.sites
    assert_close(found.states, listed.states)
    assert count_hooks(model) == 0


def test_unlisted_real_decoders_are_really_unlisted():
    for name in UNLISTED:
        assert build(name).config.model_type not in ARCHITECTURES


def test_discovery_prefers_the_block_list_over_a_per_head_list_of_the_same_length():
    # stablelm's qk_layernorm keeps one LayerNorm per head in a ModuleList: with 2 heads and 2 layers the
    # lengths tie, and the block list must still win.
    config = AutoConfig.for_model(model_type="stablelm", vocab_size=VOCAB, **dict(
        CONFIGS["stablelm"], num_attention_heads=2, num_key_value_heads=2, qk_layernorm=True))
    model = AutoModelForCausalLM.from_config(config).eval()
    assert any(isinstance(m, nn.ModuleList) and len(m) == 2 for m in model.model.layers[0].modules())
    assert discover(model).layers == "model.layers"


def test_failed_discovery_names_the_reason_and_the_fix(monkeypatch):
    model = build("llama")
    monkeypatch.setattr(model.config, "model_type", "made-up")
    monkeypatch.setattr(model.config, "num_hidden_layers", 5)  # no block list of that length
    assert "made-up" not in ARCHITECTURES
    with pytest.raises(UnsupportedArchitectureError, match=r"no nn.ModuleList of 5 blocks(.|\n)*Supported: .*"
                                                           r"gpt_neox(.|\n)*add a row"):
        expand_sites(model, "all")
    assert expand_sites(model, "final") == ("final",)  # the final site needs no layout
