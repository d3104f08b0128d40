"""Timing shared by the benchmark scripts: seconds per call after a warm-up, with the device synchronised.

The scripts run as ``python benchmarks/bench_*.py``, which puts this folder on the import path.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers it (a no-op on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str | torch.device, steps: int, warmup: int = 3) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls, after ``warmup`` calls (allocator, kernels)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps
