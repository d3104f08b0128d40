"""Sites (named places in the network), forward hooks that record them, and read-outs from them.

Site names:

* ``final``: the input of the unembedding (``model.get_output_embeddings()``), after the final norm; equal to
  ``hidden_states[-1]`` in transformers 5.x. Recorded by a pre-hook on the unembedding, so it works on any
  causal LM, with or without a row in the architecture table.
* ``embed``: the residual stream entering block 0 (embeddings, with positions or scaling included).
* ``block.<l>``: the raw residual stream after block l (0-based; negative counts from the end). The last
  block's entry is *before* the final norm, unlike ``hidden_states[-1]``.
* ``all``: ``embed`` then every block, the depth trajectory.

Only the depth sites (``embed``, ``block.<l>``, ``all``) and read-outs from them need the block list and final
norm, from the architecture table or its fallback (:func:`~lagrangian_lens.models.arch_for`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..compat import warn_if_untested
from ..errors import TrajectoryError
from ..models.pretrained.architectures import blocks, final_map, logit_softcap, unembedding

FINAL, EMBED, ALL = "final", "embed", "all"
BLOCK = "block"


@dataclass(frozen=True)
class Site:
    """A canonical site: ``final``, ``embed`` or ``block.<l>``.

    ``Site.parse(text)`` checks the syntax only (a negative block index stays negative), so a config can
    validate it before any model loads; ``Site.parse(text, n_blocks)`` or ``site.resolve(n_blocks)`` checks
    the range and turns ``block.-1`` into ``block.<n_blocks-1>``. ``str(site)`` is the canonical name that
    trajectories and results record.
    """

    kind: str  # 'final', 'embed' or 'block'
    index: int | None = None  # the block index for kind 'block' (negative until resolved), else None

    def __post_init__(self):
        if self.kind not in (FINAL, EMBED, BLOCK):
            raise TrajectoryError(f"site kind must be final, embed or block; got {self.kind!r}")
        if (self.kind == BLOCK) != (self.index is not None):
            raise TrajectoryError(f"site {self.kind!r} with index {self.index!r}: only a block site has an index")

    @classmethod
    def parse(cls, text: str | Site, n_blocks: int | None = None) -> Site:
        if isinstance(text, Site):
            site = text
        elif text in (FINAL, EMBED):
            site = cls(text)
        elif isinstance(text, str) and text.startswith(BLOCK + "."):
            try:
                site = cls(BLOCK, int(text.removeprefix(BLOCK + ".")))
            except ValueError:
                raise TrajectoryError(f"bad site {text!r}: the block index must be an integer, e.g. 'block.3' "
                                      "or 'block.-1'") from None
        else:
            raise TrajectoryError(f"unknown site {text!r}; use 'final', 'embed' or 'block.<l>' (l may be negative)")
        return site if n_blocks is None else site.resolve(n_blocks)

    def resolve(self, n_blocks: int) -> Site:
        """The same site with its block index checked against ``n_blocks`` and made non-negative."""
        if self.kind != BLOCK:
            return self
        if not -n_blocks <= self.index < n_blocks:
            raise TrajectoryError(f"site {self} out of range: the model has {n_blocks} blocks "
                                  f"(block.0..block.{n_blocks - 1}, or block.-1 for the last)")
        return Site(BLOCK, self.index % n_blocks)

    @property
    def is_depth(self) -> bool:
        """True for sites on the raw residual stream (embed, block.<l>); final comes after the final norm."""
        return self.kind != FINAL

    @property
    def block_index(self) -> int | None:
        return self.index

    def __str__(self) -> str:
        return f"{BLOCK}.{self.index}" if self.kind == BLOCK else self.kind


def check_sites(sites: str | Sequence[str]) -> None:
    """Syntax check of a site list (``all`` included) without a model; raises TrajectoryError."""
    for site in ([s for s in sites.split(",") if s] if isinstance(sites, str) else sites):
        if site != ALL:
            Site.parse(site)


def expand_sites(model: nn.Module, sites: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical site names: ``all`` expanded, negative block indices resolved, range checked."""
    if isinstance(sites, (str, Site)):
        sites = [s for s in str(sites).split(",") if s]
    needs_blocks = any(str(s) != FINAL for s in sites)
    n_blocks = len(blocks(model)) if needs_blocks else 0
    if any(str(s) == FINAL for s in sites):
        head = unembedding(model)  # fail here, naming the fix, rather than inside the first forward
        width, hidden = getattr(head, "in_features", None), getattr(model.config, "hidden_size", None)
        if needs_blocks and None not in (width, hidden) and width != hidden:
            # A trajectory stacks its sites into one (S, T, d) tensor, so all must share one width.
            raise TrajectoryError(
                f"sites {', '.join(map(str, sites))}: 'final' has width {width} (the unembedding's input, after "
                f"{type(model).__name__}'s projection) but depth sites have hidden_size {hidden}, and one "
                "trajectory holds one width. Fix: extract 'final' and the depth sites in separate calls."
            )
    out: list[str] = []
    for site in sites:
        if str(site) == ALL:
            out += [EMBED, *(f"block.{l}" for l in range(n_blocks))]
        else:
            out.append(str(Site.parse(site, n_blocks if needs_blocks else None)))
    if not out:
        raise TrajectoryError("no sites given; use e.g. 'final' or 'all'")
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
    warn_if_untested()
    recorder = SiteRecorder(sites)
    handles = []

    def saver(site: str) -> Callable:
        def hook(module, args, output):
            recorder.records[site].append(_first(output).detach())
        hook.lagrangian_lens = True
        return hook

    def input_saver(site: str, key: str) -> Callable:
        def hook(module, args, kwargs):
            recorder.records[site].append((args[0] if args else kwargs[key]).detach())
        hook.lagrangian_lens = True
        return hook

    # Looked up before any hook goes on, so an unsupported model leaves nothing behind; only depth sites
    # need the block list.
    layers = blocks(model) if any(site != FINAL for site in sites) else None
    head = unembedding(model) if FINAL in sites else None
    try:
        for site in sites:
            if site == FINAL:
                # The unembedding's input is exactly what the logits are computed from, after the final norm
                # and anything else the model applies there (OPT's project_out), whatever the architecture.
                handles.append(head.register_forward_pre_hook(input_saver(site, "input"), with_kwargs=True))
            elif site == EMBED:
                handles.append(layers[0].register_forward_pre_hook(input_saver(site, "hidden_states"),
                                                                   with_kwargs=True))
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

    From ``final`` this is ``model.get_output_embeddings()`` (with Gemma's logit soft-cap), for any causal LM.
    From earlier sites it applies the final norm first (the logit lens), which needs the block layout: exact
    for the last block, an approximation for earlier ones. Models that rescale logits after the unembedding
    in their own forward (Granite's logits_scaling, Cohere's logit_scale) are not reproduced.

    From ``final``, with a bias-free head and no soft-cap, the read-out is exactly ``h @ W.T``: the returned
    function then carries ``linear_weight = W`` (V, d), so callers (steering's closed-form gradient) can use it.
    """
    head, cap = unembedding(model), logit_softcap(model)
    to_head = None if str(site) == FINAL else final_map(model)

    def logits(h: torch.Tensor) -> torch.Tensor:
        z = head(h if to_head is None else to_head(h))
        return cap * torch.tanh(z / cap) if cap else z

    # A plain nn.Linear only: a quantised head's packed weight is not the (V, d) matrix of its logits.
    linear = (to_head is None and not cap and isinstance(head, nn.Linear) and head.bias is None
              and tuple(head.weight.shape) == (head.out_features, head.in_features))
    logits.linear_weight = head.weight if linear else None
    return logits
