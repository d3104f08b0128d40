"""Training throughput and counted FLOPs of the ladder's arms, measured side by side in one process.

Per arm (the SPLM-family ladder's arm table, every arm sized to one parameter budget as the ladder sizes them):
tokens/s of full training steps (forward, backward, AdamW), the counted training FLOPs per token
(``training.flops``: one step's forward and backward under FlopCounterMode, the optimiser excluded), the achieved
FLOP/s, and the MFU (achieved / the device's peak: --peak-tflops, or bf16 dense 989 TFLOP/s on an H100 or H200;
on a CPU only when --peak-tflops is given). Then each SPLM arm's ξ pool's share of its step (the pool's forward
and backward alone against the whole step), and the vanilla SPLM's tokens/s against the GPT's (goal >= 0.5).

Defaults are the ladder's cpu scale (d_model 32, V_θ 192 wide, 8 steps, 16 × 64 tokens, BPE vocabulary 1024).

Usage: python benchmarks/bench_training.py [--arms gpt,splm,splm-kema4,splm-s4d16,hybrid-1a] [--d-model 32]
           [--v-hidden 192] [--block 64] [--batch 16] [--vocab 1024] [--force-impl autograd] [--device auto]
           [--peak-tflops X] [--threads 1]
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
from timing import timed

from lagrangian_lens.experiments.ladder_arms import LadderConfig, size_arms
from lagrangian_lens.models.own.gpt import n_params
from lagrangian_lens.training.config import TrainConfig, build_model
from lagrangian_lens.training.flops import training_flops_per_token
from lagrangian_lens.training.loop import make_optimizer

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # bf16 dense tensor-core peaks (SXM), TFLOP/s
DEFAULT_ARMS = "gpt,splm,splm-kema4,splm-s4d16,hybrid-1a"


def step_seconds(model, cfg: TrainConfig, x: torch.Tensor, device: str, steps: int, bf16: bool) -> float:
    """Seconds per full training step (forward, backward, AdamW) on the batch ``x`` (B, T + 1)."""
    model.train()
    opt = make_optimizer(model, cfg)

    def step():
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, device, steps)


def pool_seconds(model, x: torch.Tensor, device: str, steps: int) -> float:
    """Seconds per forward + backward of the SPLM's ξ pool alone, on the embeddings of ``x`` (B, T + 1)."""
    h0 = model.embed(x[:, :-1]).detach().requires_grad_(True)  # (B, T, d)

    def pool():
        model.zero_grad(set_to_none=True)
        model.context_pool(h0).sum().backward()

    return timed(pool, device, steps)


def device_peak(device: str, given: float | None) -> float | None:
    """The peak FLOP/s that MFU divides by: the given one, else the table's for a known GPU, else None."""
    if given:
        return given * 1e12
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)
    return None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated ladder arms (default {DEFAULT_ARMS})")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--v-hidden", type=int, default=192, help="the vanilla SPLM's V_θ width: it sets the budget")
    p.add_argument("--n-steps", type=int, default=8)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=1024, help="1024 = the ladder's default bpe:1024")
    p.add_argument("--force-impl", default="autograd", choices=("autograd", "closed_form"))
    p.add_argument("--steps", type=int, default=0, help="timed steps (default: 10 on CPU, 50 on GPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default); on a shared CPU, "
                                                          "more threads than free cores only wait on each other")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    steps = args.steps or (50 if device.startswith("cuda") else 10)
    bf16 = device.startswith("cuda")
    cfg = LadderConfig(arms=args.arms.split(","), d_model=args.d_model, v_hidden=args.v_hidden,
                       n_steps=args.n_steps, block_size=args.block, batch_size=args.batch, device=device)
    plans = size_arms(cfg, args.vocab)
    peak = device_peak(device, args.peak_tflops)
    x = torch.randint(args.vocab, (args.batch, args.block + 1), generator=torch.Generator().manual_seed(0)).to(device)
    print(f"{device}{' bf16 autocast' if bf16 else ' fp32'} | d={args.d_model} L={args.n_steps} block={args.block} "
          f"batch={args.batch} vocab={args.vocab} force={args.force_impl} | threads {torch.get_num_threads()} | "
          f"budget {next(iter(plans.values())).budget:,} parameters")
    print(f"{'arm':18s} {'params':>9s} {'tokens/s':>10s} {'FLOPs/token':>12s} {'FLOP/s':>10s} {'MFU':>7s} "
          f"{'ξ pool share':>12s}")
    rates = {}
    for name, plan in plans.items():
        tc = dataclasses.replace(plan.config, force_impl=args.force_impl)
        torch.manual_seed(0)
        arch_config = (tc.splm_config if tc.arch == "splm" else tc.gpt_config)(args.vocab)
        model = build_model(tc.arch, dataclasses.asdict(arch_config)).to(device)
        flops = training_flops_per_token(model, x[:, :-1], x[:, 1:])
        seconds = step_seconds(model, tc, x, device, steps, bf16)
        rates[name] = args.batch * args.block / seconds
        achieved = rates[name] * flops
        share = f"{pool_seconds(model, x, device, steps) / seconds:12.1%}" if tc.arch == "splm" else f"{'-':>12s}"
        mfu = f"{achieved / peak:7.2%}" if peak else f"{'-':>7s}"
        print(f"{name:18s} {n_params(model):9,d} {rates[name]:10,.0f} {flops / 1e6:11.3f}M "
              f"{achieved / 1e9:9.2f}G {mfu} {share}")
    if "splm" in rates and "gpt" in rates:
        print(f"ratio splm / gpt tokens/s = {rates['splm'] / rates['gpt']:.2f} (goal >= 0.5)")


if __name__ == "__main__":
    main()
