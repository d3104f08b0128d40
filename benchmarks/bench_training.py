"""Training throughput of the SPLM against the matched GPT, measured side by side in one process.

Prints tokens/s of full training steps (forward, backward, AdamW) for the SPLM with its force from autograd
(create_graph), the SPLM with the closed-form force, and the GPT whose parameter count is closest, at the same
width, block and batch; and the SPLM/GPT ratios (goal: >= 0.5).

Usage: python benchmarks/bench_training.py [--d-model 128] [--n-steps 8] [--block 128] [--batch 32] [--device auto]
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from lagrangian_lens.models.own.gpt import GPT, n_params
from lagrangian_lens.models.own.splm import SPLM
from lagrangian_lens.training.config import TrainConfig
from lagrangian_lens.training.loop import make_optimizer


def tokens_per_s(model, cfg: TrainConfig, device: str, steps: int, bf16: bool) -> float:
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(model.config.vocab_size, (cfg.batch_size, cfg.block_size + 1), generator=gen).to(device)

    def step():
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: allocator, kernels
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * cfg.batch_size * cfg.block_size / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-steps", type=int, default=8)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=65, help="65 = Tiny Shakespeare characters")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default: 10 on CPU, 50 on GPU)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    steps = args.steps or (50 if device.startswith("cuda") else 10)
    bf16 = device.startswith("cuda")
    cfg = TrainConfig(d_model=args.d_model, n_steps=args.n_steps, block_size=args.block, batch_size=args.batch)
    torch.manual_seed(0)
    splm = SPLM(cfg.splm_config(args.vocab))
    closed = SPLM(dataclasses.replace(cfg.splm_config(args.vocab), force="closed_form"))
    closed.load_state_dict(splm.state_dict())
    gpt = GPT(cfg.gpt_config(args.vocab))
    print(f"{device}{' bf16 autocast' if bf16 else ' fp32'} | d={args.d_model} L={args.n_steps} block={args.block} "
          f"batch={args.batch} vocab={args.vocab} | threads {torch.get_num_threads()}")
    print(f"params: SPLM {n_params(splm):,} | matched GPT {n_params(gpt):,} ({gpt.config.n_layer} layers)")
    rates = {name: tokens_per_s(m, cfg, device, steps, bf16) for name, m in
             (("gpt", gpt), ("splm_autograd", splm), ("splm_closed_form", closed))}
    for name, rate in rates.items():
        print(f"  {name:17s} {rate:12,.0f} tokens/s")
    for name in ("splm_autograd", "splm_closed_form"):
        print(f"ratio {name} / gpt = {rates[name] / rates['gpt']:.2f} (goal >= 0.5)")
    # Matched parameters are not matched arithmetic: the SPLM reuses its potential at all L steps.
    flops = {"gpt": gpt_train_flops(gpt), "splm": splm_train_flops(splm)}
    print(f"training FLOPs/token (analytic): GPT {flops['gpt'] / 1e6:.1f}M, SPLM {flops['splm'] / 1e6:.1f}M "
          f"({flops['splm'] / flops['gpt']:.1f}x); FLOP/s ratio splm_autograd / gpt = "
          f"{rates['splm_autograd'] * flops['splm'] / (rates['gpt'] * flops['gpt']):.2f}")


def gpt_train_flops(gpt: GPT) -> float:
    """6 per non-embedding weight per token, plus attention scores and values (nanoGPT's estimate)."""
    c = gpt.config
    dense = n_params(gpt) - gpt.wte.weight.numel() - gpt.wpe.weight.numel()
    return 6 * dense + 6 * c.vocab_size * c.d_model + 12 * c.n_layer * c.d_model * c.block_size


def splm_train_flops(splm: SPLM) -> float:
    """Per step: the potential MLP forward (2 per weight) and its input-gradient (2 per weight); the training
    backward doubles that again (x3 in all); L steps; plus the tied read-out."""
    mlp = sum(p.numel() for p in splm.potential.parameters() if p.ndim == 2)
    c = splm.config
    return 3 * 4 * mlp * c.n_steps + 6 * c.vocab_size * c.d_model


if __name__ == "__main__":
    main()
