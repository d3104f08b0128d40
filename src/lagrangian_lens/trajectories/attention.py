"""Attention scores of a causal LM: every head's pre-softmax scores, and the mask of the keys each query sees.

Mechanism. A transformers 5.x attention module calls the function registered in ``ALL_ATTENTION_FUNCTIONS``
under ``config._attn_implementation``, and the model builds its masks with the function registered under the
same key in ``ALL_MASK_ATTENTION_FUNCTIONS``. This module registers one key of its own (:data:`CAPTURE`) in
both: a mask function that builds the boolean "visible" mask (causal, padding, sliding window) and never skips
it, and an attention function that computes exactly what eager attention computes (s = q·kᵀ·scaling, the
logit soft-cap where the model passes one, the mask added as 0 / dtype-min, softmax in float32, grouped-query
key/value heads repeated) and hands the scores and the mask to the recorder of that layer on the way.
:func:`record_attention` points every config of the model at that key and gives each its previous
implementation back on exit, also when the body raises. No hook is registered and no module is replaced.

The model's outputs are eager attention's (bit for bit in the tests); a model loaded with sdpa moves by float
rounding only.

Coverage. Every architecture whose attention calls the interface: all rows of the architecture table except
falcon, bloom and gptj, whose attention modules compute their scores inline (bloom and falcon add ALiBi
there). Their layers never call the interface, so :meth:`AttentionRecorder.pop` raises
``UnsupportedArchitectureError`` after the first forward rather than return partial scores; recomputing their
scores from hooked q and k would need a copy of each model's rotary or ALiBi code, which is not done here.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from ..errors import TrajectoryError, UnsupportedArchitectureError
from ..models.pretrained.architectures import blocks

CAPTURE = "lagrangian_lens_capture"  # the attention implementation key registered below

# Per attention module (by id) being recorded: (its recorder, its block index). Filled and emptied by
# record_attention; a module not in it (another model using the key) computes eager attention unrecorded.
_ACTIVE: dict[int, tuple[AttentionRecorder, int]] = {}


@dataclass(frozen=True)
class AttentionCall:
    """One layer's attention in one forward, as the attention function saw it."""

    scores: torch.Tensor  # (B, H, q, k) float32: q·kᵀ·scaling (soft-capped where the model caps), before the mask
    visible: torch.Tensor  # (B, q, k) bool: True where the query sees the key (one mask per layer, for all heads)


class AttentionRecorder:
    """What the attention function recorded since the last :meth:`pop`: one call per selected layer and forward."""

    def __init__(self, model: nn.Module, layers: tuple[int, ...], device: torch.device | str | None):
        self.model_type = getattr(getattr(model, "config", None), "model_type", None)
        self.layers = layers  # block indices recorded, ascending
        self.device = device  # where records go (None: where the model computes)
        self.calls: dict[int, AttentionCall] = {}

    def add(self, layer: int, scores: torch.Tensor, visible: torch.Tensor) -> None:
        if layer in self.calls:
            raise TrajectoryError(f"layer {layer} attended twice without a pop(): call recorder.pop() after every "
                                  "forward (one forward per pop, e.g. one per generation step)")
        to = self.device if self.device is not None else scores.device
        self.calls[layer] = AttentionCall(scores.detach().to(to, torch.float32), visible.detach().to(to))

    def pop(self) -> dict[int, AttentionCall]:
        """The last forward's calls {block index: AttentionCall}; clears the record.

        Raises UnsupportedArchitectureError when a selected layer did not call the attention interface.
        """
        missing = [layer for layer in self.layers if layer not in self.calls]
        if missing:
            self.calls.clear()
            raise UnsupportedArchitectureError(
                f"layer(s) {missing[:8]} of model_type {self.model_type!r} computed attention without calling "
                "transformers' AttentionInterface, so their scores cannot be captured; every architecture-table "
                "row but falcon, bloom and gptj uses it. Fix: use a model of another family."
            )
        calls, self.calls = self.calls, {}
        return calls


