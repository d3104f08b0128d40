"""Speed of the shared-potential fit, in two sections, each measured side by side in one process.

1. (default) At a realistic size, 40 train sequences x 64 tokens x 12 layers x d = 576: the fit time, epochs, and
   samples/s (token-layer samples through one epoch of fitting), for the MLP fit, the velocity-only and linear
   baselines, and the Jacobian-symmetry test.
2. ``--compare``: time to the same R² as the paper author's fit, on one synthetic conservative flow (d = 8 by
   default) split once into train and test sequences. Arms, run interleaved for ``--rounds`` rounds (the order
   rotates each round): ``author`` (the reference protocol, below), ``v0`` (this package's original fit, as the
   issue ran it: joint AdamW, batch 512, ReduceLROnPlateau, 300 epochs), ``new`` (the current defaults) and one
   arm per speed-up route, each the new default with one setting changed, so each route's share shows. The
   headline pair (author, new) runs every round; v0 and the routes run in the first ``--route-rounds`` rounds
   only (default 1; every fit is seeded, so their R² repeats exactly, only their time is measured fewer times),
   which keeps a default run under 8 minutes. ``bs512`` and ``polish`` are slow and run only when named.
   Printed per arm: median test R² (centred, the author's definition), the largest per-layer |ΔR²| against the
   author arm, the wall time, the time-to-R² (when the arm's own trace of median R² -- validation R² per epoch
   for our fits, test R² every ``--eval-every`` steps with the clock paused for the author arm -- first reaches
   0.99 x that arm's final test R²), and both as ratios to the author arm. Medians over rounds. Every arm runs
   on ``--threads`` torch threads (1 by default: on a shared two-core machine, two OpenMP threads on these small
   tensors stall whenever another process holds a core, which made one arm's timings vary up to fourfold).

The reference arm follows the protocol of ``notebooks/conservative_arch/shared_potential_fit.py`` in the public
repository github.com/dimitarpg13/semsimula-paper (commit 79c1677, function ``fit_shared_V``), re-implemented here
from its description, not copied: V_ψ an MLP d -> 256 -> 256 -> 1 with GELU, weights N(0, 0.02²) and zero biases;
α_l = β_l = 0 at the start; AdamW (lr 3e-3, weight decay 1e-4, betas (0.9, 0.95)) on ψ, α and β together; 4000
steps of 2048 token-layer samples drawn with replacement from the pooled training samples (no validation split,
the last step is kept); ∇V by autograd with a double backward; loss = pooled MSE + 1e-5·mean‖∇V‖²; gradient
norm clipped at 5. Its R² is per layer and centred on the layer's mean step, as ``r2_per_layer(centered=True)``.

The flow: a damped particle in a random smooth potential (``synthetic``) with velocity noise ``--noise`` (0.08 by
default), which caps the attainable R² near 0.996, where the issue's fits both ended. By default 96 sequences
x 64 tokens x 12 layers (~44k token-layer samples in our fit's training part: v0's 300 epochs are 1.6x the
author's 4000 x 2048 sample-gradients), so a default run stays under 8 minutes. ``--sequences 224`` gives ~100k
and the issue's 3.7x: the stricter test, since the author's protocol costs the same on any data size and ours
grows with it (``--sequences 224 --arms author,new`` takes ~6 minutes at two rounds).

Usage: python benchmarks/bench_potential.py [--sequences 40 --d 576 ...]
       python benchmarks/bench_potential.py --compare [--rounds 2] [--d 8] [--arms author,v0,new,...] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lagrangian_lens.mechanics.depth_data import DepthData
from lagrangian_lens.mechanics.potential_fit import (
    LinearReferenceFit,
    SharedPotentialFit,
    VelocityOnlyFit,
    r2_per_layer,
)
from lagrangian_lens.mechanics.symmetry import JacobianSymmetryTest

# Our arms: name -> (SharedPotentialFit settings, what the arm shows). Each route arm is the new default with one
# setting changed, so its row shows what that route is worth on its own.
OURS = {
    "v0": (dict(solver="joint", lr=3e-3, schedule="plateau", tol=0.0, batch_size=512, max_epochs=300, patience=30),
           "original fit: joint AdamW, batch 512, plateau, 300 epochs"),
    "new": ({}, "defaults: joint, batch 64, anneal on convergence"),
    "varpro": (dict(solver="varpro"), "new + variable projection of α, β"),
    "bs512": (dict(batch_size=512), "new with v0's batch of 512 tokens"),
    "bs2048-1cycle": (dict(batch_size=2048, lr=1e-2, schedule="onecycle", tol=0.0, max_epochs=60),
                      "larger batches + OneCycle over 60 epochs"),
    "cosine60": (dict(schedule="cosine", tol=0.0, max_epochs=60), "fixed cosine over 60 epochs, no stopping rule"),
    "polish": (dict(polish_steps=30), "new + 30 L-BFGS iterations"),
}
HEADLINE = {"author", "new"}  # run every round; the others only in the first --route-rounds rounds
DEFAULT_ARMS = "author,v0,new,varpro,bs2048-1cycle,cosine60"  # bs512 and polish are slow: ask for them by name


def synthetic(n_seq: int, n_tok: int, n_layers: int, d: int, noise: float = 0.0) -> DepthData:
    """A damped particle in a random smooth potential, so the fit has something to find; ``noise`` is the
    standard deviation of a Gaussian kick to the velocity at every layer (0: a deterministic flow)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(d, 64, generator=g) / d**0.5
    x, v = torch.randn(n_seq, n_tok, d, generator=g), torch.zeros(n_seq, n_tok, d)
    states = [x]
    for _ in range(n_layers):
        force = -x - torch.tanh(x @ w) @ w.T
        v = (v + 0.3 * force) / 1.1
        if noise:
            v = v + noise * torch.randn(n_seq, n_tok, d, generator=g)
        x = x + 0.3 * v
        states.append(x)
    return DepthData(torch.stack(states, 1), torch.ones(n_seq, n_tok, dtype=torch.bool))


