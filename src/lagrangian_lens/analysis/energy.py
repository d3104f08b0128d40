"""From trajectories to the energy step table and metrics, under the run's named conventions."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..mechanics import (
    attractor_unique_tokens,
    energy_metrics,
    energy_series,
    energy_table,
    log_el_residual,
    logprob_gradients,
)
from ..trajectories import Trajectory

PPL_CHOICES = ("realized", "argmax")
SPANS = ("continuation", "all")


@dataclass(frozen=True)
class EnergyConventions:
    """The choices the energy paper leaves open; every result records them."""

    site: str = "final"  # where h_t is read: 'final' (input of the unembedding), 'embed' or 'block.<l>'
    ppl: str = "realized"  # PPL_t from the realised token ('realized') or the argmax token ('argmax')
    span: str = "continuation"  # analyse only the continuation (the generated tokens) or all positions
    energy_scale: str = "log"  # CVs of H = ln E ('log') or of E itself ('linear')
    zero_velocity_rtol: float = 1e-6  # a step is 'zero velocity' when ‖v‖ <= rtol·max(‖h_t‖, ‖h_{t-1}‖)
    attractor_points: int = 11  # α grid of the neighbouring-attractor test: 11 points = 0, 0.1, ..., 1
    attractor_max_segments: int = 2000  # test at most this many segments, chosen at random (seeded)

    def __post_init__(self):
        if self.ppl not in PPL_CHOICES:
            raise ValueError(f"ppl must be one of {PPL_CHOICES}, got {self.ppl!r}")
        if self.span not in SPANS:
            raise ValueError(f"span must be one of {SPANS}, got {self.span!r}")


@dataclass
class EnergyAnalysis:
    table: dict[str, np.ndarray]  # (B, n) per column, see mechanics.energy_stats
    metrics: dict  # metric name -> {"value", "ci_low", "ci_high"} or a count
    step_tokens: np.ndarray  # (B, n) token id emitted at each step, -1 where absent
    step_positions: np.ndarray  # (B, n) position t of each step, -1 where absent


def _span(tr: Trajectory, span: str) -> slice:
    return tr.continuation if span == "continuation" else slice(0, tr.n_positions)


def analyse_energy(trajectories: Sequence[Trajectory], readout: Callable, conv: EnergyConventions, *,
                   n_boot: int = 1000, ci: float = 0.95, seed: int = 0, device="cpu") -> EnergyAnalysis:
    """Energy terms, log-EL residuals and attractor counts of every trajectory, then the run metrics.

    ``readout`` maps states at ``conv.site`` to logits on ``device`` (see ``trajectories.readout``).
    """
    if not trajectories:
        raise ValueError("no trajectories to analyse")
    series, entropy, states, targets, tokens, positions, repeats = [], [], [], [], [], [], []
    for tr in trajectories:
        sl = _span(tr, conv.span)
        h = tr.at(conv.site)[sl]
        logp = (tr.logprobs if conv.ppl == "realized" else tr.max_logprobs)[sl]
        series.append(energy_series(h, -logp, conv.zero_velocity_rtol))
        if tr.entropy is not None:
            entropy.append(tr.entropy[sl][1:].double().numpy())
        emitted = tr.targets[sl]
        states.append(h)
        targets.append(emitted)
        tokens.append(emitted[1:].numpy())
        positions.append(np.arange(sl.start + 1, sl.start + h.shape[0]))
        prev = tr.token_ids[sl.start:sl.start + len(emitted)]
        repeats.append((emitted == prev).numpy())
    el_rows = _el_rows(states, targets, series, readout, conv.ppl, device)
    attractor_rows = _attractor_rows(states, series, readout, conv, seed, device)
    extra = {"el": el_rows, "attractor": attractor_rows}
    if len(entropy) == len(series):
        extra["entropy"] = entropy
    table = energy_table(series, **extra)
    metrics = energy_metrics(table, scale=conv.energy_scale, n_boot=n_boot, ci=ci, seed=seed)
    n_steps = sum(len(s.valid) for s in series)
    metrics["zero_velocity_fraction"] = sum(s.n_zero_velocity for s in series) / max(n_steps, 1)
    metrics["repeated_token_fraction"] = float(np.concatenate(repeats).mean())
    width = table["H"].shape[1]
    return EnergyAnalysis(table, metrics, _pad_int(tokens, width), _pad_int(positions, width))


def _pad_int(rows, width) -> np.ndarray:
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _el_rows(states, targets, series, readout, ppl, device) -> list[np.ndarray]:
    """Per trajectory, the log-EL residual at each step (NaN at the last step and at zero velocities)."""
    flat = torch.cat(states).to(device)
    if ppl == "realized":
        goal = torch.cat(targets).to(device)
    else:
        with torch.no_grad():
            goal = torch.cat([readout(flat[s:s + 256]).argmax(-1) for s in range(0, flat.shape[0], 256)])
    grads = logprob_gradients(flat, goal, readout).cpu().split([h.shape[0] for h in states])
    rows = []
    for h, g, s in zip(states, grads, series):
        rel, ok = log_el_residual(h, g, torch.from_numpy(s.valid))
        row = np.full(len(s.valid), np.nan)
        row[:-1] = np.where(ok.numpy(), rel.numpy(), np.nan)
        rows.append(row)
    return rows


def _attractor_rows(states, series, readout, conv: EnergyConventions, seed: int, device) -> list[np.ndarray]:
    """Per trajectory, unique argmax tokens on the segment h_{t-1} -> h_t of each step (a seeded subset)."""
    index = [(i, j) for i, s in enumerate(series) for j in range(len(s.valid))]
    rng = np.random.default_rng(seed)
    if len(index) > conv.attractor_max_segments:
        chosen = rng.choice(len(index), conv.attractor_max_segments, replace=False)
        index = [index[k] for k in sorted(chosen)]
    rows = [np.full(len(s.valid), np.nan) for s in series]
    if not index:
        return rows
    h0 = torch.stack([states[i][j] for i, j in index]).to(device)
    h1 = torch.stack([states[i][j + 1] for i, j in index]).to(device)
    counts = attractor_unique_tokens(h0, h1, readout, conv.attractor_points).cpu().numpy()
    for (i, j), c in zip(index, counts):
        rows[i][j] = c
    return rows
