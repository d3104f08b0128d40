"""Shared fixtures: tiny random models of every supported family, built from configs in milliseconds."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import AutoConfig, AutoModelForCausalLM

from lagrangian_lens.models import default_tokenizer
from lagrangian_lens.models.pretrained.loading import _finish_tokenizer

# `make test` points LAGRANGIAN_LENS_DATA at ../shared/data; a bare `pytest` in a checkout does the same.
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "LAGRANGIAN_LENS_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["LAGRANGIAN_LENS_DATA"] = str(_SHARED)

VOCAB = 49152  # the default tokenizer's size, so tiny models share it

TINY_CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True),
    "qwen2": dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True),
    "gemma3_text": dict(model_type="gemma3_text", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                        sliding_window=8, final_logit_softcapping=30.0),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=256),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=256),
}
# Families whose attention is computed inline, never through transformers' AttentionInterface: captured from their
# probabilities (output_attentions), so they stay out of TINY_CONFIGS, whose families the score-capture tests run.
INLINE_ATTENTION_CONFIGS = {
    "gptj": dict(model_type="gptj", n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=256),
    "bloom": dict(model_type="bloom", hidden_size=32, n_layer=2, n_head=4),
    "falcon": dict(model_type="falcon", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                   new_decoder_architecture=True),  # rotary; alibi=True, new_decoder_architecture=False for ALiBi
}


def tiny_config(family: str = "llama", **overrides):
    return AutoConfig.for_model(**{**(TINY_CONFIGS | INLINE_ATTENTION_CONFIGS)[family], "vocab_size": VOCAB,
                                   **overrides})


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).eval()


@pytest.fixture(scope="session")
def tokenizer():
    tok = default_tokenizer()
    _finish_tokenizer(tok)
    return tok


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A directory holding only a tiny llama config: ``random:<dir>`` loads it as a random model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_config("llama").save_pretrained(path)
    return path


def sink_logit_model():
    """A tiny gpt-oss: learned attention-sink logits, which neither attention capture path can read."""
    config = AutoConfig.for_model("gpt_oss", hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=2,
                                  num_experts_per_tok=1, sliding_window=8, vocab_size=VOCAB)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


# The families whose attention modules compute their scores inline instead of calling transformers'
# AttentionInterface: gptj did until transformers 5.24, which routes it through the interface.
GPTJ_INLINE = Version(transformers.__version__) < Version("5.24.0.dev0")
INLINE_FAMILIES = ("bloom", "falcon", *(("gptj",) if GPTJ_INLINE else ()))

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Energy is conserved",
    "In the beginning the universe was created. This has made a lot of people very angry.",
]
