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
