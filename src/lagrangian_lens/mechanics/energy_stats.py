"""The named run-level energy metrics of the energy paper's tables, as statistics on a step table.

Table columns (each a float64 tensor (B, n) on the run's device, NaN where a step is absent): ``K``
log-kinetic, ``V`` log-PPL, ``H`` = K + V, ``entropy`` (nats), ``el`` log-EL relative residual, ``attractor``
unique tokens per segment.

Where the source is ambiguous each reading is its own metric:

* ``avg_trajectory_cv`` is the mean of within-trajectory CVs; ``cv_of_trajectory_means`` is the CV of
  per-trajectory means ("an average of averages").
* ``kv_ratio_of_means`` = mean K / mean V; ``mean_kv_ratio`` = mean of K_t/V_t over steps with V_t > 1e-6.
* local metrics come on the H scale (``*_h``) and on E divided by its trajectory mean (``*_e_norm``).

``scale`` picks what the three CVs are taken of: ``log`` (H, the default) or ``linear`` (E = exp H).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .energy import EnergySeries
from .stats import (
    Statistic,
    Table,
    bootstrap_many,
    count,
    cv_of_row_means,
    drift,
    global_cv,
    mean_within_row_cv,
    nanmean,
    normalise_by_row_mean_exp,
    pad_rows,
    pooled_mean,
    pooled_median,
    pooled_var,
    replicates,
    steps_diff,
)

ENERGY_SCALES = ("log", "linear")
KV_RATIO_V_FLOOR = 1e-6


def energy_table(series: Sequence[EnergySeries], **extra: Sequence | torch.Tensor) -> Table:
    """Pad per-trajectory series into one table on the series' device; each extra column is either per-step
    rows (NaN-marked) or an already padded (B, n) tensor."""
    device = series[0].log_kinetic.device if series else torch.device("cpu")
    valid = [s.valid for s in series]
    table = {
        "K": pad_rows([s.log_kinetic for s in series], valid, device=device),
        "V": pad_rows([s.log_ppl for s in series], valid, device=device),
    }
    table["H"] = table["K"] + table["V"]
    # Row-wise derived columns, computed once: bootstrap resamples whole rows, so they resample with them.
    table["dH"] = steps_diff(table["H"])
    table["E_norm"] = normalise_by_row_mean_exp(table["H"])
    table["dE_norm"] = steps_diff(table["E_norm"])
    table["L"] = table["K"] - table["V"]  # the log-Lagrangian ln(½‖v‖²) + ln p
    table["classical"] = torch.exp(table["K"]) + table["V"]  # ½‖v‖² − ln p: the classical energy
    for name, column in extra.items():
        if isinstance(column, torch.Tensor):
            if column.shape != table["H"].shape:
                raise ValueError(f"column {name!r} is {tuple(column.shape)}; the table is {tuple(table['H'].shape)}")
            table[name] = column.to(device=device, dtype=torch.float64)
        else:
            table[name] = pad_rows(column, device=device)
    return table


def _kv_ratio(t: Table) -> torch.Tensor:
    v = t["V"].masked_fill(~(t["V"] > KV_RATIO_V_FLOOR), math.nan)
    return pooled_mean(t["K"] / v)


def energy_statistics(scale: str = "log", columns: Sequence[str] = ("K", "V", "H")) -> dict[str, Statistic]:
    """Metric name -> statistic for a table with ``columns``; each reduces the arrays' last two axes."""
    if scale not in ENERGY_SCALES:
        raise ValueError(f"energy scale {scale!r} not in {ENERGY_SCALES}")
    x = (lambda t: t["H"]) if scale == "log" else (lambda t: torch.exp(t["H"]))
    stats: dict[str, Statistic] = {
        "global_cv": lambda t: global_cv(x(t)),
        "avg_trajectory_cv": lambda t: mean_within_row_cv(x(t)),
        "cv_of_trajectory_means": lambda t: cv_of_row_means(x(t)),
        "mean_log_energy": lambda t: pooled_mean(t["H"]),
        "mean_log_kinetic": lambda t: pooled_mean(t["K"]),
        "mean_log_ppl": lambda t: pooled_mean(t["V"]),
        "kv_ratio_of_means": lambda t: pooled_mean(t["K"]) / pooled_mean(t["V"]),
        "mean_kv_ratio": _kv_ratio,
        "mean_delta_h": lambda t: pooled_mean(t["dH"]),
        "mean_abs_delta_h": lambda t: pooled_mean(t["dH"].abs()),
        "drift_h": lambda t: drift(t["dH"]),
        "mean_delta_e_norm": lambda t: pooled_mean(t["dE_norm"]),
        "mean_abs_delta_e_norm": lambda t: pooled_mean(t["dE_norm"].abs()),
        "drift_e_norm": lambda t: drift(t["dE_norm"]),
        "classical_energy_cv": lambda t: global_cv(t["classical"]),
        "mean_log_lagrangian": lambda t: pooled_mean(t["L"]),
        "log_action_per_step": lambda t: nanmean(nanmean(t["L"], -1), -1),  # per trajectory Σ L / n, averaged
    }
    per_column = {
        "entropy": {"mean_entropy": lambda t: pooled_mean(t["entropy"]),
                    "entropy_variance": lambda t: pooled_var(t["entropy"])},
        "el": {"el_residual_median": lambda t: pooled_median(t["el"]),
               "el_residual_mean": lambda t: pooled_mean(t["el"])},
        "el_minus": {"el_residual_median_minus": lambda t: pooled_median(t["el_minus"])},
        "el_cos": {"el_cos_median": lambda t: pooled_median(t["el_cos"])},
        "el_scale": {"el_scale_ratio_median": lambda t: pooled_median(t["el_scale"])},
        "logit_disp": {"logit_displacement_rel_error": lambda t: pooled_median(t["logit_disp"])},
        "attractor": {"attractor_unique_tokens_mean": lambda t: pooled_mean(t["attractor"])},
    }
    for column, extra in per_column.items():
        if column in columns:
            stats.update(extra)
    return stats


