"""Sites (named places in the network), forward hooks that record them, and read-outs from them.

Site names:

* ``final``: the input of the unembedding, after the final norm (``hidden_states[-1]`` in transformers 5.x).
* ``embed``: the residual stream entering block 0 (embeddings, with positions or scaling included).
* ``block.<l>``: the raw residual stream after block l (0-based; negative counts from the end). The last
  block's entry is *before* the final norm, unlike ``hidden_states[-1]``.
* ``all``: ``embed`` then every block, the depth trajectory.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from ..models.pretrained.architectures import blocks, final_norm, logit_softcap, unembedding

FINAL, EMBED, ALL = "final", "embed", "all"


def expand_sites(model: nn.Module, sites: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical site names: ``all`` expanded, negative block indices resolved, range checked."""
    if isinstance(sites, str):
        sites = [s for s in sites.split(",") if s]
    n_blocks = len(blocks(model))
    out: list[str] = []
    for site in sites:
        if site == ALL:
            out += [EMBED, *(f"block.{l}" for l in range(n_blocks))]
        elif site in (FINAL, EMBED):
            out.append(site)
        elif site.startswith("block."):
            try:
                layer = int(site.removeprefix("block."))
            except ValueError:
                raise ValueError(f"bad site {site!r}: the block index must be an integer, e.g. 'block.3'") from None
            if not -n_blocks <= layer < n_blocks:
                raise ValueError(f"site {site!r} out of range: the model has {n_blocks} blocks (block.0..block.{n_blocks - 1})")
            out.append(f"block.{layer % n_blocks}")
        else:
            raise ValueError(f"unknown site {site!r}; use 'final', 'embed', 'block.<l>' or 'all'")
    if not out:
        raise ValueError("no sites given; use e.g. 'final' or 'all'")
    return tuple(dict.fromkeys(out))


class SiteRecorder:
    """What the hooks recorded: per site, one (B, T_call, d) tensor per forward call."""

    def __init__(self, sites: tuple[str, ...]):
        self.sites = sites
        self.records: dict[str, list[torch.Tensor]] = {s: [] for s in sites}

    def pop(self) -> dict[str, torch.Tensor]:
        """The last call's (B, T_call, d) states per site; clears the record."""
        out = {s: self.records[s][-1] for s in self.sites}
        for rec in self.records.values():
            rec.clear()
        return out


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@contextlib.contextmanager
def record_sites(model: nn.Module, sites: tuple[str, ...]) -> Iterator[SiteRecorder]:
    """Hooks that record ``sites`` on every forward; removed on exit, also when the body raises."""
    recorder = SiteRecorder(sites)
    handles = []

    def saver(site: str) -> Callable:
        def hook(module, args, output):
            recorder.records[site].append(_first(output).detach())
        hook.lagrangian_lens = True
        return hook

    def embed_saver(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        recorder.records[EMBED].append(hidden.detach())
    embed_saver.lagrangian_lens = True

    layers = blocks(model)
    try:
        for site in sites:
            if site == FINAL:
                handles.append(final_norm(model).register_forward_hook(saver(site)))
            elif site == EMBED:
                handles.append(layers[0].register_forward_pre_hook(embed_saver, with_kwargs=True))
            else:
                handles.append(layers[int(site.removeprefix("block."))].register_forward_hook(saver(site)))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


def count_hooks(model: nn.Module) -> int:
    """The toolkit's forward (pre-)hooks left anywhere in ``model``: 0 after every toolkit call.

    Only hooks marked as ours count: transformers installs (and keeps) its own output-recording hooks.
    """
    return sum(
        getattr(fn, "lagrangian_lens", False)
        for m in model.modules()
        for fn in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
    )


def readout(model: nn.Module, site: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """h (..., d) -> logits (..., V) as the model computes them from that site.

    From ``final`` this is the unembedding (with Gemma's logit soft-cap). From earlier sites it applies the
    final norm first (the logit lens): exact for the last block, an approximation for earlier ones.
    """
    norm, head, cap = final_norm(model), unembedding(model), logit_softcap(model)

    def logits(h: torch.Tensor) -> torch.Tensor:
        z = head(h if site == FINAL else norm(h))
        return cap * torch.tanh(z / cap) if cap else z

    return logits
