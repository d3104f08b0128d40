"""Attention of a causal LM: every head's pre-softmax scores (or log-probabilities), and the keys each query sees.

Mechanism. A transformers 5.x attention module calls the function registered in ``ALL_ATTENTION_FUNCTIONS``
under ``config._attn_implementation``, and the model builds its masks with the function registered under the
same key in ``ALL_MASK_ATTENTION_FUNCTIONS``. This module registers one key of its own (:data:`CAPTURE`) in
both: a mask function that builds the boolean "visible" mask (causal, padding, sliding window) and never skips
it, and an attention function that computes exactly what eager attention computes (s = q·kᵀ·scaling, the
logit soft-cap where the model passes one, the mask added as 0 / dtype-min, softmax in float32, grouped-query
key/value heads repeated) and hands the scores and the mask to the recorder of that layer on the way.
:func:`record_attention` points every config of the model at that key and gives each its previous
implementation back on exit, also when the body raises. No hook is registered and no module is replaced.
:func:`capture_attention` runs one batch through it and returns one :class:`AttentionScores` per sequence, the
container the thermo analysis (``analysis.thermo``) reads; :func:`iter_captures` does so lazily for a list of
trajectories, batch by batch.

The model's outputs are eager attention's (bit for bit in the tests); a model loaded with sdpa moves by float
rounding only.

Coverage. A model whose layers call the interface gives its scores; a layer may pass any mask transformers
builds, boolean or additive, shared by the heads or per head, and the finite part of an additive mask (a position
bias such as ALiBi's) is part of the scores the softmax reads. A model some of whose layers compute attention
inline, without calling the interface, falls back to the probabilities that ``output_attentions=True`` returns
under eager attention (``trajectories.attention_weights``) and stores ln p = s − ln Z: the scores up to one
unknown constant per query row, marked ``gauge="log-probabilities"``. Which path a model takes is never listed
per family (a transformers release can move a family from one to the other): the first capture of a model runs
the interface path, sees which selected layers never called it, and remembers the answer for that model object,
so later batches run one forward each; results record the path in ``conventions["capture"]``. A model that
neither path reads (learned sink logits, ``output_attentions`` returning nothing) raises
``UnsupportedArchitectureError``. Recomputing inline scores from hooked q and k would need a copy of each model's
own position code, which is not done here.
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from ..compat import warn_if_untested
from ..errors import TrajectoryError, UnsupportedArchitectureError
from ..models.pretrained.architectures import blocks
from .attention_scores import GAUGES, AttentionScores
from .attention_weights import attention_implementation, attention_log_probabilities, model_configs
from .trajectory import Trajectory

CAPTURE = "lagrangian_lens_capture"  # the attention implementation key registered below
# How each gauge is captured, in the words results record under conventions["capture"].
CAPTURE_METHODS = {
    "scores": "scores via AttentionInterface: pre-softmax s = q·k·scaling (soft-capped where the model caps) of every "
              "head, grouped-query heads expanded, from eager attention run through transformers' AttentionInterface",
    "log-probabilities": "log-probabilities via output_attentions; U and F not identified: ln p = s − ln Z of every "
                         "head from eager attention's weights, the scores up to one unknown constant per query row",
}
# The gauge each model's first capture found it needs, so later captures run one forward (weak: models are freed).
_MODEL_GAUGE: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

# Per attention module (by id) being recorded: (its recorder, its block index). Filled and emptied by
# record_attention; a module not in it (another model using the key) computes eager attention unrecorded.
_ACTIVE: dict[int, tuple[AttentionRecorder, int]] = {}


@dataclass(frozen=True)
class AttentionCall:
    """One layer's attention in one forward, as the attention function saw it."""

    scores: torch.Tensor  # (B, H, q, k) float32: q·kᵀ·scaling (soft-capped where the model caps), before the mask;
    # or ln p (−inf where p = 0) from the probability path, whose records never pass through a recorder
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

    def missing(self) -> list[int]:
        """The selected layers that have not called the attention interface since the last :meth:`pop`."""
        return [layer for layer in self.layers if layer not in self.calls]

    def pop(self) -> dict[int, AttentionCall]:
        """The last forward's calls {block index: AttentionCall}; clears the record.

        Raises UnsupportedArchitectureError when a selected layer did not call the attention interface.
        """
        missing = self.missing()
        if missing:
            self.calls.clear()
            raise UnsupportedArchitectureError(
                f"layer(s) {missing[:8]} of model_type {self.model_type!r} computed attention without calling "
                "transformers' AttentionInterface, so their scores cannot be recorded. Fix: capture_attention(model, "
                "...) with gauge=None reads such a model's log-probabilities instead."
            )
        calls, self.calls = self.calls, {}
        return calls


