"""Attention thermodynamics of a model's captured attention scores: scores in, metrics out (no I/O).

Each query's softmax over keys read as a canonical ensemble (``mechanics.thermo``): per layer × head, the pooled
row means ⟨U⟩, ⟨S⟩, ⟨F⟩, ⟨C⟩ (and S / ln n_visible) with percentile bootstrap intervals resampling whole sequences;
per-layer and model means; the specific-heat curves ⟨C⟩(T) per head and their peak temperatures; a positional view
(S and C by query position, attention mass and energy by key distance); and an attention-sink view (the mass on the
sink keys, and the thermodynamics of the rows renormalised without them).

Every mean pools rows: each kept (sequence, query) row weighs the same, so longer sequences weigh more; rows with
no visible key and the first ``skip_query_positions`` queries are left out (the query-position profile keeps every
position: it shows them by construction).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..checks import check_choice, check_range
from ..errors import ConfigError, TrajectoryError
from ..mechanics.thermo import (
    PooledMeans,
    attention_thermo,
    boltzmann_weights,
    bootstrap_pooled_means,
    by_key_distance,
    by_query_position,
    peak_temperature,
    reduce_rows,
    visible_keys,
)

SINK_MODES = ("separate", "exclude")
DEFAULT_TEMPERATURES = tuple(round(10 ** (-1 + k / 12), 6) for k in range(25))  # 0.1 .. 10, 12 points per decade
# Metric name -> the AttentionThermo property it pools.
QUANTITIES = {"energy": "U", "entropy": "S", "free_energy": "F", "specific_heat": "C",
              "normalized_entropy": "normalized_entropy"}


@dataclass
class AttentionScores:
    """One sequence's pre-softmax attention scores at every layer and head, the thermo analysis's input.

    Query i and key j are the sequence's tokens i and j (self-attention over the whole sequence).
    """

    scores: torch.Tensor  # (L, H, T, T) float, as the softmax reads them (scaled; capped where the model softcaps)
    mask: torch.Tensor  # (L, H, T, T), (L, 1, T, T) or (T, T) bool: True = visible key (causal mask, padding, window)
    token_ids: torch.Tensor | None = None  # (T,) int
    positions: torch.Tensor | None = None  # (T,) int >= 0, the tokens' positions (default: their indices)
    layer_names: tuple[str, ...] | None = None  # (L,) names of the layers, e.g. "block.3"

    def __post_init__(self):
        s = self.scores
        if s.ndim != 4 or s.shape[-1] != s.shape[-2] or not s.is_floating_point():
            raise TrajectoryError(f"AttentionScores.scores must be float (L, H, T, T), got {s.dtype} "
                                  f"{tuple(s.shape)}")
        if self.mask.ndim not in (2, 4):
            raise TrajectoryError(f"AttentionScores.mask must be (L, H, T, T) or (T, T), got {tuple(self.mask.shape)}")
        visible_keys(s, self.mask)
        for name in ("token_ids", "positions"):
            value = getattr(self, name)
            if value is not None and (tuple(value.shape) != (s.shape[-1],) or value.is_floating_point()):
                raise TrajectoryError(f"AttentionScores.{name} must be ints ({s.shape[-1]},), got {value.dtype} "
                                      f"{tuple(value.shape)}")
        if self.positions is not None and bool((self.positions < 0).any()):
            raise TrajectoryError("AttentionScores.positions must be >= 0")
        if self.layer_names is not None and len(self.layer_names) != s.shape[0]:
            raise TrajectoryError(f"AttentionScores.layer_names has {len(self.layer_names)} names for {s.shape[0]} "
                                  "layers")

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    @property
    def n_tokens(self) -> int:
        return self.scores.shape[-1]

    @property
    def visible(self) -> torch.Tensor:
        """(L, H, T, T) bool, the mask broadcast (a view)."""
        return visible_keys(self.scores, self.mask)

    @property
    def token_positions(self) -> torch.Tensor:
        """(T,) int64 positions, the indices unless given."""
        if self.positions is not None:
            return self.positions.to(device=self.scores.device, dtype=torch.long)
        return torch.arange(self.n_tokens, device=self.scores.device)


@dataclass(frozen=True)
class ThermoConventions:
    """The readings the thermodynamic-isomorphism paper leaves open; every result records them."""

    CHOICES = {"sinks": SINK_MODES}

    ensemble_temperature: float = 1.0  # T of the headline metrics: 1 reads the model's own softmax
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES  # increasing C(T) sweep grid, >= 3 points (0.1..10, 25 log)
    sink_positions: tuple[int, ...] = (0,)  # key positions read as attention sinks (0: the first token); () = none
    sinks: str = "separate"  # separate: headline over all keys, plus the sink view; exclude: headline without sinks
    skip_query_positions: int = 1  # drop the first n queries from the means (query 0 sees only itself: S = C = 0)

    def __post_init__(self):
        check_range("ensemble_temperature", self.ensemble_temperature, low=0, low_open=True, high=math.inf, high_open=True)
        if not isinstance(self.temperatures, (tuple, list)) or len(self.temperatures) < 3:
            raise ConfigError("temperatures", f"must be a tuple of >= 3 temperatures, got {self.temperatures!r}")
        temps = tuple(float(t) for t in self.temperatures)
        if not all(0 < t < math.inf for t in temps) or any(b <= a for a, b in zip(temps, temps[1:])):
            raise ConfigError("temperatures", f"must be finite, > 0 and strictly increasing, got {temps}")
        object.__setattr__(self, "temperatures", temps)  # a list from a command line or JSON becomes the tuple
        sinks = tuple(self.sink_positions) if isinstance(self.sink_positions, (tuple, list)) else None
        if sinks is None or len(set(sinks)) < len(sinks) or not all(
                isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in sinks):
            raise ConfigError("sink_positions", f"must be a tuple of distinct ints >= 0, got {self.sink_positions!r}")
        object.__setattr__(self, "sink_positions", sinks)
        check_choice("sinks", self.sinks, SINK_MODES)
        if self.sinks == "exclude" and not sinks:
            raise ConfigError("sinks", "'exclude' needs sink_positions; give them or use sinks='separate'")
        check_range("skip_query_positions", self.skip_query_positions, low=0)


@dataclass
class ThermoAnalysis:
    """Thermodynamics of a model's attention, per layer (L) × head (H), on the host."""

    metrics: dict  # JSON-ready: mean_<q> {"value", "ci_low", "ci_high"}, per_layer_<q> the same as (L,) lists, counts
    per_head: dict[str, dict[str, np.ndarray]]  # quantity -> {"value", "ci_low", "ci_high"}, each (L, H)
    temperatures: np.ndarray  # (n_T,) the sweep grid
    heat_curves: np.ndarray  # (n_T, L, H) ⟨C⟩(T) of each head, pooled over rows
    peak_temperature: np.ndarray  # (L, H) where each head's ⟨C⟩(T) peaks (the grid's edge where at_edge)
    peak_at_edge: np.ndarray  # (L, H) bool: the peak lies on the grid's edge, so possibly beyond it
    by_query_position: dict[str, np.ndarray]  # "entropy", "specific_heat", "count": (L, H, P) over sequences
    by_key_distance: dict[str, np.ndarray]  # "mass", "energy", "count": (L, H, D), d = query − key position
    layer_names: tuple[str, ...] | None = None  # (L,)
    definitions: dict = field(default_factory=dict)  # how each number was computed, in words

    def __post_init__(self):
        lh = self.peak_temperature.shape
        shapes = {"heat_curves": self.heat_curves.shape[1:], "peak_at_edge": self.peak_at_edge.shape,
                  **{f"per_head[{q!r}]": v["value"].shape for q, v in self.per_head.items()},
                  **{f"by_query_position[{k!r}]": v.shape[:2] for k, v in self.by_query_position.items()},
                  **{f"by_key_distance[{k!r}]": v.shape[:2] for k, v in self.by_key_distance.items()}}
        for name, shape in shapes.items():
            if shape != lh:
                raise TrajectoryError(f"ThermoAnalysis.{name} is per (layer, head) {shape}, peak_temperature {lh}")
        if self.heat_curves.shape[0] != self.temperatures.shape[0]:
            raise TrajectoryError(f"ThermoAnalysis.heat_curves has {self.heat_curves.shape[0]} temperatures, the "
                                  f"grid {self.temperatures.shape[0]}")

    @property
    def n_layers(self) -> int:
        return self.peak_temperature.shape[0]

    @property
    def n_heads(self) -> int:
        return self.peak_temperature.shape[1]


