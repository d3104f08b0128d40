"""The one table that maps Hugging Face architectures to their block list, final norm and unembedding.

Everything that hooks into a model (sites, read-outs) goes through :func:`arch_for`, so supporting a new
architecture means adding one row here and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ...errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """Dotted attribute paths, relative to the ``*ForCausalLM`` module."""

    layers: str  # the ModuleList of decoder blocks, in depth order
    final_norm: str  # the norm applied to the last block's output before the unembedding
    unembed: str  # the linear map from hidden states to logits


_LLAMA_LIKE = ArchSpec(layers="model.layers", final_norm="model.norm", unembed="lm_head")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gpt2": ArchSpec(layers="transformer.h", final_norm="transformer.ln_f", unembed="lm_head"),
    "gpt_neox": ArchSpec(layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", unembed="lm_head"),
}


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def arch_for(model: nn.Module) -> ArchSpec:
    """The table row for ``model``, or an error that lists every supported ``model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} ({type(model).__name__}) is not in the architecture table.\n"
            f"Supported: {', '.join(supported_model_types())}.\n"
            "Fix: add a row to lagrangian_lens.models.pretrained.architectures.ARCHITECTURES naming its block list, "
            "final norm and unembedding (the site 'final' works on any model through output_hidden_states)."
        )
    return ARCHITECTURES[model_type]


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    module = model
    for part in path.split("."):
        module = getattr(module, part)
    return module


def blocks(model: nn.Module) -> nn.ModuleList:
    return get_submodule(model, arch_for(model).layers)


def final_norm(model: nn.Module) -> nn.Module:
    return get_submodule(model, arch_for(model).final_norm)


def unembedding(model: nn.Module) -> nn.Module:
    return get_submodule(model, arch_for(model).unembed)


def logit_softcap(model: nn.Module) -> float | None:
    """Gemma-2/3 squash logits with ``cap * tanh(logits / cap)``; None for everyone else."""
    cap = getattr(model.config, "final_logit_softcapping", None)
    return float(cap) if cap else None
