"""Shared fixtures: tiny random models of every supported family, built from configs in milliseconds."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lagrangian_lens.models import default_tokenizer
from lagrangian_lens.models.pretrained.loading import _finish_tokenizer
from lagrangian_lens.models.pretrained.tiny import table_names
from lagrangian_lens.models.pretrained.tiny import tiny_model as library_tiny_model
from lagrangian_lens.trajectories.attention import capture_attention

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
def tiny_config(family: str = "llama", **overrides):
    return AutoConfig.for_model(**{**TINY_CONFIGS[family], "vocab_size": VOCAB, **overrides})


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


def table_model(name: str, **overrides):
    """The library's tiny model ``name`` (every architecture-table row, layout variants, the fallback), sized to the
    default tokenizer's vocabulary."""
    return library_tiny_model(name, vocab_size=VOCAB, **overrides)


@functools.cache
def log_probability_models() -> tuple[str, ...]:
    """The tiny table models whose layers bypass the AttentionInterface under the installed transformers, found by
    capturing each (never listed by family: a release can move a family from one path to the other)."""
    return tuple(name for name in table_names()
                 if capture_attention(library_tiny_model(name), torch.arange(1, 5))[0].gauge == "log-probabilities")


TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Energy is conserved",
    "In the beginning the universe was created. This has made a lot of people very angry.",
]
