"""Shared figure style and helpers: headless backend, one palette, each figure written as PNG and SVG.

The PNG (fixed DPI) is what the report embeds; the SVG beside it is for print and papers, and is byte-stable
across runs (no date, fixed element ids), so an unchanged figure leaves an unchanged file.
"""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
matplotlib.rcParams["svg.hashsalt"] = "lagrangian-lens"  # fixed SVG element ids instead of random ones
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PRETRAINED, RANDOM = "#1f5f8b", "#d2691e"


def run_colour(entry: dict, i: int) -> str:
    palette = plt.get_cmap("tab10")
    if entry.get("weights") == "random":
        return RANDOM if i < 2 else palette(2 * i + 1)
    return PRETRAINED if i < 2 else palette(2 * i)


def save(fig, path: Path) -> Path:
    """Write ``path`` (a PNG) and the same figure as SVG beside it; returns the PNG's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:  # a figure laid out by its own engine (constrained) keeps it
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.savefig(path.with_suffix(".svg"), metadata={"Date": None})
    plt.close(fig)
    return path


def read_columns(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Numeric columns of a CSV as float arrays (empty cells -> NaN)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {c: np.array([float(r[c]) if r[c] != "" else np.nan for r in rows]) for c in columns}


def real_vs_null_grid(entries: list[dict], data: dict, panels: tuple[tuple[str, str], ...], path: Path,
                      low_percentile: float = 0.0) -> Path:
    """One row per run, one panel per quantity: its histogram in real order against one shuffle (``null_<key>``).

    Each row is titled once with its run and each panel's x axis names its quantity: long run names in every
    panel title would overlap their neighbours.
    """
    fig = plt.figure(figsize=(3.7 * len(panels), 2.9 * len(entries)), layout="constrained")
    rows = fig.subfigures(len(entries), 1, squeeze=False)[:, 0]
    for row, (i, e) in zip(rows, enumerate(entries)):
        row.suptitle(e["run"], fontsize=10)
        axes = row.subplots(1, len(panels), squeeze=False)[0]
        d = data[e["run"]]
        for ax, (key, label) in zip(axes, panels):
            both = np.concatenate([d[key], d[f"null_{key}"]])
            bins = np.linspace(np.percentile(both, low_percentile), np.percentile(both, 99.5), 60)
            ax.hist(d[key], bins, density=True, alpha=0.6, color=run_colour(e, i), label="real order")
            ax.hist(d[f"null_{key}"], bins, density=True, histtype="step", color="k", label="shuffled (one draw)")
            ax.set_xlabel(label, fontsize=9)
            ax.set_ylabel("density", fontsize=9)
        axes[0].legend(fontsize=7)
    return save(fig, path)
