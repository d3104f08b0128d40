"""Speed of the grokking experiment's full-batch training on this machine, per modulus p.

Prints epochs/s (one AdamW step on the whole training split, forward and backward, float64 loss) of the default
model (d = 128, 4 heads, MLP 512, one layer) at the train fraction given, for p = 19, 53 and 113, and the cost of
one logged row (train and test evaluation plus the attention-thermodynamics probe on 512 pairs). Timing claims
about the experiment belong here, not in the tests.

Measured when written, on the shared two-core development CPU with another job holding about one core:

* one thread: 212, 40 and 9.0 epochs/s at p = 19, 53 and 113 (fraction 0.3); two threads at p = 113: 1.1 epochs/s
  (threads beyond the free cores wait on each other, hence the experiment's ``threads = 1``);
* p = 113, fraction 0.3, seed 0, the default model and optimiser, one thread: test accuracy reached 0.5 at epoch
  6900 and 0.95 at epoch 7600, after 1838 s of optimiser steps (about 31 minutes of wall time with logging every
  100 epochs);
* the ``grok`` experiment's defaults (p = 19 and 31, seeds 0 and 1, both controls, 4000 epochs): 12 minutes of
  wall time, beside the p = 113 run and another job.

Usage: python benchmarks/bench_grok.py [--moduli 19 53 113] [--fraction 0.3] [--steps 30] [--threads 1] [--device cpu]
"""
from __future__ import annotations

import argparse

import torch
from timing import timed

from lagrangian_lens.experiments.grok import cpu_threads, thermo_probe
from lagrangian_lens.models.own.grok import GrokTransformer
from lagrangian_lens.training.config import resolve_device
from lagrangian_lens.training.grok import GrokTrainConfig, answer_loss, make_optimizer, measure


def bench(p: int, fraction: float, steps: int, device: torch.device) -> tuple[float, float]:
    """(epochs/s, seconds per logged row) at modulus ``p``."""
    cfg = GrokTrainConfig(p=p, fraction=fraction)
    data = cfg.data()
    torch.manual_seed(0)
    model = GrokTransformer(cfg.model_config()).to(device)
    opt = make_optimizer(model, cfg)
    x, y = data.train_x.to(device), data.train_y.to(device)
    probe = thermo_probe(data.inputs[data.probe_indices(512, 0)].to(device))

    def step():
        loss, _ = answer_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    per_epoch = timed(step, device, steps)
    return 1 / per_epoch, timed(lambda: measure(model, data, device, probe), device, 3, warmup=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moduli", type=int, nargs="+", default=[19, 53, 113])
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    with cpu_threads(args.threads):
        print(f"device {device}, {torch.get_num_threads()} CPU thread(s), train fraction {args.fraction}")
        print(f"{'p':>5} {'train pairs':>12} {'epochs/s':>10} {'ms/epoch':>10} {'s per logged row':>17}")
        for p in args.moduli:
            rate, row = bench(p, args.fraction, args.steps, device)
            print(f"{p:>5} {round(args.fraction * p * p):>12} {rate:>10.1f} {1000 / rate:>10.1f} {row:>17.3f}")


if __name__ == "__main__":
    main()
