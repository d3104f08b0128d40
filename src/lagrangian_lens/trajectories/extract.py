"""Teacher-forced extraction: one batched forward pass per batch of texts, right-padded.

Right padding leaves every real position's attention and position ids exactly as in an unbatched pass,
which the tests check to float tolerance.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..errors import TrajectoryError
from .sites import expand_sites, record_sites
from .tokens import token_stats, tokenize
from .trajectory import Trajectory


@torch.no_grad()
def extract(
    model,
    tokenizer,
    texts: Sequence[str] | Sequence[Sequence[int]],
    *,
    sites: str | Sequence[str] = "final",
    max_tokens: int | None = None,
    n_context: int = 1,
    batch_size: int = 8,
    keep_entropy: bool = True,
    progress: bool = False,
    metadata: dict | None = None,
) -> list[Trajectory]:
    """Teacher-forced trajectories of ``texts`` (strings, or token-id lists used as given).

    Each text gives one :class:`Trajectory` of ``len(tokens) - 1`` positions; its first ``n_context`` tokens
    are marked as context (clipped to leave at least one continuation token).
    """
    sites = expand_sites(model, sites)
    if texts and not isinstance(texts[0], str):
        ids = [list(map(int, x))[:max_tokens] for x in texts]
    else:
        ids = tokenize(tokenizer, list(texts), max_tokens=max_tokens, model=model)
    short = [i for i, x in enumerate(ids) if len(x) < 2]
    if short:
        raise TrajectoryError(f"text(s) at index {short[:10]} have fewer than 2 tokens: no position has a next token")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    out: list[Trajectory] = []
    for start in tqdm(range(0, len(ids), batch_size), desc="teacher-forced", disable=not progress, leave=False):
        batch = ids[start:start + batch_size]
        width = max(map(len, batch))
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, x in enumerate(batch):
            input_ids[b, :len(x)] = torch.tensor(x)
            mask[b, :len(x)] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        with record_sites(model, sites) as rec:
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits  # (B, L, V)
        states = rec.pop()
        targets = input_ids[:, 1:]
        logp, maxlogp, ent = token_stats(logits[:, :-1], targets)
        for b, x in enumerate(batch):
            T = len(x) - 1
            out.append(Trajectory(
                token_ids=input_ids[b, :T + 1].cpu(),
                states=torch.stack([states[s][b, :T] for s in sites]).cpu(),
                logprobs=logp[b, :T].cpu(), max_logprobs=maxlogp[b, :T].cpu(),
                entropy=ent[b, :T].cpu() if keep_entropy else None,
                sites=sites, n_context=min(max(n_context, 1), T), mode="teacher-forced",
                metadata=dict(metadata or {}),
            ))
    return out
