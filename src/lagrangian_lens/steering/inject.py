"""Editing a site's state inside a forward, and read-outs that carry a replaced state through the rest of the model.

``edit_site`` is the one mechanism every steering method uses to put a state back into the network: a hook on the
site (``embed``: block 0's input; ``block.<l>``: block l's output; ``final``: the unembedding's input) that maps
the (B, T, d) state through ``edit``. Its hooks run before any other hook on the same module, so recorders see
the edited state, exactly what the model computed its logits from.

``position_readout`` (and its teacher-forced form ``site_readout``) gives the natural state h0 at a site for
the last position of a forward, and ``readout(h)``: the logits of that position when h replaces the state there,
through the remaining blocks, the final norm and the head. It runs the earlier positions once into a KV cache;
each call then runs one token on that cache and restores it, so calls are independent and differentiable in h.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ..errors import TrajectoryError
from ..models.pretrained.architectures import blocks, unembedding
from ..trajectories.sites import EMBED, FINAL, Site, readout, record_sites

Edit = Callable[[torch.Tensor], torch.Tensor]  # (B, T, d) state -> (B, T, d) state
Readout = Callable[[torch.Tensor], torch.Tensor]  # (N, d) states -> (N, V) logits

# Cache layers whose ``update`` rebinds new tensors (torch.cat, slicing) and never writes in place: restoring
# their attributes restores the cache exactly, at no cost. ``DynamicCache.crop`` is no substitute: a
# sliding-window layer past its window (gemma3) refuses to crop unless it was recording its past.
_REBINDING_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


def resolve_site(model: nn.Module, site: str | Site) -> Site:
    """``site`` parsed and checked against the model's blocks (negative block indices made non-negative).

    Raises TrajectoryError listing the valid sites when the model has no such site.
    """
    site = Site.parse(site)
    return site.resolve(len(blocks(model))) if site.is_depth else site


def replace_last(h: torch.Tensor) -> Edit:
    """An edit that puts ``h`` (B, d) in place of the state at the last position."""
    def edit(state: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        return torch.cat([state[:, :-1], h[:, None].to(state.dtype)], dim=1)
    return edit


def add_to_last(delta: torch.Tensor) -> Edit:
    """An edit that adds ``delta`` (B, d) to the state at the last position (a zero row leaves it bit-exact)."""
    def edit(state: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        return torch.cat([state[:, :-1], (state[:, -1] + delta.to(state.dtype))[:, None]], dim=1)
    return edit


@contextlib.contextmanager
def edit_site(model: nn.Module, site: str | Site, edit: Edit) -> Iterator[Site]:
    """For every forward inside, replace the (B, T, d) state at ``site`` with ``edit(state)``; yields the site.

    The hook is removed on exit, also when the body raises.
    """
    site = resolve_site(model, site)
    if site.kind == FINAL:
        module, key, pre = unembedding(model), "input", True
    elif site.kind == EMBED:
        module, key, pre = blocks(model)[0], "hidden_states", True
    else:
        module, key, pre = blocks(model)[site.index], None, False

    def pre_hook(module, args, kwargs):
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, key: edit(kwargs[key])}

    def post_hook(module, args, output):
        if isinstance(output, (tuple, list)):  # older blocks return (hidden, attention weights, ...)
            return type(output)((edit(output[0]), *output[1:]))
        return edit(output)

    hook = pre_hook if pre else post_hook
    hook.lagrangian_lens = True
    # prepend: the edit runs before any recorder on the same module, so recorded states are the edited ones.
    handle = (module.register_forward_pre_hook(hook, with_kwargs=True, prepend=True) if pre
              else module.register_forward_hook(hook, prepend=True))
    try:
        yield site
    finally:
        handle.remove()


@contextlib.contextmanager
def preserved(cache):
    """Yields the cache to pass to forwards that must leave ``cache`` as it was (None stays None).

    A cache of rebinding layers is used as is and its layers' attributes are put back on exit; any other cache
    is deep-copied, so the original never sees the extra positions.
    """
    layers = getattr(cache, "layers", None)
    rebinding = (layers is not None and not getattr(cache, "offloading", False)
                 and all(type(layer) in _REBINDING_LAYERS for layer in layers))
    if cache is None or not rebinding:
        yield None if cache is None else copy.deepcopy(cache)
        return
    layers = list(layers)
    saved = [dict(layer.__dict__) for layer in layers]
    try:
        yield cache
    finally:
        cache.layers[:] = layers
        for layer, state in zip(layers, saved):
            layer.__dict__.clear()
            layer.__dict__.update(state)


def position_readout(model: nn.Module, site: str | Site, input_ids: torch.Tensor, *,
                     attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                     cache=None) -> tuple[torch.Tensor, Readout]:
    """The natural state at ``site`` of the last column of a forward, and the read-out through the rest of the model.

    ``input_ids`` (N, T) are the tokens of one forward step whose earlier positions, if any, are in ``cache``;
    ``attention_mask`` (N, past + T) and ``position_ids`` (N, T) as the model takes them (None: no padding).
    Returns ``h0`` (N, d) and ``readout``: h (N, d) -> the (N, V) logits of the last column with h at ``site``
    there. ``cache`` is never changed. At ``final`` the read-out is the model's head (linear, no forward);
    elsewhere each call runs one token, differentiably in h.
    """
    site = resolve_site(model, site)
    if input_ids.ndim != 2 or input_ids.shape[1] < 1:
        raise TrajectoryError(f"input_ids must be (N, T) with T >= 1 tokens; got shape {tuple(input_ids.shape)}")
    with torch.no_grad():
        if site.kind != FINAL and input_ids.shape[1] > 1:
            # The earlier columns go into a cache of their own once, so that every read-out runs one token.
            out = model(input_ids=input_ids[:, :-1], past_key_values=copy.deepcopy(cache), use_cache=True,
                        attention_mask=None if attention_mask is None else attention_mask[:, :-1],
                        position_ids=None if position_ids is None else position_ids[:, :-1])
            cache, input_ids = out.past_key_values, input_ids[:, -1:]
            position_ids = None if position_ids is None else position_ids[:, -1:]
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        with preserved(cache) as past, record_sites(model, (str(site),)) as rec:
            model(**inputs, past_key_values=past, use_cache=past is not None)
        h0 = rec.pop()[str(site)][:, -1]  # (N, d)
    if site.kind == FINAL:
        return h0, readout(model, FINAL)

    def logits(h: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, V)
        with preserved(cache) as past, edit_site(model, site, replace_last(h)):
            return model(**inputs, past_key_values=past, use_cache=past is not None).logits[:, -1]

    return h0, logits


def site_readout(model: nn.Module, input_ids: torch.Tensor, site: str | Site) -> tuple[torch.Tensor, Readout]:
    """Teacher-forced steering of the last position: ``input_ids`` (N, t+1), unpadded.

    Returns ``h0`` (N, d), the natural state at ``site`` of position t, and ``readout``: h (N, d) -> the (N, V)
    logits of position t with h at ``site``, through the remaining blocks, final norm and head.
    """
    return position_readout(model, site, input_ids)
