"""Depth trajectories of the toolkit's own models (SPLM, GPT baseline), as ``Trajectory`` objects, so every
mechanics analysis runs on them unchanged.

Sites: ``embed`` (h_0), ``block.<l>`` (the state after integration step / block l+1 of L), and ``final`` (what
the read-out sees: h_L for the SPLM, ln_f(h_L) for the GPT).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import TrajectoryError
from ..models.own.protocols import OwnLM, require_own_lm
from .tokens import token_stats
from .trajectory import Trajectory


@torch.no_grad()
def own_model_trajectories(model: OwnLM, sequences: Sequence[Sequence[int]], *,
                           metadata: dict | None = None) -> list[Trajectory]:
    """One teacher-forced depth trajectory per token sequence (each at least 2 tokens, at most block_size)."""
    require_own_lm(model, "own_model_trajectories")
    device = next(model.parameters()).device
    out = []
    for seq in sequences:
        idx = torch.tensor([list(seq)], device=device)
        if idx.shape[1] < 2:
            raise TrajectoryError("a sequence needs at least 2 tokens to have a next token")
        states, final = model.depth_states(idx)  # L+1 states and the read-out input, each (1, n, d)
        logits = model(idx)[0]  # (1, n, V)
        T = idx.shape[1] - 1
        logp, maxlogp, ent = token_stats(logits[:, :-1], idx[:, 1:])
        sites = ("embed", *(f"block.{l}" for l in range(len(states) - 1)), "final")
        out.append(Trajectory(
            token_ids=idx[0].cpu(), states=torch.stack([s[0, :T] for s in (*states, final)]).float().cpu(),
            logprobs=logp[0].cpu(), max_logprobs=maxlogp[0].cpu(), entropy=ent[0].cpu(), sites=sites, n_context=1,
            mode="teacher-forced", metadata={"model": type(model).__name__, **(metadata or {})},
        ))
    return out
