"""Speed of the shared-potential fit at a realistic size: 40 train sequences x 64 tokens x 12 layers x d = 576.

Prints the fit time, epochs, and samples/s (token-layer samples through one epoch of fitting), for the MLP
fit, the velocity-only and linear baselines, and the Jacobian-symmetry test, measured side by side.
"""
from __future__ import annotations

import argparse
import time

import torch

from lagrangian_lens.mechanics.depth_data import DepthData
from lagrangian_lens.mechanics.potential_fit import (
    LinearReferenceFit,
    SharedPotentialFit,
    VelocityOnlyFit,
)
from lagrangian_lens.mechanics.symmetry import JacobianSymmetryTest


def synthetic(n_seq: int, n_tok: int, n_layers: int, d: int) -> DepthData:
    """A damped particle in a random smooth potential, so the fit has something to find."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(d, 64, generator=g) / d**0.5
    x, v = torch.randn(n_seq, n_tok, d, generator=g), torch.zeros(n_seq, n_tok, d)
    states = [x]
    for _ in range(n_layers):
        force = -x - torch.tanh(x @ w) @ w.T
        v = (v + 0.3 * force) / 1.1
        x = x + 0.3 * v
        states.append(x)
    return DepthData(torch.stack(states, 1), torch.ones(n_seq, n_tok, dtype=torch.bool))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=40)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--max-epochs", type=int, default=300)
    args = p.parse_args(argv)
    data = synthetic(args.sequences, args.tokens, args.layers, args.d)
    n_samples = int(data.mask.sum()) * data.n_fit_layers
    print(f"{args.sequences} sequences x {args.tokens} tokens x {args.layers} layers x d={args.d}: "
          f"{n_samples:,} token-layer samples | threads {torch.get_num_threads()}")
    start = time.perf_counter()
    fit = SharedPotentialFit(hidden=args.width, max_epochs=args.max_epochs).fit(data)
    elapsed = time.perf_counter() - start
    epochs = len(fit.history_)
    print(f"shared-potential fit (width {args.width}): {elapsed:.1f} s, {epochs} epochs, "
          f"{n_samples * epochs * 0.8 / elapsed:,.0f} samples/s (train part, 80%)")
    for name, est in (("velocity-only", VelocityOnlyFit()), ("linear reference", LinearReferenceFit()),
                      ("symmetry test (k=16)", JacobianSymmetryTest(16))):
        start = time.perf_counter()
        est.fit(data)
        print(f"{name}: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
