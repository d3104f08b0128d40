"""Small neural-network pieces shared by the models and the mechanics, beneath both in the layering.

``silu_mlp`` and ``silu_mlp_input_grad`` are the scalar SiLU MLP used as a learned potential (the SPLM's V_θ and
the shared-potential fit's V_ψ): z -> Linear -> SiLU -> ... -> Linear(·, 1, no bias), and its exact gradient with
respect to the input, written out by the chain rule. Written out, the gradient is made of ordinary differentiable
ops, so training through it needs no double backward (autograd's ``create_graph=True``), which is both slower and
heavier on memory.

They act on the caller's own ``nn.Linear`` layers rather than owning them, so each potential keeps its parameter
names (``hidden.0.weight``, ``out.weight``) and old checkpoints still load.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def silu_mlp(hidden_layers: Sequence[nn.Linear], out: nn.Linear, z: torch.Tensor) -> torch.Tensor:
    """V(z): (..., d_in) -> (...,), one scalar per row."""
    for layer in hidden_layers:
        z = F.silu(layer(z))  # (..., hidden)
    return out(z).squeeze(-1)  # (...,)


def silu_mlp_input_grad(hidden_layers: Sequence[nn.Linear], out_weight: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """∇_z V(z) of :func:`silu_mlp`, (..., d_in), in closed form.

    ``out_weight`` is the (1, hidden) weight of the last, bias-free layer. With a_k the pre-activations,
    dV/dz = W_1ᵀ(σ'(a_1) ⊙ W_2ᵀ(... σ'(a_K) ⊙ w_out)), where silu'(a) = s·(1 + a·(1 − s)), s = sigmoid(a).
    """
    if out_weight.ndim != 2 or out_weight.shape[0] != 1:
        raise ValueError(f"out_weight must be the (1, hidden) weight of a scalar output layer; got shape "
                         f"{tuple(out_weight.shape)}. Fix: pass out.weight of nn.Linear(hidden, 1, bias=False)")
    pre = []  # the pre-activations a_k, kept for the backward sweep
    for layer in hidden_layers:
        pre.append(layer(z))  # (..., hidden)
        z = F.silu(pre[-1])
    g = out_weight.expand(*z.shape[:-1], -1)  # dV/dz of the last hidden layer, (..., hidden)
    for layer, a in zip(reversed(hidden_layers), reversed(pre)):
        s = torch.sigmoid(a)
        g = (g * s * (1 + a * (1 - s))) @ layer.weight  # through silu' then the linear map, (..., width below)
    return g  # (..., d_in)
