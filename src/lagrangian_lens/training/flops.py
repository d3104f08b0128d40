"""Training FLOPs per token, counted: one full training step's forward and backward on the real model and batch.

The count runs the model under ``torch.utils.flop_counter.FlopCounterMode``, so whatever autograd executes is in
it, not a formula's idea of it: the SPLM's force by autograd (``create_graph``) inside the forward, and the
double backward through that force in the training backward. Conventions (torch's counter): matrix products
(mm, bmm, addmm, baddbmm), convolutions and scaled-dot-product attention are counted at 2 FLOPs per
multiply-add; attention is counted dense (a causal mask is not halved); elementwise ops, reductions, softmax,
norms and FFTs (the ξ pools' causal convolutions) are not counted. The optimiser step is excluded: AdamW costs
about ten elementwise FLOPs per parameter once per step, not per token.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's table covers the GPU attention kernels; the CPU's flash kernel is added here, or a CPU count would
# leave out the attention's two matrix products (and their backward) altogether.
CPU_ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def count_training_flops(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> int:
    """FLOPs of ``loss = model(idx, targets)[1]`` and ``loss.backward()`` for the batch ``idx``, ``targets``
    (B, T). The model's gradients are left as they were (the counted backward's are dropped)."""
    kept = {p: p.grad for p in model.parameters()}
    was_training = model.training
    model.train()
    try:
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
            _, loss = model(idx, targets)
            loss.backward()
    finally:
        model.train(was_training)
        for p, grad in kept.items():
            p.grad = grad
    return int(counter.get_total_flops())


def training_flops_per_token(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> float:
    """Counted training FLOPs (forward + backward, no optimiser) per token of the batch ``idx`` (B, T)."""
    return count_training_flops(model, idx, targets) / idx.numel()
