"""Run-level statistics over many trajectories: a padded step table and bootstrap confidence intervals, in torch.

A table maps a quantity's name to a float64 tensor (B, n) — trajectories by steps — with NaN marking steps a
trajectory does not have (padding, zero velocity). NaN never leaves this module: every statistic skips it.
Statistics reduce the last two axes only, so one call evaluates a whole stack of bootstrap resamples
(n_boot, B, n) at once.

Asked for them (``keep_draws``), the bootstrap also hands back its replicates: each statistic's draws
(n_boot,) and its per-trajectory *unit* values (B,), the statistic on each row alone. Two runs compare on them
(``mechanics.separation``): the draws give the interval of a difference, the units an effect size.

Everything runs on the table's device and only the final numbers reach the host. The table is float64 on
every device: the statistics are memory-bound reductions (at most a few times n_boot·B·n elements), where
float64 costs twice the bandwidth of float32 and no more, while float32 sums over ~10⁶ pooled values would
lose the 1e-12 agreement with NumPy and several digits of the CVs.
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

Table = dict[str, torch.Tensor]
Statistic = Callable[[Table], torch.Tensor]

LAST_TWO = (-2, -1)
# Elements of one chunk of resampled tables (all columns together), float64, per device type: on a CPU
# 8 MiB chunks stay in cache and ran fastest (2**18..2**22 measured); an accelerator takes fewer, larger
# chunks to save kernel launches, 64 MiB plus a few times that in the statistics' temporaries.
BOOTSTRAP_CHUNK_ELEMENTS = {"cpu": 2**20}
BOOTSTRAP_CHUNK_ELEMENTS_ACCELERATOR = 2**23


def pad_rows(rows: Sequence, valid: Sequence | None = None, *, device=None) -> torch.Tensor:
    """Ragged rows (tensors or arrays) -> (B, n_max) float64 on ``device``, NaN where a row is shorter or
    ``valid`` is False. ``device`` defaults to the first row's (CPU for arrays)."""
    rows = [torch.as_tensor(r) for r in rows]
    if device is None:
        device = rows[0].device if rows else torch.device("cpu")
    lengths = [r.shape[0] for r in rows]
    out = torch.full((len(rows), max(lengths, default=0)), math.nan, dtype=torch.float64, device=device)
    if not rows or out.shape[1] == 0:
        return out
    # One concatenation and one transfer for the whole table, not one per row.
    flat = torch.cat([r.to(torch.float64) for r in rows]).to(device)  # (Σ n_i,)
    if valid is not None:
        ok = [torch.as_tensor(v, dtype=torch.bool) for v in valid]
        if [v.shape[0] for v in ok] != lengths:
            raise ValueError("pad_rows: each valid mask must have its row's length")
        flat = flat.masked_fill(~torch.cat(ok).to(device), math.nan)
    present = torch.arange(out.shape[1], device=device) < torch.tensor(lengths, device=device)[:, None]  # (B, n)
    # Row-major order of the mask matches the concatenation; masked_scatter needs no host sync on CUDA.
    return out.masked_scatter_(present, flat)


def _host_arrays(fn):
    """Let host callers (the steps CSV writer) pass NumPy arrays: computed in torch, handed back as NumPy."""
    @functools.wraps(fn)
    def wrapped(x, *args, **kwargs):
        if isinstance(x, np.ndarray):
            return fn(torch.from_numpy(x), *args, **kwargs).numpy()
        return fn(x, *args, **kwargs)
    return wrapped


def count(x: torch.Tensor, dim, keepdim: bool = False) -> torch.Tensor:
    """How many values along ``dim`` are not NaN."""
    return (~torch.isnan(x)).sum(dim, keepdim=keepdim)


def nanmean(x: torch.Tensor, dim, keepdim: bool = False) -> torch.Tensor:
    """Mean over ``dim`` skipping NaN; NaN where nothing is left (as numpy.nanmean)."""
    return torch.nanmean(x, dim=dim, keepdim=keepdim)