def _visible_mask(*args, **kwargs) -> torch.Tensor | None:
    """The boolean (B, 1, q, k) mask sdpa would get, never skipped for a plain causal pattern."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _model_type(module: nn.Module) -> str | None:
    return getattr(getattr(module, "config", None), "model_type", None)


def _mask_parts(mask: torch.Tensor | None, scores: torch.Tensor,
                model_type: str | None = None) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(visible (B, q, k) bool, additive bias broadcastable to scores) from whatever mask the model passed.

    Boolean (True = visible) or additive (0, or a finite bias such as ALiBi's, where visible; at most half the
    dtype's minimum where hidden), shared by the heads (B, 1, q, k) or per head (B, H, q, k). Every head must hide
    the same keys: ``AttentionScores`` holds one visible mask per layer.
    """
    B, H, q, k = scores.shape
    if mask is None:  # a bidirectional mask with nothing to hide
        return torch.ones(B, q, k, dtype=torch.bool, device=scores.device), 0.0
    if mask.ndim != 4 or mask.shape[0] not in (1, B) or mask.shape[1] not in (1, H) or mask.shape[2] != q \
            or mask.shape[3] < k:
        raise TrajectoryError(f"attention mask of shape {tuple(mask.shape)} from model_type {model_type!r}: the "
                              f"capture takes a mask shared by the heads ({B}, 1, {q}, {k}) or one per head ({B}, {H}, "
                              f"{q}, {k}), boolean or additive; pass a 2D padding mask and let the model build the rest")
    mask = mask[..., :k]
    low = torch.finfo(scores.dtype).min
    if mask.dtype == torch.bool:
        shown = mask
        bias = torch.where(mask, torch.zeros((), dtype=scores.dtype, device=scores.device), low)
    else:  # additive: 0 (or a bias) where visible, dtype-min (or -inf) where hidden
        bias = mask.to(scores.dtype)
        shown = bias > low / 2
    if shown.shape[1] > 1 and not bool((shown == shown[:, :1]).all()):
        raise TrajectoryError(f"the per-head attention mask of shape {tuple(mask.shape)} from model_type "
                              f"{model_type!r} hides different keys for different heads; the capture records one "
                              "visible mask per layer, shared by its heads")
    return shown[:, 0].expand(B, q, k), bias


