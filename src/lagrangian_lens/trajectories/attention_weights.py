"""Attention probabilities read from ``output_attentions``, and the switch of a model's attention implementation.

The score capture (``trajectories.attention``) needs layers that call transformers' AttentionInterface. For a
model whose layers compute attention inline (their own position code, or ALiBi), this module runs the model with
``output_attentions=True`` under the "eager" implementation and reads each layer's attention probabilities
p (B, H, q, k). Eager is needed twice over: under sdpa transformers may build a boolean mask (or none, for a plain
causal pattern), which an inline layer would add to its scores as 0/1 instead of 0/−inf; and only the eager code
path returns the weights. Every config's implementation is restored on exit, also when the forward raises. No hook
is registered and no module is replaced.

What comes back is ln p in float32 (−inf where p is exactly 0): each head's scores up to one unknown constant per
query row, since ln p_j = s_j − ln Z. The keys each query may see are read as causal over the real tokens, which
is the mask of a plain causal decoder; the probabilities are checked against it (no weight on a hidden key,
rows summing to 1 over the visible ones), so an attention that is not a plain causal softmax (learned sink logits,
sliding windows, a flash kernel returning no weights) is refused rather than misread.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import PreTrainedConfig

from ..compat import warn_if_untested
from ..errors import UnsupportedArchitectureError
from ..models.pretrained.architectures import blocks

EAGER = "eager"


def model_configs(model: nn.Module) -> list[PreTrainedConfig]:
    """Every distinct config the model's modules read, with their sub-configs (a multimodal model's text part)."""
    found: dict[int, PreTrainedConfig] = {}
    pending = [m.config for m in model.modules() if isinstance(getattr(m, "config", None), PreTrainedConfig)]
    while pending:
        config = pending.pop()
        if id(config) not in found:
            found[id(config)] = config
            pending += [sub for key in getattr(config, "sub_configs", {}) if isinstance(
                sub := getattr(config, key, None), PreTrainedConfig)]
    return list(found.values())


@contextlib.contextmanager
def attention_implementation(configs: list[PreTrainedConfig], key: str) -> Iterator[None]:
    """Every config in ``configs`` reads ``key`` as its attention implementation inside; each gets its own previous
    implementation back on exit, also when the body raises."""
    # The internal field, not the property: its setter checks the key against the model class, and sub-configs
    # are in the list already, so each is set on its own.
    previous = [config._attn_implementation_internal for config in configs]
    try:
        for config in configs:
            config._attn_implementation_internal = key
        yield
    finally:
        for config, implementation in zip(configs, previous):
            config._attn_implementation_internal = implementation


def causal_visible(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, P, P) bool: query i sees key j iff j <= i and token j is real, from a (B, P) 0/1 padding mask."""
    P = attention_mask.shape[-1]
    causal = torch.ones(P, P, dtype=torch.bool, device=attention_mask.device).tril()
    return causal[None] & attention_mask.bool()[:, None, :]


def _checked(p: torch.Tensor, visible: torch.Tensor, real: torch.Tensor, layer: int, model_type) -> torch.Tensor:
    """``p`` (B, H, P, P) when it is a causal softmax over the visible keys on every real query row; else raises."""
    where = f"layer {layer} of model_type {model_type!r}"
    B, P = real.shape
    if not isinstance(p, torch.Tensor) or p.ndim != 4 or (p.shape[0], *p.shape[2:]) != (B, P, P):
        shape = tuple(p.shape) if isinstance(p, torch.Tensor) else None
        raise UnsupportedArchitectureError(
            f"{where} returned attention weights of shape {shape} with output_attentions=True, not (B, H, {P}, {P}) "
            "probabilities (a flash kernel?); load the model with attn_implementation='eager' or 'sdpa'")
    rows = real[:, None, :, None]  # (B, 1, P, 1) real query rows; padding queries are dropped later
    hidden = (p != 0) & ~visible[:, None] & rows
    if bool(hidden.any()):
        raise UnsupportedArchitectureError(
            f"{where} puts weight {float(p[hidden].max()):.3g} on keys a causal mask over the real tokens hides; "
            "the probability capture reads plain causal attention only (no sliding window, no bidirectional prefix)")
    sums = torch.where(visible[:, None], p.to(torch.float32), 0.0).sum(-1)  # (B, H, P)
    error = torch.where(real[:, None], (sums - 1).abs(), 0.0).max()
    tolerance = max(1e-4, 4 * torch.finfo(p.dtype).eps)  # float32: 1e-4; bfloat16: 0.03 (rounded weights)
    if float(error) > tolerance:
        raise UnsupportedArchitectureError(
            f"{where}: its attention weights sum to 1 ± {float(error):.3g} over the visible keys, not to 1 (learned "
            "sink logits?); they are no softmax over the keys, so their thermodynamics cannot be read from them")
    return p


@torch.no_grad()
def attention_log_probabilities(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                position_ids: torch.Tensor, layers: tuple[int, ...],
                                device: torch.device | str | None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """One eager forward with ``output_attentions=True``: {block index: (ln p (B, H, P, P) float32, visible
    (B, P, P) bool)} for the selected ``layers``, on ``device`` (None: where the model computes).

    ``input_ids``, ``attention_mask`` and ``position_ids`` are (B, P), as ``capture_attention`` prepares them.
    Raises UnsupportedArchitectureError when the model returns no attention weights, or weights that are no causal
    softmax over the real tokens.
    """
    warn_if_untested()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    with attention_implementation(model_configs(model), EAGER):
        attentions = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False, output_attentions=True).attentions
    n = len(blocks(model))
    if attentions is None or len(attentions) != n:
        got = None if attentions is None else f"{len(attentions)} layers"
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} returned attention weights for {got} with output_attentions=True, not for "
            f"its {n} blocks, and its layers do not call transformers' AttentionInterface: neither capture reads its "
            "attention; use a model of another family")
    real = attention_mask.bool()  # (B, P)
    visible = causal_visible(attention_mask)  # (B, P, P)
    out = {}
    for layer in layers:
        p = _checked(attentions[layer], visible, real, layer, model_type)
        to = device if device is not None else p.device
        out[layer] = (p.to(to, torch.float32).log(), visible.to(to))  # ln 0 = −inf: an underflowed (or hidden) key
    return out
