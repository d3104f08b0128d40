"""From trajectories to the energy step table and metrics, under the run's named conventions."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..checks import check_choice, check_range
from ..errors import ConfigError, TrajectoryError
from ..mechanics import (
    attractor_unique_tokens,
    energy_table,
    log_el_terms,
    logit_displacement_error,
    logprob_gradients,
)
from ..mechanics.energy import energy_series_many, step_rows
from ..mechanics.energy_stats import ENERGY_SCALES, energy_metrics_with_replicates
from ..trajectories import Site, Trajectory

PPL_CHOICES = ("realized", "argmax")
SPANS = ("continuation", "all")


@dataclass(frozen=True)
class EnergyConventions:
    """The choices the energy paper leaves open; every result records them."""

    CHOICES = {"ppl": PPL_CHOICES, "span": SPANS, "energy_scale": ENERGY_SCALES}

    site: str = "final"  # where h_t is read: final (input of the unembedding), embed or block.<l> (negative from the end)
    ppl: str = "realized"  # PPL_t from the realised token (realized) or the argmax token (argmax); equal under greedy
    span: str = "continuation"  # analyse only the continuation (the generated tokens) or all positions
    energy_scale: str = "log"  # take the CVs of H = ln E (log) or of E itself (linear)
    zero_velocity_rtol: float = 1e-6  # a step is 'zero velocity' when ‖v‖ <= rtol·max(‖h_t‖, ‖h_{t-1}‖)
    attractor_points: int = 11  # α grid of the neighbouring-attractor test: 11 points = 0, 0.1, ..., 1
    attractor_max_segments: int = 2000  # test at most this many segments, chosen at random (seeded)

    def __post_init__(self):
        try:
            Site.parse(self.site)  # syntax only; the block range is checked against the model
        except TrajectoryError as exc:
            raise ConfigError("site", str(exc)) from None
        check_choice("ppl", self.ppl, PPL_CHOICES)
        check_choice("span", self.span, SPANS)
        check_choice("energy_scale", self.energy_scale, ENERGY_SCALES)
        check_range("zero_velocity_rtol", self.zero_velocity_rtol, low=0)
        check_range("attractor_points", self.attractor_points, low=2)
        check_range("attractor_max_segments", self.attractor_max_segments, low=1)


@dataclass
class EnergyAnalysis:
    table: dict[str, np.ndarray]  # (B, n) per column, see mechanics.energy_stats
    metrics: dict  # metric name -> {"value", "ci_low", "ci_high"} or a count
    step_tokens: np.ndarray  # (B, n) token id emitted at each step, -1 where absent
    step_positions: np.ndarray  # (B, n) position t of each step, -1 where absent
    # metric name -> {"draws": (n_boot,), "units": (B,)}: the bootstrap replicates, for comparing runs
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _span(tr: Trajectory, span: str) -> slice:
    return tr.continuation if span == "continuation" else slice(0, tr.n_positions)


def analyse_energy(trajectories: Sequence[Trajectory], readout: Callable, conv: EnergyConventions, *,
                   n_boot: int = 1000, ci: float = 0.95, seed: int = 0, device="cpu",
                   unembedding: torch.Tensor | None = None) -> EnergyAnalysis:
    """Energy terms, log-EL residuals and attractor counts of every trajectory, then the run metrics.

    ``readout`` maps states at ``conv.site`` to logits on ``device`` (see ``trajectories.readout``). With the
    unembedding matrix W (V, d), the logit-displacement error of Prop. B.1 is reported as well. The step
    table and the bootstrapped metrics are computed there too; the table comes back to the host once, at the end.
    """
    if not trajectories:
        raise TrajectoryError("no trajectories to analyse")
    stats_device = _stats_device(device)
    states, neg_logp, entropy, targets, tokens, positions, repeats = [], [], [], [], [], [], []
    for tr in trajectories:
        sl = _span(tr, conv.span)
        h = tr.at(conv.site)[sl]
        states.append(h)
        neg_logp.append(-(tr.logprobs if conv.ppl == "realized" else tr.max_logprobs)[sl])
        if tr.entropy is not None:
            entropy.append(tr.entropy[sl][1:])
        emitted = tr.targets[sl]
        targets.append(emitted)
        tokens.append(emitted[1:].numpy())
        positions.append(np.arange(sl.start + 1, sl.start + h.shape[0]))
        prev = tr.token_ids[sl.start:sl.start + len(emitted)]
        repeats.append((emitted == prev).numpy())
    lengths = [h.shape[0] for h in states]
    # Every trajectory stacked, (Σ T_i, d): one transfer serves the read-out, and each per-step quantity is one
    # set of kernels for the whole batch.
    flat = torch.cat(states).to(device)
    here = flat.to(stats_device)
    series = energy_series_many(here, torch.cat(neg_logp).to(stats_device), lengths, conv.zero_velocity_rtol)
    extra = {**_el_rows(flat, here, lengths, targets, series, readout, conv.ppl),
             "attractor": _attractor_column(flat, lengths, series, readout, conv, seed, stats_device)}
    if len(entropy) == len(series):
        extra["entropy"] = entropy
    if unembedding is not None:
        extra["logit_disp"] = _logit_displacement_rows(flat, lengths, series, readout, unembedding)
    table = energy_table(series, **extra)
    metrics, replicates = energy_metrics_with_replicates(table, scale=conv.energy_scale, n_boot=n_boot, ci=ci, seed=seed)
    n_steps = sum(len(s.valid) for s in series)
    n_zero = int(torch.cat([s.valid for s in series]).logical_not().sum())
    metrics["zero_velocity_fraction"] = n_zero / max(n_steps, 1)
    metrics["repeated_token_fraction"] = float(np.concatenate(repeats).mean())
    width = table["H"].shape[1]
    host_table = {name: column.cpu().numpy() for name, column in table.items()}  # the table's one trip to the host
    return EnergyAnalysis(host_table, metrics, _pad_int(tokens, width), _pad_int(positions, width), replicates)


def _logit_displacement_rows(flat, lengths, series, readout, weight) -> list[torch.Tensor]:
    """Per trajectory, ‖Δz − W·Δh‖/‖Δz‖ at each step (NaN at zero velocities)."""
    rows = step_rows(lengths, flat.device)  # (M,) rows r whose next state r + 1 is in the same trajectory
    error = logit_displacement_error(flat[rows], flat[rows + 1], readout, weight.to(flat.device))
    valid = torch.cat([s.valid for s in series]).to(error.device)
    return list(error.masked_fill(~valid, math.nan).split([n - 1 for n in lengths]))


def _stats_device(device) -> torch.device:
    """Where the float64 step table and statistics live: the model's device, except MPS, which has no float64."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def _pad_int(rows, width) -> np.ndarray:
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


