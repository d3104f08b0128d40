"""Shared figure style and helpers: headless backend, one palette, PNGs written at a fixed DPI."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PRETRAINED, RANDOM = "#1f5f8b", "#d2691e"


def run_colour(entry: dict, i: int) -> str:
    palette = plt.get_cmap("tab10")
    if entry.get("weights") == "random":
        return RANDOM if i < 2 else palette(2 * i + 1)
    return PRETRAINED if i < 2 else palette(2 * i)


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_columns(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Numeric columns of a CSV as float arrays (empty cells -> NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {c: np.array([float(r[c]) if r[c] != "" else np.nan for r in rows]) for c in columns}


def real_vs_null_grid(entries: list[dict], data: dict, panels: tuple[tuple[str, str], ...], path: Path,
                      low_percentile: float = 0.0) -> Path:
    """One row per run, one panel per quantity: its histogram in real order against one shuffle (``null_<key>``)."""
    fig, axes = plt.subplots(len(entries), len(panels), figsize=(3.7 * len(panels), 2.6 * len(entries)), squeeze=False)
    for row, (i, e) in zip(axes, enumerate(entries)):
        d = data[e["run"]]
        for ax, (key, label) in zip(row, panels):
            both = np.concatenate([d[key], d[f"null_{key}"]])
            bins = np.linspace(np.percentile(both, low_percentile), np.percentile(both, 99.5), 60)
            ax.hist(d[key], bins, density=True, alpha=0.6, color=run_colour(e, i), label="real order")
            ax.hist(d[f"null_{key}"], bins, density=True, histtype="step", color="k", label="shuffled (one draw)")
            ax.set_title(f"{e['run']}: {label}", fontsize=9)
        row[0].legend(fontsize=7)
    return save(fig, path)
