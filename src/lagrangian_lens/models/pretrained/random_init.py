"""Random-weight twins: the same architecture, with weights drawn by a named, seeded rule.

* ``hf`` (default): the library's own ``_init_weights`` (normal with std = ``initializer_range``), as
  ``from_config`` does it.
* ``torch``: every module's ``reset_parameters`` (PyTorch's defaults, e.g. Kaiming-uniform for Linear).
* ``shuffled``: every pretrained tensor's entries permuted, keeping each tensor's value distribution.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError

INIT_SCHEMES = ("hf", "torch", "shuffled")


def build_random(config, *, init: str, seed: int, dtype: torch.dtype, pretrained: nn.Module | None = None) -> nn.Module:
    """A randomly initialised ``*ForCausalLM`` for ``config``; ``shuffled`` needs the ``pretrained`` model."""
    from transformers import AutoModelForCausalLM

    if init not in INIT_SCHEMES:
        raise ConfigError("init", f"unknown init {init!r}; choose one of {INIT_SCHEMES}")
    if init == "shuffled":
        if pretrained is None:
            raise ValueError("init='shuffled' permutes pretrained weights, so it needs the pretrained model")
        return shuffle_weights(pretrained, seed=seed)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if init == "torch":
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model.eval()


@torch.no_grad()
def shuffle_weights(model: nn.Module, *, seed: int) -> nn.Module:
    """Permute the entries of every parameter in place (tied tensors are permuted once)."""
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    for param in model.parameters():  # parameters() yields a tied tensor once
        if id(param) in seen:
            continue
        seen.add(id(param))
        flat = param.data.reshape(-1)
        perm = torch.randperm(flat.numel(), generator=gen).to(flat.device)
        param.data.copy_(flat[perm].reshape(param.shape))
    return model.eval()