DEFINITIONS = {
    "ensemble": "E_j = −s_j (scores as the softmax reads them), p = softmax(−E/T) over the visible keys",
    "specific_heat": "C = β²·Var_p(E) = ∂U/∂T",
    "means": "pooled over kept (sequence, query) rows; bootstrap resamples whole sequences (percentile)",
    "sink_view": "sink_mass = Σ p over the sink keys, over rows that see another key; *_without_sinks = the ensemble "
                 "renormalised over the non-sink keys",
    "peak_temperature": "argmax of ⟨C⟩(T) on the grid, refined by a parabola in ln T; at_edge = on the grid's edge",
}


def _as_record(capture) -> AttentionScores:
    """An ``AttentionScores`` as is; any other record with ``scores`` and ``mask`` (and optionally the rest) checked."""
    if isinstance(capture, AttentionScores):
        return capture
    return AttentionScores(capture.scores, capture.mask,
                           **{name: getattr(capture, name, None) for name in ("token_ids", "positions", "layer_names")})


def _sequence_terms(r: AttentionScores, conv: ThermoConventions) -> tuple[dict[str, PooledMeans], dict]:
    """One sequence's pooled cells per quantity ((L, H) sums and counts), and its curve and profile sums."""
    s, visible, pos = r.scores, r.visible, r.token_positions  # (L, H, T, T), (L, H, T, T), (T,)
    keep = pos >= conv.skip_query_positions  # (T,) rows in the means
    sink = torch.isin(pos, torch.tensor(conv.sink_positions, dtype=torch.long, device=pos.device))  # (T,) keys
    mask = visible & ~sink if conv.sinks == "exclude" else visible

    def cells(th, rows=keep, suffix=""):
        return {name + suffix: reduce_rows(getattr(th, prop)[:, None], rows) for name, prop in QUANTITIES.items()}

    th = attention_thermo(s, mask, conv.ensemble_temperature)  # per row (L, H, T)
    out = cells(th)
    sweep = attention_thermo(s, mask, torch.tensor(conv.temperatures, dtype=torch.float64)).C  # (n_T, L, H, T)
    p = boltzmann_weights(s, mask, conv.ensemble_temperature)  # (L, H, T, T)
    pairs = (mask & keep[:, None])[:, None]  # (L, 1, H, T, T) visible pairs of kept rows
    profiles = {"curve": reduce_rows(sweep[:, :, None], keep),
                "entropy": by_query_position(th.S[:, None], positions=pos),
                "specific_heat": by_query_position(th.C[:, None], positions=pos),
                "mass": by_key_distance(p[:, None], pairs, pos, pos),
                "energy": by_key_distance(-s[:, None], pairs, pos, pos)}
    if conv.sink_positions:
        p_all = p if conv.sinks == "separate" else boltzmann_weights(s, visible, conv.ensemble_temperature)
        others = visible & ~sink  # the keys left when the sinks are taken out
        chose = (keep & others.any(-1))[:, None]  # (L, 1, H, T) rows that see a key besides the sinks
        out["sink_mass"] = reduce_rows((p_all * sink).sum(-1)[:, None], chose)
        out |= cells(attention_thermo(s, others, conv.ensemble_temperature), keep, "_without_sinks")
    return out, profiles