def nanvar(x: torch.Tensor, dim, keepdim: bool = False) -> torch.Tensor:
    """Population variance over ``dim`` skipping NaN, two-pass like numpy.nanvar."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    return torch.nanmean((x - mean).square(), dim=dim, keepdim=keepdim)


def pooled_mean(x: torch.Tensor) -> torch.Tensor:
    return nanmean(x, LAST_TWO)


def pooled_median(x: torch.Tensor) -> torch.Tensor:
    """Median of every non-NaN value of the last two axes: the mean of the two middle ones for an even count."""
    flat = x.flatten(-2)  # (..., B·n)
    if flat.shape[-1] == 0:
        return flat.new_full(flat.shape[:-1], math.nan)
    # One selection instead of a sort: torch.nanmedian is the LOWER middle value (index (k-1)//2 of the k
    # sorted values); the upper one (index k//2) equals it when at least k//2 + 1 values are <= it, else it
    # is the smallest value above it. (low + high) / 2 is then numpy.nanmedian to the last bit.
    low = torch.nanmedian(flat, dim=-1, keepdim=True).values  # (..., 1)
    k = count(flat, -1, keepdim=True)
    above = flat.masked_fill(~(flat > low), math.inf).amin(-1, keepdim=True)  # NaN compares False: skipped
    high = torch.where((flat <= low).sum(-1, keepdim=True) > k // 2, low, above)
    return ((low + high) / 2).squeeze(-1)  # k = 0: low is NaN, so the median is NaN


def pooled_var(x: torch.Tensor) -> torch.Tensor:
    return nanvar(x, LAST_TWO)


def cv(x: torch.Tensor, dim) -> torch.Tensor:
    """Coefficient of variation std/|mean| (population std), NaN-skipping."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    std = torch.nanmean((x - mean).square(), dim=dim, keepdim=True).sqrt()
    return (std / mean.abs()).squeeze(dim)


def global_cv(x: torch.Tensor) -> torch.Tensor:
    """CV over every (trajectory, step) value pooled."""
    return cv(x, LAST_TWO)


def mean_within_row_cv(x: torch.Tensor) -> torch.Tensor:
    """Mean over trajectories of each trajectory's own CV (rows with fewer than 2 values are skipped)."""
    per_row = cv(x, -1).masked_fill(count(x, -1) < 2, math.nan)
    return nanmean(per_row, -1)


def cv_of_row_means(x: torch.Tensor) -> torch.Tensor:
    """CV across trajectories of each trajectory's mean."""
    return cv(nanmean(x, -1), -1)


def steps_diff(x):
    """Consecutive differences within each row; NaN unless both steps exist (tensors and arrays alike)."""
    return x[..., 1:] - x[..., :-1]


def drift(dx: torch.Tensor) -> torch.Tensor:
    """Σ Δ / Σ |Δ|: +1 for a monotone rise, -1 for a monotone fall, 0 for balance (and for no change at all)."""
    total = dx.abs().nansum(LAST_TWO)
    moving = total > 0
    return torch.where(moving, dx.nansum(LAST_TWO) / torch.where(moving, total, 1.0), 0.0)


