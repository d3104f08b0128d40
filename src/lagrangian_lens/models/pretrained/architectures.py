"""The one table that maps Hugging Face architectures to their block list, final norm and unembedding.

Everything that hooks into a model's depth (sites ``embed``/``block.<l>``, logit-lens read-outs) goes through
:func:`arch_for`, so supporting a new architecture means adding one row here and nothing else. A decoder that
has no row is searched for the same three pieces (:func:`discover`); the site ``final`` and its read-out need
no row at all, only ``model.get_output_embeddings()``.

Every path below was checked against tiny models built from configs with the installed transformers (5.x),
and tests/test_architectures.py checks each row against ``output_hidden_states``.
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
    # A map the model applies between the final norm and the unembedding, if any: OPT checkpoints whose
    # word_embed_proj_dim differs from hidden_size (opt-350m) project down with model.decoder.project_out.
    # Paths that resolve to None on a given model (OPT without that projection) are skipped.
    project: str | None = None
    discovered: bool = False  # True when found by :func:`discover` rather than read from the table


_LLAMA_LIKE = ArchSpec(layers="model.layers", final_norm="model.norm", unembed="lm_head")
# GPT-2 style: blocks at transformer.h, final LayerNorm transformer.ln_f (gpt2, falcon, bloom, gptj).
_GPT2_LIKE = ArchSpec(layers="transformer.h", final_norm="transformer.ln_f", unembed="lm_head")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen2_moe": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "qwen3_moe": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "phi": ArchSpec(layers="model.layers", final_norm="model.final_layernorm", unembed="lm_head"),
    "gpt2": _GPT2_LIKE,
    "falcon": _GPT2_LIKE,
    "bloom": _GPT2_LIKE,
    "gptj": _GPT2_LIKE,
    "gpt_neox": ArchSpec(layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", unembed="lm_head"),
    # final_layer_norm is None when do_layer_norm_before=False (opt-350m, post-LN): then it is skipped.
    "opt": ArchSpec(layers="model.decoder.layers", final_norm="model.decoder.final_layer_norm", unembed="lm_head",
                    project="model.decoder.project_out"),
}


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _unsupported(model: nn.Module, why: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"model_type {_model_type(model)!r} ({type(model).__name__}) is not in the architecture table, and its "
        f"layer layout could not be found automatically: {why}.\n"
        f"Supported: {', '.join(supported_model_types())}.\n"
        "Fix: add a row to lagrangian_lens.models.pretrained.architectures.ARCHITECTURES naming its block list, "
        "final norm and unembedding, e.g. ArchSpec(layers='model.layers', final_norm='model.norm', "
        "unembed='lm_head'). The site 'final' needs no row: it works on any model with get_output_embeddings()."
    )


def arch_for(model: nn.Module) -> ArchSpec:
    """The table row for ``model``, else the layout :func:`discover` finds (``discovered=True``).

    Raises UnsupportedArchitectureError, listing every supported ``model_type``, when neither works.
    """
    spec = ARCHITECTURES.get(_model_type(model))
    return spec if spec is not None else discover(model)


def _n_layers(config) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(config, key, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or "Norm" in type(module).__name__


def discover(model: nn.Module) -> ArchSpec:
    """Find the block list, final norm and unembedding of a decoder that has no table row.

    * blocks: the ``nn.ModuleList`` of ``config.num_hidden_layers`` (or ``n_layer``) modules; when
      several qualify (a per-head list inside attention can have the same length), the one holding the most
      parameters, since the blocks hold the whole stack and nothing else of that length does.
    * final norm: the one norm (LayerNorm/RMSNorm, or a class whose name contains "Norm") that is a direct child
      of the module holding the block list; norms named after the embeddings (Bloom's
      word_embeddings_layernorm) run before block 0, so they are left out.
    * unembedding: ``model.get_output_embeddings()``, whose input width must be the hidden size: a model that
      projects between the norm and the unembedding (OPT-350m) needs a table row with ``project``.
    """
    config = getattr(model, "config", None)
    n = _n_layers(config)
    if n is None:
        raise _unsupported(model, "its config gives no num_hidden_layers or n_layer")
    names = {id(m): name for name, m in model.named_modules()}
    lists = [(name, m) for name, m in model.named_modules() if name and isinstance(m, nn.ModuleList) and len(m) == n]
    if not lists:
        raise _unsupported(model, f"no nn.ModuleList of {n} blocks (config.num_hidden_layers = {n})")
    lists.sort(key=lambda item: _n_params(item[1]), reverse=True)
    if len(lists) > 1 and _n_params(lists[0][1]) == _n_params(lists[1][1]):
        raise _unsupported(model, f"several block lists qualify equally: {', '.join(nm for nm, _ in lists)}")
    layers = lists[0][0]
    parent_path = layers.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    norms = [name for name, child in parent.named_children() if _is_norm(child) and "emb" not in name.lower()]
    if len(norms) != 1:
        found = ", ".join(norms) or "none"
        raise _unsupported(model, f"expected one final norm beside the block list {layers!r}, found {found}")
    norm = f"{parent_path}.{norms[0]}" if parent_path else norms[0]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or id(head) not in names:
        raise _unsupported(model, "get_output_embeddings() gives no unembedding module inside the model")
    width, hidden = getattr(head, "in_features", None), getattr(config, "hidden_size", None)
    if None not in (width, hidden) and width != hidden:
        raise _unsupported(model, f"the unembedding takes width {width}, not hidden_size {hidden}: something "
                                  "between the final norm and the unembedding changes the width")
    return ArchSpec(layers=layers, final_norm=norm, unembed=names[id(head)], discovered=True)


def get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    module = model
    for part in path.split("."):
        module = getattr(module, part)
    return module


def blocks(model: nn.Module) -> nn.ModuleList:
    return get_submodule(model, arch_for(model).layers)


def final_norm(model: nn.Module) -> nn.Module:
    """The final norm; an identity where the model has none (post-LN OPT's final_layer_norm is None)."""
    return get_submodule(model, arch_for(model).final_norm) or nn.Identity()


def final_map(model: nn.Module) -> nn.Module:
    """Last block's raw output -> the unembedding's input: the final norm, then ``project`` where present."""
    spec = arch_for(model)
    norm = get_submodule(model, spec.final_norm) or nn.Identity()
    project = get_submodule(model, spec.project) if spec.project else None
    # A Sequential made here is not registered in the model, so it adds nothing to its modules or hooks.
    return nn.Sequential(norm, project) if project is not None else norm


def unembedding(model: nn.Module) -> nn.Module:
    """``model.get_output_embeddings()``, which every transformers causal LM has; no table row needed."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} (model_type {_model_type(model)!r}) has no output embeddings: "
            "get_output_embeddings() is missing or returns None, so the site 'final' and read-outs have no "
            "unembedding to use. Fix: load the model with its language-modelling head (AutoModelForCausalLM)."
        )
    return head


def logit_softcap(model: nn.Module) -> float | None:
    """Gemma-2/3 squash logits with ``cap * tanh(logits / cap)``; None for everyone else."""
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return float(cap) if cap else None