EL_COLUMNS = {"plus": "el", "minus": "el_minus", "cos": "el_cos", "scale": "el_scale"}


def _el_rows(flat, here, lengths, targets, series, readout, ppl) -> dict[str, list[torch.Tensor]]:
    """Per table column (``el``, ``el_minus``, ``el_cos``, ``el_scale``), per trajectory, the log-EL comparison at
    each step (NaN at the last step and at zero velocities); see ``mechanics.forces.log_el_terms``.

    ``flat`` (Σ T_i, d) holds every state on the read-out's device, ``here`` the same on the table's device.
    """
    if ppl == "realized":
        goal = torch.cat(targets).to(flat.device)
    else:
        with torch.no_grad():
            goal = torch.cat([readout(flat[s:s + 256]).argmax(-1) for s in range(0, flat.shape[0], 256)])
    grads = logprob_gradients(flat, goal, readout).to(here.device)  # (Σ T_i, d)
    # All trajectories in one call: the velocities across trajectory boundaries are marked invalid, so no
    # residual reads them, and every other residual is the one of its own trajectory.
    rows = step_rows(lengths, here.device)  # (M,) velocity rows inside a trajectory
    valid = torch.zeros(here.shape[0] - 1, dtype=torch.bool, device=here.device)
    valid.index_copy_(0, rows, torch.cat([s.valid for s in series]))
    terms = log_el_terms(here, grads, valid)  # each (Σ T_i - 2,): entry r needs velocity rows r and r + 1
    ok = terms.pop("ok")
    # Step row r (velocity h_{r+1} - h_r) has its residual at entry r; a trajectory's last step has none (its
    # next velocity row is a boundary, or there is none at the very end).
    out = {}
    for name, value in terms.items():
        per_step = torch.cat([value.masked_fill(~ok, math.nan), value.new_full((1,), math.nan)])  # (Σ T_i - 1,)
        out[EL_COLUMNS[name]] = list(per_step.index_select(0, rows).split([n - 1 for n in lengths]))
    return out


def _attractor_column(flat, lengths, series, readout, conv: EnergyConventions, seed: int,
                      stats_device) -> torch.Tensor:
    """(B, n) unique argmax tokens on the segment h_{t-1} -> h_t of each step (a seeded subset), NaN elsewhere."""
    index = [(i, j) for i, s in enumerate(series) for j in range(len(s.valid))]
    rng = np.random.default_rng(seed)
    if len(index) > conv.attractor_max_segments:
        chosen = rng.choice(len(index), conv.attractor_max_segments, replace=False)
        index = [index[k] for k in sorted(chosen)]
    width = max(len(s.valid) for s in series)
    column = torch.full((len(series), width), math.nan, dtype=torch.float64, device=stats_device)
    if not index:
        return column
    start = np.cumsum([0, *lengths[:-1]])  # row of each trajectory's first state in ``flat``
    at = torch.tensor([start[i] + j for i, j in index], device=flat.device)  # (N,) rows of h_{t-1}
    counts = attractor_unique_tokens(flat[at], flat[at + 1], readout, conv.attractor_points)  # (N,)
    rows, steps = (torch.tensor(ix, device=stats_device) for ix in zip(*index))
    column[rows, steps] = counts.to(device=stats_device, dtype=torch.float64)
    return column