@_host_arrays
def normalise_by_row_mean_exp(log_x: torch.Tensor) -> torch.Tensor:
    """exp(log_x) divided by its row mean, computed stably in log space."""
    if log_x.shape[-1] == 0:
        return log_x.clone()
    top = log_x.masked_fill(torch.isnan(log_x), -math.inf).amax(-1, keepdim=True)  # nanmax; -inf on empty rows
    e = torch.exp(log_x - top)
    return e / nanmean(e, -1, keepdim=True)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile bootstrap interval over trajectories.

    ``draws`` (n_boot,) and ``units`` (B,) are the replicates behind it, kept only when asked
    (``bootstrap_many(keep_draws=True)``); they take no part in equality or ``to_dict``.
    """

    value: float
    low: float
    high: float
    draws: np.ndarray | None = field(default=None, compare=False, repr=False)  # (n_boot,) the bootstrap values
    units: np.ndarray | None = field(default=None, compare=False, repr=False)  # (B,) the statistic on each row alone

    def to_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


def replicates(estimates: dict[str, Estimate]) -> dict[str, dict[str, np.ndarray]]:
    """{name: {"draws": (n_boot,), "units": (B,)}} of every estimate that kept its replicates."""
    return {name: {"draws": e.draws, "units": e.units} for name, e in estimates.items() if e.draws is not None}


@contextlib.contextmanager
def serial_on_cpu(device: torch.device) -> Iterator[None]:
    """Run many small ops (bootstrap resample reductions, permutation-null chunks) without intra-op threads
    on a CPU.

    Each op touches a few MB at most, too little to gain from threads, and on a loaded machine OpenMP's
    fork/join makes them several times slower (120 ms single-threaded, 0.5-1.5 s with 2 threads on the 2-core
    benchmark machine). The setting is the calling thread's (an OpenMP ICV) and is restored on exit.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def resample_indices(n_rows: int, n_boot: int, seed: int, device) -> torch.Tensor:
    """(n_boot, n_rows) row indices drawn with replacement, all at once, by a seeded generator on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, n_rows, (n_boot, n_rows), generator=gen, device=device)


def bootstrap_many(statistics: dict[str, Statistic], table: Table, *, n_boot: int = 1000, ci: float = 0.95,
                   seed: int = 0, chunk: int | None = None, keep_draws: bool = False) -> dict[str, Estimate]:
    """Percentile bootstrap of several statistics on the SAME resamples of whole trajectories (rows).

    Each resample chunk copies the table once and every statistic reads it, so the cost is one gather plus
    one reduction per statistic; derived row-wise columns belong in the table before resampling. ``chunk``
    resamples are held at once (default: as many as fit in the device's BOOTSTRAP_CHUNK_ELEMENTS). The intervals are
    numpy.percentile's linear interpolation over the finite draws; only the final numbers go to the host.

    ``keep_draws``: each estimate also carries its draws (n_boot,), empty without resamples, and its unit
    values (B,), the statistic on each row alone (NaN where a single row does not define it). The resample
    indices depend only on (B, n_boot, seed, device), so two tables of as many rows bootstrapped with one
    seed see the same resamples of row indices: their draws pair up.
    """
    with serial_on_cpu(next(iter(table.values())).device):
        return _bootstrap_many(statistics, table, n_boot=n_boot, ci=ci, seed=seed, chunk=chunk,
                               keep_draws=keep_draws)


def _unit_values(statistics: dict[str, Statistic], table: Table) -> torch.Tensor:
    """(S, B) every statistic on every row alone, one call each: a (B, 1, n) table is exactly a chunk of B
    one-row resamples, so the statistics need nothing new."""
    first = next(iter(table.values()))
    n_rows = first.shape[0]
    rows = {k: v[:, None] for k, v in table.items()}  # (B, 1, n) views
    out = []
    for name, fn in statistics.items():
        value = torch.as_tensor(fn(rows), dtype=torch.float64, device=first.device)
        if value.numel() != n_rows:
            raise ValueError(f"statistic {name!r} maps a (B, 1, n) table to shape {tuple(value.shape)}, not (B,) = "
                             f"({n_rows},): a statistic must reduce the last two axes only")
        out.append(value.reshape(n_rows))
    return torch.stack(out) if out else torch.empty(0, n_rows, dtype=torch.float64, device=first.device)


def _bootstrap_many(statistics: dict[str, Statistic], table: Table, *, n_boot: int, ci: float, seed: int,
                    chunk: int | None, keep_draws: bool) -> dict[str, Estimate]:
    names = list(statistics)
    first = next(iter(table.values()))
    device = first.device
    values = torch.stack([torch.as_tensor(fn(table), dtype=torch.float64, device=device).reshape(())
                          for fn in statistics.values()])  # (S,)
    n_rows = first.shape[0]
    if n_boot <= 0 or n_rows < 2:
        if not keep_draws:
            return {name: Estimate(v, v, v) for name, v in zip(names, values.tolist())}
        units = _unit_values(statistics, table).cpu().numpy()  # (S, B)
        return {name: Estimate(v, v, v, np.empty(0), units[i]) for i, (name, v) in enumerate(zip(names, values.tolist()))}
    idx = resample_indices(n_rows, n_boot, seed, device)  # (n_boot, B)
    if chunk is None:
        per_resample = sum(v.numel() for v in table.values())
        budget = BOOTSTRAP_CHUNK_ELEMENTS.get(device.type, BOOTSTRAP_CHUNK_ELEMENTS_ACCELERATOR)
        chunk = budget // max(per_resample, 1)
    chunk = max(1, min(chunk, n_boot))
    draws = torch.empty(len(names), n_boot, dtype=torch.float64, device=device)  # (S, n_boot)
    for s in range(0, n_boot, chunk):
        resampled = {k: v[idx[s:s + chunk]] for k, v in table.items()}  # (c, B, n) per column
        for i, fn in enumerate(statistics.values()):
            draws[i, s:s + chunk] = fn(resampled)
    tail = (1 - ci) / 2
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64, device=device)
    # Non-finite draws are dropped (NaN is what nanquantile skips); a statistic with none left keeps its value.
    bounds = torch.nanquantile(draws.masked_fill(~torch.isfinite(draws), math.nan), q, dim=-1)  # (2, S)
    bounds = torch.where(torch.isnan(bounds), values, bounds)
    point, low, high = torch.cat([values[None], bounds]).tolist()
    if not keep_draws:
        return {name: Estimate(v, lo, hi) for name, v, lo, hi in zip(names, point, low, high)}
    kept, units = draws.cpu().numpy(), _unit_values(statistics, table).cpu().numpy()  # (S, n_boot), (S, B)
    return {name: Estimate(v, lo, hi, kept[i], units[i])
            for i, (name, v, lo, hi) in enumerate(zip(names, point, low, high))}


def bootstrap(statistic: Statistic, table: Table, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
              chunk: int | None = None) -> Estimate:
    """Percentile bootstrap of one statistic, resampling whole trajectories (rows) with replacement."""
    return bootstrap_many({"s": statistic}, table, n_boot=n_boot, ci=ci, seed=seed, chunk=chunk)["s"]