def _visible_mask(*args, **kwargs) -> torch.Tensor | None:
    """The boolean (B, 1, q, k) mask sdpa would get, never skipped for a plain causal pattern."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _mask_parts(mask: torch.Tensor | None, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(visible (B, q, k) bool, additive bias broadcastable to scores) from the mask the model passed."""
    B, _, q, k = scores.shape
    if mask is None:  # a bidirectional mask with nothing to hide
        return torch.ones(B, q, k, dtype=torch.bool, device=scores.device), 0.0
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise TrajectoryError(f"attention mask of shape {tuple(mask.shape)}: the capture takes a (B, 1, q, k) mask "
                              "shared by the heads; pass a 2D padding mask and let the model build the rest")
    low = torch.finfo(scores.dtype).min
    if mask.dtype == torch.bool:
        mask = mask[..., :k]
        return mask[:, 0].expand(B, q, k), torch.where(mask, torch.zeros((), dtype=scores.dtype,
                                                                           device=scores.device), low)
    # A prepared additive 4D mask the caller passed as is: 0 (or a bias) where visible, dtype-min where hidden.
    bias = mask[..., :k].to(scores.dtype)
    return (bias > low / 2)[:, 0].expand(B, q, k), bias


def capture_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, scaling: float | None = None,
                              dropout: float = 0.0, softcap: float | None = None, **kwargs):
    """Eager attention, step for step, recording the scores of modules under :func:`record_attention`.

    query (B, H, q, d), key and value (B, H_kv, k, d) -> output (B, q, H, d) and weights (B, H, q, k).
    """
    if kwargs.get("s_aux") is not None:
        raise UnsupportedArchitectureError("this attention adds learned sink logits (s_aux) that eager attention in "
                                           "the capture does not reproduce; use a model of another family")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: head h reads key/value head h // groups
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, q, k)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    visible, bias = _mask_parts(attention_mask, scores)
    weights = nn.functional.softmax(scores + bias, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    if (target := _ACTIVE.get(id(module))) is not None:
        recorder, layer = target
        recorder.add(layer, scores, visible)
    return output, weights


AttentionInterface.register(CAPTURE, capture_attention_forward)
AttentionMaskInterface.register(CAPTURE, _visible_mask)


def _configs(model: nn.Module) -> list[PreTrainedConfig]:
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


def resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Block indices (negative counts from the end), checked against the model's depth; None: every block."""
    n = len(blocks(model))
    if layers is None:
        return tuple(range(n))
    bad = [layer for layer in layers if not -n <= int(layer) < n]
    if bad or not layers:
        raise TrajectoryError(f"layers {list(layers)}: the model has {n} blocks; give indices in 0..{n - 1} "
                              "(negative from the end), or None for all")
    return tuple(sorted({int(layer) % n for layer in layers}))


@contextlib.contextmanager
def record_attention(model: nn.Module, *, layers: Sequence[int] | None = None,
                     device: torch.device | str | None = None) -> Iterator[AttentionRecorder]:
    """Inside the context every forward of ``model`` runs eager attention and records the selected layers.

    Call ``recorder.pop()`` after each forward (teacher-forced: once; generation with a KV cache: once per
    step, whose calls hold the step's query rows against every cached key). ``device`` is where the records
    go ('cpu' keeps accelerator memory free). On exit every config's attention implementation is restored,
    also when the body raises.
    """
    selected = resolve_layers(model, layers)
    owners = {id(m): layer for layer, block in enumerate(blocks(model)) if layer in selected
              for m in block.modules()}
    if any(key in _ACTIVE for key in owners):
        raise TrajectoryError("this model's attention is already being recorded: nest no record_attention "
                              "contexts on one model; select every layer needed in one context")
    recorder = AttentionRecorder(model, selected, device)
    configs = _configs(model)
    previous = [config._attn_implementation_internal for config in configs]
    try:
        for config in configs:
            config._attn_implementation_internal = CAPTURE  # this config only: its sub-configs are in the list
        _ACTIVE.update({key: (recorder, layer) for key, layer in owners.items()})
        yield recorder
    finally:
        for key in owners:
            _ACTIVE.pop(key, None)
        for config, implementation in zip(configs, previous):
            config._attn_implementation_internal = implementation


@dataclass
class SequenceAttention:
    """One sequence's attention at the captured layers, over its real tokens only (padding removed).

    Row i is the query at position i, column j the key at position j; position 0 is the sequence's first token
    (its BOS where the tokenizer adds one), so the attention sink stays at key 0.
    """

    token_ids: torch.Tensor  # (T,) int64
    scores: torch.Tensor  # (L, H, T, T) float32: pre-softmax scores of every head
    visible: torch.Tensor  # (L, T, T) bool: whether query i sees key j at each layer (causal, window)
    layers: tuple[int, ...]  # (L,) the block index of each row of scores

    def __post_init__(self):
        self.layers = tuple(int(layer) for layer in self.layers)
        if self.scores.ndim != 4:
            raise TrajectoryError(f"scores must be (L, H, T, T); got shape {tuple(self.scores.shape)}")
        L, _, T, T2 = self.scores.shape
        if T != T2 or self.token_ids.shape != (T,):
            raise TrajectoryError(f"scores {tuple(self.scores.shape)} need square (T, T) planes and token_ids of "
                                  f"shape ({T},); got token_ids {tuple(self.token_ids.shape)}")
        if self.visible.shape != (L, T, T) or self.visible.dtype != torch.bool:
            raise TrajectoryError(f"visible must be a bool (L, T, T) = ({L}, {T}, {T}) mask; got "
                                  f"{self.visible.dtype} {tuple(self.visible.shape)}")
        if len(self.layers) != L:
            raise TrajectoryError(f"{len(self.layers)} layer indices for {L} rows of scores")
        if not self.visible.any(-1).all():
            raise TrajectoryError("a query sees no key: the sequence still holds padding positions")

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    @property
    def n_tokens(self) -> int:
        return self.scores.shape[2]

    @property
    def mask(self) -> torch.Tensor:
        """(L, H, T, T) bool: the visible mask broadcast over heads (a view, no copy)."""
        return self.visible[:, None].expand_as(self.scores)

    def probabilities(self) -> torch.Tensor:
        """(L, H, T, T) the softmax of the scores over each query's visible keys; 0 on hidden keys."""
        masked = self.scores.masked_fill(~self.mask, float("-inf"))
        return torch.softmax(masked, dim=-1)


@torch.no_grad()
def capture_attention(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                      position_ids: torch.Tensor | None = None, layers: Sequence[int] | None = None,
                      device: torch.device | str | None = "cpu") -> list[SequenceAttention]:
    """One forward of ``input_ids`` (B, P) (or (P,)) with the capture on: one :class:`SequenceAttention` per row.

    ``attention_mask`` (B, P) marks real tokens (1) against padding (0), left or right; ``position_ids``
    default to counting real tokens only, so padding never shifts a position and each row's scores equal
    those of the row run alone. Rows come back with padding removed, on ``device`` (None: the model's).
    """
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
        attention_mask = attention_mask[None] if attention_mask is not None else None
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise TrajectoryError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                              f"{tuple(input_ids.shape)}: one 0/1 flag per token")
    empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise TrajectoryError(f"row(s) {empty[:10]} of attention_mask hold no real token")
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with record_attention(model, layers=layers, device=device) as recorder:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        calls = recorder.pop()
    out = []
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool().nonzero().flatten().to(calls[recorder.layers[0]].scores.device)
        scores = torch.stack([calls[layer].scores[b] for layer in recorder.layers])  # (L, H, P, P)
        visible = torch.stack([calls[layer].visible[b] for layer in recorder.layers])  # (L, P, P)
        out.append(SequenceAttention(
            token_ids=input_ids[b, keep.to(input_ids.device)].to(keep.device),
            scores=scores[:, :, keep][:, :, :, keep].contiguous(),
            visible=visible[:, keep][:, :, keep].contiguous(),
            layers=recorder.layers,
        ))
    return out