def capture_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, scaling: float | None = None,
                              dropout: float = 0.0, softcap: float | None = None, **kwargs):
    """Eager attention, step for step, recording the scores of modules under :func:`record_attention`.

    query (B, H, q, d), key and value (B, H_kv, k, d) -> output (B, q, H, d) and weights (B, H, q, k). The
    recorded scores are what the softmax reads: q·kᵀ·scaling (soft-capped), plus the finite part of an additive
    mask on the visible keys (a position bias such as ALiBi's, which a model may pass inside its mask).
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
    visible, bias = _mask_parts(attention_mask, scores, _model_type(module))
    logits = scores + bias  # (B, H, q, k) what the softmax reads
    weights = nn.functional.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    if (target := _ACTIVE.get(id(module))) is not None:
        recorder, layer = target
        recorder.add(layer, torch.where(visible[:, None], logits, scores), visible)
    return output, weights


AttentionInterface.register(CAPTURE, capture_attention_forward)
AttentionMaskInterface.register(CAPTURE, _visible_mask)


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
    warn_if_untested()
    selected = resolve_layers(model, layers)
    owners = {id(m): layer for layer, block in enumerate(blocks(model)) if layer in selected
              for m in block.modules()}
    if any(key in _ACTIVE for key in owners):
        raise TrajectoryError("this model's attention is already being recorded: nest no record_attention "
                              "contexts on one model; select every layer needed in one context")
    recorder = AttentionRecorder(model, selected, device)
    try:
        _ACTIVE.update({key: (recorder, layer) for key, layer in owners.items()})
        with attention_implementation(model_configs(model), CAPTURE):
            yield recorder
    finally:
        for key in owners:
            _ACTIVE.pop(key, None)


@torch.no_grad()
def capture_attention(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                      position_ids: torch.Tensor | None = None, layers: Sequence[int] | None = None,
                      device: torch.device | str | None = "cpu", gauge: str | None = None) -> list[AttentionScores]:
    """One forward of ``input_ids`` (B, P) (or (P,)) with the capture on: one :class:`AttentionScores` per row.

    ``attention_mask`` (B, P) marks real tokens (1) against padding (0), left or right; ``position_ids``
    default to counting real tokens only, so padding never shifts a position and each row's scores equal
    those of the row run alone. Rows come back with padding removed, on ``device`` (None: the model's).

    ``gauge`` None picks the capture the model needs: its scores through the AttentionInterface where its layers
    call it, else its log-probabilities from ``output_attentions`` (decided by the model's first capture, which
    then costs one extra forward, and remembered). "scores" or "log-probabilities" forces one path; "scores"
    raises UnsupportedArchitectureError for layers that bypass the interface.
    """
    if gauge is not None and gauge not in GAUGES:
        raise TrajectoryError(f"gauge {gauge!r} is not one of {GAUGES}, or None to let the model decide")
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
    selected = resolve_layers(model, layers)
    path = gauge or _MODEL_GAUGE.get(model, "scores")
    if path == "scores":
        with record_attention(model, layers=selected, device=device) as recorder:
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
            # Layers that never called the interface compute attention inline: read their probabilities instead.
            path = "log-probabilities" if gauge is None and recorder.missing() else "scores"
            calls = recorder.pop() if path == "scores" else None
    if gauge is None:
        _MODEL_GAUGE[model] = path
    if path == "log-probabilities":
        calls = {layer: AttentionCall(*parts) for layer, parts in attention_log_probabilities(
            model, input_ids, attention_mask, position_ids, selected, device).items()}
    out = []
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool().nonzero().flatten().to(calls[selected[0]].scores.device)
        scores = torch.stack([calls[layer].scores[b] for layer in selected])  # (L, H, P, P)
        visible = torch.stack([calls[layer].visible[b] for layer in selected])  # (L, P, P)
        out.append(AttentionScores(
            scores=scores[:, :, keep][:, :, :, keep].contiguous(),
            visible=visible[:, keep][:, :, keep].contiguous(),
            token_ids=input_ids[b, keep.to(input_ids.device)].to(keep.device),
            layers=selected,
            gauge=path,
        ))
    return out


def iter_captures(model: nn.Module, trajectories: Sequence[Trajectory],
                  batch_size: int) -> Iterator[AttentionScores]:
    """Every trajectory's attention scores (or log-probabilities) at every block, one sequence at a time, on the host.

    Batched, right-padded forwards, run lazily: a batch is captured only once the previous one has been consumed,
    so ``analysis.thermo.analyse_thermo`` reading this generator keeps one batch's (L, H, T, T) scores alive at a
    time.
    """
    device = next(model.parameters()).device
    for start in range(0, len(trajectories), batch_size):
        tokens = [t.token_ids[:t.n_positions] for t in trajectories[start:start + batch_size]]
        input_ids = torch.zeros(len(tokens), max(map(len, tokens)), dtype=torch.long)  # (B, P), padding masked
        mask = torch.zeros_like(input_ids)
        for b, ids in enumerate(tokens):
            input_ids[b, :len(ids)], mask[b, :len(ids)] = ids, 1
        yield from capture_attention(model, input_ids.to(device), mask.to(device), device="cpu")