@dataclass
class Arm:
    r2: np.ndarray  # (L,) test R², centred
    wall: float  # seconds
    trace: list[tuple[float, float]] = field(default_factory=list)  # (seconds, median R²)

    def time_to(self, fraction: float = 0.99) -> float:
        target = fraction * float(np.median(self.r2))
        return next((t for t, r in self.trace if r >= target), float("nan"))


def author_fit(train: DepthData, test: DepthData, *, steps: int = 4000, batch: int = 2048, hidden: int = 256,
               seed: int = 0, eval_every: int = 200) -> Arm:
    """The reference protocol (see the module docstring); the clock stops while the trace is evaluated."""
    torch.manual_seed(seed)
    s, st = train.samples(), test.samples()
    S, L, d = s["x"].shape
    x, v, dx = (s[k].reshape(-1, d) for k in ("x", "v", "dx"))  # pooled over tokens and layers, (S·L, d)
    layer = torch.arange(L).repeat(S)  # (S·L,) the layer of each pooled sample
    net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    alpha, beta = nn.Parameter(torch.zeros(L)), nn.Parameter(torch.zeros(L))
    params = [*net.parameters(), alpha, beta]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4, betas=(0.9, 0.95))
    rng = np.random.default_rng(seed)

    def grad_v(z: torch.Tensor, create_graph: bool) -> torch.Tensor:
        z = z.detach().requires_grad_(True)
        return torch.autograd.grad(net(z).sum(), z, create_graph=create_graph)[0]

    def test_r2() -> np.ndarray:
        with torch.enable_grad():
            g = grad_v(st["x"], False)  # (S', L, d)
        return r2_per_layer(st["dx"], (alpha[:, None] * st["v"] - beta[:, None] * g).detach(), centered=True)

    wall, trace, start = 0.0, [], time.perf_counter()
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(x), size=batch))
        g = grad_v(x[idx], True)  # (B, d), differentiable in ψ
        pred = alpha[layer[idx], None] * v[idx] - beta[layer[idx], None] * g
        loss = ((pred - dx[idx]) ** 2).mean() + 1e-5 * (g**2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            wall += time.perf_counter() - start
            trace.append((wall, float(np.median(test_r2()))))
            start = time.perf_counter()
    return Arm(test_r2(), wall, trace)


def our_fit(train: DepthData, test: DepthData, settings: dict) -> Arm:
    start = time.perf_counter()
    fit = SharedPotentialFit(**settings).fit(train)
    wall = time.perf_counter() - start
    return Arm(fit.score(test, centered=True), wall, fit.trace_)


def compare(args) -> None:
    torch.set_num_threads(args.threads)
    data = synthetic(args.sequences or 96, args.tokens, args.layers, args.d or 8, args.noise)
    train, test = data.split(0.2, seed=0)
    n_train = int(train.mask.sum()) * train.n_fit_layers
    print(f"conservative flow, d={args.d or 8}, noise {args.noise}: {train.n_sequences} train / {test.n_sequences} "
          f"test sequences x {args.tokens} tokens x {train.n_fit_layers} fit layers = {n_train:,} train samples "
          f"(our fits hold out 20% of the train sequences for validation) | threads {torch.get_num_threads()}")
    names = args.arms.split(",")
    unknown = set(names) - set(OURS) - {"author"}
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from author,{','.join(OURS)}")
    runs: dict[str, list[Arm]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate, so no arm always runs first
        for name in order:
            if name not in HEADLINE and r >= args.route_rounds:
                continue
            arm = (author_fit(train, test, steps=args.author_steps, eval_every=args.eval_every) if name == "author"
                   else our_fit(train, test, OURS[name][0]))
            runs[name].append(arm)
            print(f"  round {r + 1} {name:>14}: {arm.wall:7.1f} s  median R² {np.median(arm.r2):.5f}", flush=True)
    ref = runs.get("author")
    ref_wall = statistics.median(a.wall for a in ref) if ref else float("nan")
    ref_ttr = statistics.median(a.time_to() for a in ref) if ref else float("nan")
    print(f"\n{'arm':>14} | {'runs':>4} | {'median R²':>9} | {'max|ΔR²_l|':>10} | {'wall s':>7} | {'t→0.99R² s':>10} | "
          f"{'wall/author':>11} | {'t→R²/author':>11} | what")
    for name in names:
        arms = runs[name]
        wall, ttr = statistics.median(a.wall for a in arms), statistics.median(a.time_to() for a in arms)
        r2 = arms[-1].r2
        delta = float(np.abs(r2 - ref[-1].r2).max()) if ref else float("nan")
        what = "reference: the author's protocol" if name == "author" else OURS[name][1]
        print(f"{name:>14} | {len(arms):4d} | {np.median(r2):9.5f} | {delta:10.5f} | {wall:7.1f} | {ttr:10.1f} | "
              f"{wall / ref_wall:11.3f} | {ttr / ref_ttr:11.3f} | {what}")


def speed(args) -> None:
    d, sequences = args.d or 576, args.sequences or 40
    data = synthetic(sequences, args.tokens, args.layers, d)
    n_samples = int(data.mask.sum()) * data.n_fit_layers
    print(f"{sequences} sequences x {args.tokens} tokens x {args.layers} layers x d={d}: "
          f"{n_samples:,} token-layer samples | threads {torch.get_num_threads()}")
    start = time.perf_counter()
    fit = SharedPotentialFit(hidden=args.width, max_epochs=args.max_epochs).fit(data)
    elapsed = time.perf_counter() - start
    epochs = len(fit.history_)
    print(f"shared-potential fit (width {args.width}): {elapsed:.1f} s, {epochs} epochs ({fit.stop_reason_}), "
          f"{n_samples * epochs * 0.8 / elapsed:,.0f} samples/s (train part, 80%)")
    for name, est in (("velocity-only", VelocityOnlyFit()), ("linear reference", LinearReferenceFit()),
                      ("symmetry test (k=16)", JacobianSymmetryTest(16))):
        start = time.perf_counter()
        est.fit(data)
        print(f"{name}: {time.perf_counter() - start:.2f} s")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=None, help="default 40, or 96 with --compare")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d", type=int, default=None, help="default 576, or 8 with --compare")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--compare", action="store_true", help="time-to-R² against the author's protocol (section 2)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--arms", default=DEFAULT_ARMS,
                   help=f"comma-separated, run in this order; from author,{','.join(OURS)}")
    p.add_argument("--route-rounds", type=int, default=1, help="rounds that run the arms other than author and new")
    p.add_argument("--noise", type=float, default=0.08)
    p.add_argument("--author-steps", type=int, default=4000)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch threads for every arm of --compare")
    args = p.parse_args(argv)
    (compare if args.compare else speed)(args)


if __name__ == "__main__":
    main()