def energy_metrics(table: Table, *, scale: str = "log", n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """Every metric the table supports, each ``{"value", "ci_low", "ci_high"}``, plus plain counts.

    Computed on the table's device; the numbers reach the host together, once for the columns present, once
    for the bootstrap and once for the counts.
    """
    return _energy_metrics(table, scale=scale, n_boot=n_boot, ci=ci, seed=seed, keep_draws=False)[0]


def energy_metrics_with_replicates(table: Table, *, scale: str = "log", n_boot: int = 1000, ci: float = 0.95,
                                   seed: int = 0) -> tuple[dict, dict]:
    """``energy_metrics`` and, per bootstrapped metric, its replicates {"draws": (n_boot,), "units": (B,)}."""
    return _energy_metrics(table, scale=scale, n_boot=n_boot, ci=ci, seed=seed, keep_draws=True)


def _energy_metrics(table: Table, *, scale: str, n_boot: int, ci: float, seed: int, keep_draws: bool):
    present = [c for c, ok in zip(table, torch.stack([torch.isfinite(v).any() for v in table.values()]).tolist())
               if ok]
    stats = energy_statistics(scale, present)
    estimates = bootstrap_many(stats, table, n_boot=n_boot, ci=ci, seed=seed, keep_draws=keep_draws)
    metrics = {name: est.to_dict() for name, est in estimates.items()}
    h, v = table["H"], table["V"]
    counts = [torch.isfinite(h).sum(), (torch.isfinite(h) & ~(v > KV_RATIO_V_FLOOR)).sum()]
    if "attractor" in table:
        a = table["attractor"].masked_fill(~torch.isfinite(table["attractor"]), math.nan)
        n_a = count(a, (-2, -1))
        # sample std (ddof=1) over the segments tested, as a standard error of their mean
        n_f = n_a.to(torch.float64)
        sem = (torch.nansum((a - torch.nanmean(a)).square()) / (n_f - 1)).sqrt() / n_f.sqrt()
        counts += [n_a, sem]
    counts = torch.stack([c.to(torch.float64) for c in counts]).tolist()
    if "attractor" in table:
        metrics["attractor_unique_tokens_sem"] = counts[3] if counts[2] > 1 else 0.0
        metrics["attractor_segments"] = int(counts[2])
    metrics["n_trajectories"] = int(h.shape[0])
    metrics["n_steps"] = int(counts[0])
    metrics["kv_ratio_steps_excluded"] = int(counts[1])
    return metrics, replicates(estimates)