def _columns(cells: list[PooledMeans]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L·H + L + 1) sums and counts of every head, every layer and the model, per sequence."""
    def flat(x: torch.Tensor) -> torch.Tensor:  # (B, L, H)
        return torch.cat([x.flatten(1), x.sum(-1), x.sum((-2, -1))[:, None]], dim=1)
    return flat(torch.stack([c.sums for c in cells])), flat(torch.stack([c.counts for c in cells]))


def _estimates(per_sequence: dict[str, list[PooledMeans]], L: int, H: int, *, n_boot: int, ci: float, seed: int):
    """Per quantity, (value, ci_low, ci_high) numpy triples per head (L, H), per layer (L,) and for the model."""
    names = list(per_sequence)
    sums, counts = zip(*(_columns(per_sequence[name]) for name in names))
    # Every quantity, head, layer and the model on the same resamples, in one product.
    value, low, high = (x.cpu().numpy() for x in bootstrap_pooled_means(torch.cat(sums, 1), torch.cat(counts, 1),
                                                                         n_boot=n_boot, ci=ci, seed=seed))
    width = L * H + L + 1
    out = {}
    for i, name in enumerate(names):
        part = [x[i * width:(i + 1) * width] for x in (value, low, high)]
        out[name] = {"head": [x[:L * H].reshape(L, H) for x in part], "layer": [x[L * H:L * H + L] for x in part],
                     "model": [float(x[-1]) for x in part]}
    return out


def _triple(values) -> dict:
    value, low, high = values
    as_json = (lambda x: x.tolist()) if isinstance(value, np.ndarray) else float
    return {"value": as_json(value), "ci_low": as_json(low), "ci_high": as_json(high)}


def analyse_thermo(captures: Sequence, conv: ThermoConventions, *, n_boot: int = 1000, ci: float = 0.95,
                   seed: int = 0) -> ThermoAnalysis:
    """Attention thermodynamics of ``captures``, one ``AttentionScores`` per sequence (scores (L, H, T, T) and the
    visible-key mask; T may differ between sequences), on the captures' device.

    ⟨U⟩, ⟨S⟩, ⟨F⟩, ⟨C⟩ and S / ln n per head, per layer and for the model come with percentile bootstrap
    intervals at level ``ci`` over ``n_boot`` resamples of whole sequences (seeded by ``seed``), as do the sink
    view's quantities. The C(T) curves, their peaks and the positional views are point estimates.
    """
    check_range("n_boot", n_boot, low=0)
    check_range("ci", ci, low=0, high=1, low_open=True, high_open=True)
    records = [_as_record(c) for c in captures]
    if not records:
        raise TrajectoryError("no attention captures to analyse; capture at least one sequence")
    L, H = records[0].n_layers, records[0].n_heads
    for i, r in enumerate(records):
        if (r.n_layers, r.n_heads) != (L, H):
            raise TrajectoryError(f"capture {i} has (layers, heads) = {(r.n_layers, r.n_heads)}, capture 0 {(L, H)}; "
                                  "analyse one model's captures together")
    per_sequence: dict[str, list[PooledMeans]] = {}
    profiles: dict[str, PooledMeans] = {}
    for r in records:
        cells, prof = _sequence_terms(r, conv)
        for name, cell in cells.items():
            per_sequence.setdefault(name, []).append(cell)
        profiles = {k: profiles[k] + v if k in profiles else v for k, v in prof.items()}
    est = _estimates(per_sequence, L, H, n_boot=n_boot, ci=ci, seed=seed)
    curves = profiles["curve"]  # (n_T, L, H)
    temps = torch.tensor(conv.temperatures, dtype=torch.float64)
    peak = peak_temperature(temps, curves.per_head.cpu())
    model_peak = peak_temperature(temps, curves.model.cpu())
    # Every (layer, head, sequence, query) ensemble in the headline means.
    n_ensembles = int(sum(c.counts.sum() for c in per_sequence["energy"]))
    metrics = {"n_sequences": len(records), "n_layers": L, "n_heads": H, "n_ensembles": n_ensembles,
               "ensemble_temperature": conv.ensemble_temperature, "temperatures": list(conv.temperatures)}
    for name, e in est.items():
        metrics[f"mean_{name}"] = _triple(e["model"])
        metrics[f"per_layer_{name}"] = _triple(e["layer"])
    metrics |= {"heat_curve": curves.model.tolist(), "heat_peak_temperature": float(model_peak.temperature),
                "heat_peak_at_edge": bool(model_peak.at_edge),
                "peak_temperature_per_head": peak.temperature.tolist(), "peak_at_edge_per_head": peak.at_edge.tolist(),
                "n_heads_peak_at_edge": int(peak.at_edge.sum())}
    host = {k: v for k, v in profiles.items() if k != "curve"}
    return ThermoAnalysis(
        metrics=metrics,
        per_head={name: dict(zip(("value", "ci_low", "ci_high"), e["head"])) for name, e in est.items()},
        temperatures=temps.numpy(), heat_curves=curves.per_head.cpu().numpy(),
        peak_temperature=peak.temperature.numpy(), peak_at_edge=peak.at_edge.numpy(),
        by_query_position={k: host[k].per_head.cpu().numpy() for k in ("entropy", "specific_heat")}
        | {"count": host["entropy"].counts.cpu().numpy()},
        by_key_distance={k: host[k].per_head.cpu().numpy() for k in ("mass", "energy")}
        | {"count": host["mass"].counts.cpu().numpy()},
        layer_names=records[0].layer_names, definitions=dict(DEFINITIONS))
