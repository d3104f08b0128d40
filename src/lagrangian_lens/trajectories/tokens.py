"""Shared pieces of extraction and generation: tokenising prompts, and token statistics from raw logits."""
from __future__ import annotations

import warnings

import torch

from ..errors import DataError


def context_limit(model) -> int | None:
    """The longest sequence the model's positions allow, or None when it does not say."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    return None


def tokenize(tokenizer, texts: list[str], *, max_tokens: int | None, reserve: int = 0, model=None) -> list[list[int]]:
    """Token ids per text, truncated to ``max_tokens`` and to the model context minus ``reserve`` new tokens.

    Raises on an empty list or an empty text; warns (once per call) when the context forces a truncation.
    """
    if not texts:
        raise DataError("no prompts given: the prompt list or file is empty. Fix: give at least one non-empty prompt.")
    empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
    if empty:
        raise DataError(f"prompt(s) at index {empty[:10]} are empty or whitespace; remove them or give text.")
    limit = context_limit(model) if model is not None else None
    if limit is not None and reserve >= limit:
        raise DataError(f"{reserve} new tokens do not fit in the model's context of {limit} positions")
    ids = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    if max_tokens is not None:
        ids = [x[:max_tokens] for x in ids]
    if limit is not None:
        room = limit - reserve
        too_long = [i for i, x in enumerate(ids) if len(x) > room]
        if too_long:
            warnings.warn(
                f"{len(too_long)} prompt(s) (first at index {too_long[0]}, {len(ids[too_long[0]])} tokens) exceed the "
                f"model context of {limit} positions less {reserve} new tokens; truncated to their first {room} tokens.",
                stacklevel=3,
            )
            ids = [x[:room] for x in ids]
    return ids


def token_stats(logits: torch.Tensor, targets: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, ...]:
    """From raw logits (B, T, V) and targets (B, T): log p(target), log p(argmax), entropy; each (B, T) float32.

    Works row block by row block on views of ``logits`` (no copy of the whole tensor), in float32, so a
    50k-250k vocabulary stays in cache-sized pieces: log p = z - logsumexp(z), H = logsumexp(z) - Σ p·z.
    """
    B, T, _ = logits.shape
    rows = rows or (64 if logits.device.type == "cpu" else T)  # a GPU takes whole sequences per kernel
    out = torch.empty(3, B, T, dtype=torch.float32, device=logits.device)
    for b in range(B):
        for s in range(0, T, rows):
            z = logits[b, s:s + rows].float()  # (r, V)
            top = z.max(dim=-1, keepdim=True).values  # one pass each: max, exp, sum, Σ e·z
            e = torch.exp(z - top)
            total = e.sum(-1)
            lse = top.squeeze(-1) + total.log()
            out[0, b, s:s + rows] = z.gather(-1, targets[b, s:s + rows, None]).squeeze(-1) - lse
            out[1, b, s:s + rows] = top.squeeze(-1) - lse
            out[2, b, s:s + rows] = lse - torch.linalg.vecdot(e, z) / total
    return out[0], out[1], out[2]


def left_pad(batch: list[list[int]], pad_id: int | None, device=None) -> tuple[torch.Tensor, ...]:
    """Token lists as one left-padded batch, so that every sequence ends in the last column.

    Returns ``input_ids`` (B, P), ``attention_mask`` (B, P) and ``position_ids`` (B, P), the positions following
    the mask so that padding never shifts a real position. ``pad_id`` None pads with 0 (masked anyway).
    """
    B, P = len(batch), max(map(len, batch))
    input_ids = torch.full((B, P), 0 if pad_id is None else pad_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for b, x in enumerate(batch):
        input_ids[b, P - len(x):] = torch.as_tensor(x)
        mask[b, P - len(x):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)
