"""Every architecture-table row, and the fallback for unlisted decoders, checked against transformers itself.

For each family a tiny random model is built offline, and the states the hooks record are compared with a
plain forward's ``output_hidden_states``. The convention found in transformers 5.23 for every family here
(``capture_outputs`` with ``tie_last_hidden_states``, or the hand-written loops of models that append the
``ln_f`` output last) is: ``L + 1`` entries, ``hidden_states[0]`` the residual entering block 0,
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
from transformers import AutoModelForCausalLM

from lagrangian_lens.errors import TrajectoryError, UnsupportedArchitectureError
from lagrangian_lens.models.pretrained import architectures
from lagrangian_lens.models.pretrained.architectures import ARCHITECTURES, arch_for, discover, final_map
from lagrangian_lens.models.pretrained.tiny import FALLBACK, table_names, tiny_config, tiny_model
from lagrangian_lens.trajectories import count_hooks, expand_sites, extract, readout, record_sites

from .conftest import TEXTS, VOCAB

UNLISTED = FALLBACK
TABLE_FAMILIES = [name for name in table_names() if name not in UNLISTED]
CONFIGS = table_names()


@functools.cache
def build(name: str) -> nn.Module:
    """A tiny float32 eval-mode model whose norms all differ (so a wrong final-norm path fails the comparisons);
    cached, as no test changes one (every hook is removed again)."""
    return tiny_model(name, vocab_size=VOCAB)


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


def test_unlisted_real_decoders_are_really_unlisted_and_every_row_has_a_tiny_model():
    for name in UNLISTED:
        assert build(name).config.model_type not in ARCHITECTURES
    assert {build(name).config.model_type for name in TABLE_FAMILIES} == set(ARCHITECTURES)


def test_discovery_prefers_the_block_list_over_a_per_head_list_of_the_same_length():
    # stablelm's qk_layernorm keeps one LayerNorm per head in a ModuleList: with 2 heads and 2 layers the
    # lengths tie, and the block list must still win.
    model = AutoModelForCausalLM.from_config(tiny_config("stablelm", num_attention_heads=2, num_key_value_heads=2,
                                                         qk_layernorm=True)).eval()
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
