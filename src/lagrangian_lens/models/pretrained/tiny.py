"""Tiny random models, one per architecture-table row, a few layout variants, and decoders left to the fallback.

They are the conformance fixtures: ``lagrangian-lens doctor`` and the tests build each from its config in
milliseconds, offline, with the installed transformers, and check every reading the toolkit takes against the
model's own outputs. Each has 2 blocks, width 32 and 4 heads (grouped-query where the family has it), float32.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig

from ...errors import ConfigError
from .architectures import ARCHITECTURES

_ATTN = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
_GEMMA = dict(_ATTN, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
_MOE = dict(_ATTN, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16)
_OPT = dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256)
_FALCON = dict(model_type="falcon", hidden_size=32, num_hidden_layers=2, num_attention_heads=4)

# name -> AutoConfig.for_model kwargs (model_type defaults to the name; a None value is left to the config).
TINY_CONFIGS: dict[str, dict] = {
    "llama": _ATTN,
    "mistral": _ATTN,
    "mixtral": dict(_ATTN, num_local_experts=2, num_experts_per_tok=1),
    "qwen2": _ATTN,
    "qwen2_moe": dict(_MOE, shared_expert_intermediate_size=16),
    "qwen3": dict(_ATTN, head_dim=8),
    "qwen3_moe": dict(_MOE, head_dim=8),
    "gemma": _GEMMA,
    "gemma2": dict(_GEMMA, sliding_window=8, query_pre_attn_scalar=16),  # final_logit_softcapping 30 by default
    "gemma3_text": dict(_GEMMA, sliding_window=8, final_logit_softcapping=30.0),
    "smollm3": _ATTN,
    "olmo2": _ATTN,
    "phi3": _ATTN,
    "phi": dict(_ATTN, num_key_value_heads=4),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=256),
    "falcon": _FALCON,
    "falcon-alibi": dict(_FALCON, alibi=True, new_decoder_architecture=False, multi_query=False),
    "falcon-gqa-rotary": dict(_FALCON, new_decoder_architecture=True, num_kv_heads=2),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=8, n_positions=256),
    "gpt_neox": dict(_ATTN, num_key_value_heads=None),
    "opt": _OPT,
    "opt-project-out": dict(_OPT, word_embed_proj_dim=16),  # opt-350m's layout: lm_head sees project_out(h)
    "opt-post-ln": dict(_OPT, do_layer_norm_before=False),  # no final norm at all (final_layer_norm is None)
    # Real transformers decoders deliberately absent from the table: they go through the fallback (discover).
    "stablelm": dict(_ATTN, num_key_value_heads=4),
    "starcoder2": _ATTN,
}
FALLBACK = ("stablelm", "starcoder2")  # names above whose model_type has no table row
# Special tokens inside a tiny vocabulary: some defaults (smollm3's 128004) would not fit its embedding.
_SPECIAL = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
VOCAB = 512  # the tiny models' default vocabulary


def model_type_of(name: str) -> str:
    """The transformers ``model_type`` of a tiny model's name ('falcon-alibi' -> 'falcon')."""
    return TINY_CONFIGS[name].get("model_type", name)


def tiny_config(name: str, *, vocab_size: int = VOCAB, **overrides) -> PreTrainedConfig:
    """The config of the tiny model ``name`` (a key of :data:`TINY_CONFIGS`), with ``overrides`` on top."""
    if name not in TINY_CONFIGS:
        raise ConfigError("model", f"no tiny model {name!r}; choose one of {', '.join(TINY_CONFIGS)}")
    kwargs = {k: v for k, v in {**_SPECIAL, **TINY_CONFIGS[name], **overrides}.items() if v is not None}
    model_type = kwargs.pop("model_type", name)
    return AutoConfig.for_model(model_type=model_type, vocab_size=vocab_size, **kwargs)


def tiny_model(name: str, *, vocab_size: int = VOCAB, seed: int = 0, **overrides) -> nn.Module:
    """A tiny random float32 model in eval mode whose norms are all distinct.

    A fresh norm is an identity (weight 1, bias 0), so any norm would pass for any other: each gets a seeded
    random perturbation, so that reading the wrong norm (the final one among them) changes the numbers.
    """
    config = tiny_config(name, vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for module in model.modules():
            if "Norm" in type(module).__name__:
                for p in module.parameters(recurse=False):
                    p.add_(0.3 * torch.randn_like(p))
    return model


def table_names() -> list[str]:
    """Every tiny model whose model_type has a table row (variants included), in table order, then the fallback."""
    rows = [name for name in TINY_CONFIGS if model_type_of(name) in ARCHITECTURES]
    return rows + list(FALLBACK)
