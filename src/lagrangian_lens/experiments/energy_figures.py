"""Figures of the energy experiment, drawn from each run's steps.csv so that resumed runs plot too."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .plotting import plt, read_columns, run_colour, save
from .section import interval_of, value_of

COLUMNS = ("trajectory", "step", "log_kinetic", "log_ppl", "log_energy", "attractor_unique_tokens")


def energy_figures(out: Path, entries: list[dict]) -> list[Path]:
    """Write the five comparison figures into ``out/figures``; returns their paths."""
    if not entries:
        return []
    steps = {e["run"]: read_columns(Path(out) / e["run"] / "steps.csv", COLUMNS) for e in entries}
    fig_dir = Path(out) / "figures"
    return [
        _traces(entries, steps, fig_dir / "energy_traces.png"),
        _distributions(entries, steps, fig_dir / "log_energy_distribution.png"),
        _kv_scatter(entries, steps, fig_dir / "kinetic_vs_potential.png"),
        _cv_bars(entries, fig_dir / "cv_bars.png"),
        _attractor(entries, steps, fig_dir / "attractor_counts.png"),
    ]


def _traces(entries, steps, path, n_show: int = 6):
    fig, axes = plt.subplots(len(entries), 1, figsize=(8, 2.3 * len(entries)), sharex=True, squeeze=False)
    for ax, (i, e) in zip(axes[:, 0], enumerate(entries)):
        s = steps[e["run"]]
        for k in range(n_show):
            sel = s["trajectory"] == k
            ax.plot(s["step"][sel], s["log_energy"][sel], lw=0.9, color=run_colour(e, i), alpha=0.35 + 0.1 * (k == 0))
        ax.set_ylabel("H = ln E")
        ax.set_title(f"{e['run']}: first {n_show} trajectories", fontsize=9)
    axes[-1, 0].set_xlabel("step t (continuation)")
    return save(fig, path)


def _distributions(entries, steps, path):
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, e in enumerate(entries):
        h = steps[e["run"]]["log_energy"]
        h = h[np.isfinite(h)]
        ax.hist(h, bins=60, density=True, histtype="stepfilled", alpha=0.35, color=run_colour(e, i), label=e["run"])
    ax.set_xlabel("log-energy H_t")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return save(fig, path)


def _kv_scatter(entries, steps, path, max_points: int = 4000):
    fig, ax = plt.subplots(figsize=(6, 4.5))
    rng = np.random.default_rng(0)
    for i, e in enumerate(entries):
        s = steps[e["run"]]
        ok = np.flatnonzero(np.isfinite(s["log_kinetic"]) & np.isfinite(s["log_ppl"]))
        ok = rng.choice(ok, min(max_points, ok.size), replace=False) if ok.size else ok
        ax.scatter(s["log_ppl"][ok], s["log_kinetic"][ok], s=3, alpha=0.3, color=run_colour(e, i), label=e["run"])
    ax.set_xlabel("log-potential V_t = ln PPL_t")
    ax.set_ylabel("log-kinetic K_t = ln ½‖v_t‖²")
    ax.legend(fontsize=8, markerscale=4)
    return save(fig, path)


def _cv_bars(entries, path):
    keys = ("global_cv", "avg_trajectory_cv", "cv_of_trajectory_means")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(entries)
    for i, e in enumerate(entries):
        values = [value_of(e["metrics"][k]) for k in keys]
        # a metric without an interval (a plain number) gets no error bar
        spans = [interval_of(e["metrics"][k]) or (v, v) for k, v in zip(keys, values)]
        err = np.array([[v - lo, hi - v] for v, (lo, hi) in zip(values, spans)]).T
        ax.bar(np.arange(len(keys)) + i * width, values, width, yerr=np.clip(err, 0, None), capsize=3,
               color=run_colour(e, i), label=e["run"])
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, fontsize=8)
    ax.set_ylabel("coefficient of variation")
    ax.legend(fontsize=8)
    return save(fig, path)


def _attractor(entries, steps, path):
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(entries)
    for i, e in enumerate(entries):
        a = steps[e["run"]]["attractor_unique_tokens"]
        a = a[np.isfinite(a)].astype(int)
        if a.size == 0:
            continue
        values = np.arange(1, a.max() + 1)
        ax.bar(values + i * width, [(a == v).mean() for v in values], width, color=run_colour(e, i), label=e["run"])
    ax.set_xlabel("unique argmax tokens along h(α) = (1-α)h_t + αh_{t+1}")
    ax.set_ylabel("fraction of segments")
    ax.legend(fontsize=8)
    return save(fig, path)
