"""Permutation nulls, the old Python loop against the vectorised Gram-matrix null, measured side by side.

Sizes as the geometry experiments meet them: the token axis (32 paths x 100 points x d = 576) and the depth
axis (~3000 paths, one per token, x 31 layers x d = 576), each for the STP null (mean ‖a∥‖, mean ‖a⊥‖) and the
sphere null (step angle, covariant acceleration, curvature, EL residual, path excess). Prints the time for
1000 permutations of each and the ratio old / new.

The old implementation lives here only, as the reference: each permutation shuffles the states and runs the
kinematics on them in d dimensions. It runs under the process's thread setting and single-threaded (the new
null always runs single-threaded, see ``stats.serial_on_cpu``); the ratio is taken against the faster of the
two. An old loop over 1000 permutations takes minutes on the token axis and hours on the depth axis, so it is
timed on ``--reference`` permutations (default 100 and 5) and scaled linearly to 1000 (every permutation
costs the same); the line says so.

Usage: python benchmarks/bench_nulls.py [--permutations 1000] [--reference 100,5] [--axes token,depth]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lagrangian_lens.analysis.sphere import null_statistic
from lagrangian_lens.analysis.stp import NULL_STATISTIC as STP_NULL
from lagrangian_lens.mechanics.kinematics import triplet_kinematics
from lagrangian_lens.mechanics.nulls import group_paths, permutation_test, permuted
from lagrangian_lens.mechanics.sphere import path_excess, sphere_kinematics

WINDOW = 8
SPHERE_NULL = null_statistic(WINDOW)


# --- the reference: the loop as it was before vectorising (mechanics/nulls.py, analysis/stp.py, sphere.py) ---

def old_permutation_test(statistics, paths, *, n_permutations, seed=0):
    real = statistics(paths)
    gen = torch.Generator().manual_seed(seed)
    draws = [statistics(permuted(paths, gen)) for _ in range(n_permutations)]
    out = {}
    for name, value in real.items():
        null = np.array([d[name] for d in draws], dtype=float)
        mean, std = (float(null.mean()), float(null.std(ddof=1))) if null.size > 1 else (float("nan"), 0.0)
        out[name] = ((value - mean) / std if std > 0 else 0.0, (1 + int((null <= value).sum())) / (null.size + 1))
    return out


def old_stp_means(groups):
    ks = [triplet_kinematics(g) for g in groups]
    valid = torch.cat([k["valid"].reshape(-1) for k in ks])
    par = torch.cat([k["a_parallel_norm"].reshape(-1) for k in ks])[valid].numpy()
    perp = torch.cat([k["a_perp_norm"].reshape(-1) for k in ks])[valid].numpy()
    return {"tangential": float(par.mean()), "normal": float(perp.mean())}


def old_sphere_means(groups):
    ks = [sphere_kinematics(g) for g in groups]
    pooled = {name: torch.cat([k[name].reshape(-1) for k in ks]).numpy()
              for name in ("step_angle", "covariant_acceleration", "geodesic_curvature", "el_residual")}
    pooled["path_excess"] = torch.cat([path_excess(g, min(WINDOW, g.shape[1] - 1)).reshape(-1) for g in groups]).numpy()
    return {s: float(np.mean(v)) for s, v in pooled.items()}


# --- the benchmark ---

def paths(n: int, length: int, d: int, seed: int = 0) -> list[torch.Tensor]:
    """Smooth-ish random walks with a drift, float32 like recorded states."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(n, length, d, generator=g) + 2.0 * torch.randn(n, 1, d, generator=g)
    return list((steps.cumsum(1) + 20 * torch.randn(n, 1, d, generator=g)).unbind(0))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def old_time(stat, groups, n: int, threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        old_permutation_test(stat, groups, n_permutations=1)  # warm-up
        return timed(lambda: old_permutation_test(stat, groups, n_permutations=n))
    finally:
        torch.set_num_threads(before)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--permutations", type=int, default=1000)
    p.add_argument("--reference", default="100,5", help="old-loop permutations timed per axis (token,depth)")
    p.add_argument("--axes", default="token,depth")
    p.add_argument("--d", type=int, default=576)
    args = p.parse_args(argv)
    sizes = {"token": (32, 100), "depth": (3000, 31)}
    reference = dict(zip(sizes, (int(x) for x in args.reference.split(","))))
    K = args.permutations
    print(f"permutation nulls, {K} permutations, d = {args.d} | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for axis in args.axes.split(","):
        n, length = sizes[axis]
        groups = group_paths(paths(n, length, args.d))
        for label, old_stat, new_stat in (("STP", old_stp_means, STP_NULL), ("sphere", old_sphere_means, SPHERE_NULL)):
            permutation_test(new_stat, groups, n_permutations=2)  # warm-up
            new = timed(lambda: permutation_test(new_stat, groups, n_permutations=K))
            k_old = min(reference[axis], K)
            olds = {threads: old_time(old_stat, groups, k_old, threads) * K / k_old
                    for threads in dict.fromkeys((torch.get_num_threads(), 1))}
            best_threads, old = min(olds.items(), key=lambda item: item[1])
            scaled = "" if k_old == K else f", timed on {k_old} and scaled x{K / k_old:g}"
            old_text = ", ".join(f"{t} thread(s) {v:.2f} s" for t, v in olds.items())
            print(f"{axis:5s} {label:6s} {n} x {length} x {args.d}: old loop {old_text}{scaled}; "
                  f"vectorised {new:.2f} s; ratio old/new {old / new:.1f}x (old at {best_threads} thread(s))")
    check(args.d)


def check(d: int) -> None:
    """The two nulls agree in distribution on one small case (their shuffles differ, so their z agree only
    up to the permutation noise)."""
    groups = group_paths(paths(16, 40, d, seed=1))
    for label, old_stat, new_stat in (("STP", old_stp_means, STP_NULL), ("sphere", old_sphere_means, SPHERE_NULL)):
        old = old_permutation_test(old_stat, groups, n_permutations=300)
        new = permutation_test(new_stat, groups, n_permutations=300)
        z = ", ".join(f"{name} {old[name][0]:.1f}/{new[name].z:.1f}" for name in new)
        print(f"check {label}: z old/new: {z}")


if __name__ == "__main__":
    main()
