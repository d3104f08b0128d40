"""``OwnLM``: what the toolkit needs of one of its own language models (the SPLM, the matched GPT).

The depth trajectories (``trajectories.own``) and the causal probe (``probe_model``) are written against this
interface, not against a concrete class, so a new architecture joins them by implementing these members; the
runtime check turns a missing one into a clear error instead of an AttributeError deep inside a run.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class OwnLMConfig(Protocol):
    vocab_size: int  # tokens in the vocabulary
    block_size: int  # longest context the model accepts


@runtime_checkable
class OwnLM(Protocol):
    """A causal LM over token ids whose hidden state h can be read at every depth step.

    ``forward(idx, targets)`` returns ``(logits (B, T, V), loss or None)``, as nanoGPT does.
    """

    config: OwnLMConfig

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> h_0, (B, T, d)."""
        ...

    def logits_from_embeddings(self, h0: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """h_0 (B, T, d) -> logits (B, T, V); differentiable in h_0 (the causal probe's Jacobian test)."""
        ...

    def depth_states(self, idx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(h_0 and h after each of the L steps or blocks: L+1 tensors (B, T, d), the read-out's input (B, T, d))."""
        ...

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        ...


def require_own_lm(model, what: str) -> OwnLM:
    """``model`` itself when it implements :class:`OwnLM`; else a TypeError naming the missing members."""
    if isinstance(model, OwnLM) and isinstance(model.config, OwnLMConfig):
        return model
    missing = [m for m in ("config", "embed", "logits_from_embeddings", "depth_states", "forward")
               if not hasattr(model, m)]
    if hasattr(model, "config") and not isinstance(model.config, OwnLMConfig):
        missing.append("config.vocab_size/config.block_size")
    raise TypeError(
        f"{what} needs one of the toolkit's own models (an OwnLM such as SPLM or GPT); got {type(model).__name__}, "
        f"which lacks {', '.join(missing)}. Fix: implement lagrangian_lens.models.own.protocols.OwnLM, or for a "
        "Hugging Face model use lagrangian_lens.extract / probe_causality with callables.")
