"""Attention thermodynamics of a model's captured attention scores: scores in, metrics out (no I/O).

Each query's softmax over keys read as a canonical ensemble (``mechanics.thermo``): per layer × head, the pooled
row means ⟨U⟩, ⟨S⟩, ⟨F⟩, ⟨C⟩ (and S / ln n_visible) with percentile bootstrap intervals resampling whole sequences;
per-layer and model means; the specific-heat curves ⟨C⟩(T) per head and their peak temperatures; a positional view
(S and C by query position, attention mass and energy by key distance); an attention-sink view (the mass on the
sink keys, and the thermodynamics of the rows renormalised without them); and the bootstrap replicates of the model
means, which a random-twin comparison pairs. The input is any iterable of ``AttentionScores`` (one per sequence),
reduced sequence by sequence as it arrives.

Every mean pools rows: each kept (sequence, query) row weighs the same, so longer sequences weigh more; rows with
no visible key and the first ``skip_query_positions`` queries are left out (the query-position profile keeps every
position: it shows them by construction).

Log-probabilities. Captures of models whose layers bypass the score capture hold ln p (``gauge`` "log-
probabilities"): the energies E_j = −ln p_j + c_i are known up to one constant c_i = −ln Z_i per query row.
Everything a softmax over the row decides is shift-invariant and comes out exact: S, C = β²Var_p(E), the C(T)
sweep (p_j(T) ∝ p_j^{1/T}), the sink mass, S / ln n, S and C by query position, the attention mass by key
distance, and the same without the sinks. U, F and the energy by key distance move with c: they are NaN, their
intervals NaN, their replicates left out, and ``metrics["not_identified"]`` says why (:data:`NOT_IDENTIFIED`).
A visible key whose p is exactly 0 (float underflow; ln p = −inf) gets no weight in any ensemble but still counts
in n and in the pairs by key distance, as it would with the scores. Its true gap to the row's top score is at
least Δ₀ = −ln(p_min / 2) − ln n, p_min the smallest positive float of the model's probabilities (float32:
Δ₀ = 150 ln 2 − ln n ≈ 104 − ln n; bfloat16 ≈ 92.9 − ln n; float16 only ≈ 17.3 − ln n), so leaving it out moves S,
C and the sink mass at T = 1 by amounts of order n_0·Δ₀²·e^{−Δ₀} (< 1e−38 per key in float32), and the C(T)
sweep by at most
    |ΔC(T)| <= n_0 · e^{−Δ₀/T} · max(C(T), (Δ₀/T)²)    for T <= Δ₀/2,
n_0 the row's underflowed keys: per key, in float32 with n <= 1024 (Δ₀ >= 97), < 2e−8 up to T = 4, 1.4e−6 at
T = 5, but 6e−3 at T = 10; the top of the default grid (T = 10) is therefore only approximate for rows with many
underflowed keys. A row whose non-sink keys all underflowed has no ensemble without the sinks and is left out of
the *_without_sinks means.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..checks import check_choice, check_range
from ..errors import ConfigError, TrajectoryError
from ..mechanics.stats import bootstrap_many, replicates
from ..mechanics.thermo import (
    PooledMeans,
    attention_thermo,
    boltzmann_weights,
    bootstrap_pooled_means,
    by_key_distance,
    by_query_position,
    peak_temperature,
    reduce_rows,
)
from ..trajectories.attention_scores import AttentionScores  # the input; importable from here

SINK_MODES = ("separate", "exclude")
DEFAULT_TEMPERATURES = tuple(round(10 ** (-1 + k / 12), 6) for k in range(25))  # 0.1 .. 10, 12 points per decade
# Metric name -> the AttentionThermo property it pools.
QUANTITIES = {"energy": "U", "entropy": "S", "free_energy": "F", "specific_heat": "C",
              "normalized_entropy": "normalized_entropy"}
REPLICATED = (*QUANTITIES, "sink_mass")  # the model means mean_<q> whose bootstrap replicates the analysis returns
# What log-probabilities cannot give, and why: metrics["not_identified"] of such an analysis.
NOT_IDENTIFIED = {
    "U": "U = Σ p E shifts with the unknown constant −ln Z of each query row: log-probabilities fix the energies "
         "only up to it",
    "F": "F = −T ln Z needs the partition function, which normalised probabilities no longer carry",
    "energy_by_key_distance": "a mean of energies over pairs of different query rows mixes their unknown constants",
}
UNIDENTIFIED = ("energy", "free_energy")  # the quantities (and their *_without_sinks) that need the scores


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
        check_range("ensemble_temperature", self.ensemble_temperature, low=0, low_open=True, high=math.inf,
                    high_open=True)
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
    # "mass", "energy", "count": (L, H, D), d = query − key position; "energy" all NaN from log-probabilities
    by_key_distance: dict[str, np.ndarray]
    layer_names: tuple[str, ...] | None = None  # (L,)
    definitions: dict = field(default_factory=dict)  # how each number was computed, in words
    gauge: str = "scores"  # what the captures held (AttentionScores.gauge); "log-probabilities": U and F are NaN
    # mean_<q> -> {"draws": (n_boot,), "units": (B,)}: the model means' bootstrap replicates (draws empty without
    # resamples) and each sequence's own mean, as the runner's random-twin separation reads them
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

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
        sizes = {(parts["draws"].shape, parts["units"].shape) for parts in self.replicates.values()}
        if len(sizes) > 1 or any(len(d) != 1 or len(u) != 1 for d, u in sizes):
            raise TrajectoryError(f"ThermoAnalysis.replicates must all hold draws (n_boot,) and units (B,) of one "
                                  f"size; got shapes {sorted(sizes)}")

    @property
    def scores_known(self) -> bool:
        """Whether the captures held the scores, so U, F and the energy by key distance are identified."""
        return self.gauge == "scores"

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
# Replaces DEFINITIONS["ensemble"] for captures of log-probabilities.
LOG_PROBABILITY_ENSEMBLE = ("E_j = −ln p_j + c (c = −ln Z unknown, one per query row), p = softmax(−E/T) over the "
                            "visible keys; a key with p = 0 (float underflow) carries no weight but counts in n")


def _selection(r: AttentionScores, conv: ThermoConventions):
    """(weighed, keep, sink, mask): the keys that carry weight, the query rows kept in the means, the sink keys and
    the headline's keys of one sequence."""
    s, visible, pos = r.scores, r.mask, r.token_positions  # (L, H, T, T), (L, H, T, T), (T,)
    # Log-probabilities are −inf where p underflowed to 0: such a key weighs nothing, yet it counts in n (S / ln n)
    # and in the pairs by key distance, as it would with the scores.
    weighed = visible if r.scores_known else visible & torch.isfinite(s)
    keep = pos >= conv.skip_query_positions  # (T,) rows in the means
    sink = torch.isin(pos, torch.tensor(conv.sink_positions, dtype=torch.long, device=pos.device))  # (T,) keys
    return weighed, keep, sink, visible & ~sink if conv.sinks == "exclude" else visible


def _ensemble(r: AttentionScores, keys: torch.Tensor, weighed: torch.Tensor, temperature):
    th = attention_thermo(r.scores, keys & weighed, temperature)
    return th if r.scores_known else dataclasses.replace(th, n_visible=keys.sum(-1))


def sequence_specific_heat(capture: AttentionScores, conv: ThermoConventions) -> float:
    """One sequence's headline ⟨C⟩ at ``conv.ensemble_temperature``, pooled over its layers, heads and kept query
    rows: exactly its unit of ``analyse_thermo(...).replicates["mean_specific_heat"]["units"]``, without the C(T)
    sweep and the views that analysis also computes (a small fraction of its cost)."""
    weighed, keep, _, mask = _selection(capture, conv)
    cells = reduce_rows(_ensemble(capture, mask, weighed, conv.ensemble_temperature).C[:, None], keep)
    return float(cells.sums.sum() / cells.counts.sum())


def _sequence_terms(r: AttentionScores, conv: ThermoConventions) -> tuple[dict[str, PooledMeans], dict]:
    """One sequence's pooled cells per quantity ((L, H) sums and counts), and its curve and profile sums."""
    s, visible, pos = r.scores, r.mask, r.token_positions  # (L, H, T, T), (L, H, T, T), (T,)
    weighed, keep, sink, mask = _selection(r, conv)

    def ensemble(keys, temperature=conv.ensemble_temperature):
        return _ensemble(r, keys, weighed, temperature)

    def cells(th, rows=keep, suffix=""):
        return {name + suffix: reduce_rows(getattr(th, prop)[:, None], rows) for name, prop in QUANTITIES.items()}

    th = ensemble(mask)  # per row (L, H, T)
    out = cells(th)
    sweep = ensemble(mask, torch.tensor(conv.temperatures, dtype=torch.float64)).C  # (n_T, L, H, T)
    p = boltzmann_weights(s, mask & weighed, conv.ensemble_temperature)  # (L, H, T, T)
    pairs = (mask & keep[:, None])[:, None]  # (L, 1, H, T, T) visible pairs of kept rows
    profiles = {"curve": reduce_rows(sweep[:, :, None], keep),
                "entropy": by_query_position(th.S[:, None], positions=pos),
                "specific_heat": by_query_position(th.C[:, None], positions=pos),
                "mass": by_key_distance(p[:, None], pairs, pos, pos)}
    if r.scores_known:  # the energy's level is unknown in ln p: no profile rather than one in the gauge ln Z = 0
        profiles["energy"] = by_key_distance(-s[:, None], pairs, pos, pos)
    if conv.sink_positions:
        p_all = p if conv.sinks == "separate" else boltzmann_weights(s, weighed, conv.ensemble_temperature)
        others = visible & ~sink  # the keys left when the sinks are taken out
        chose = (keep & others.any(-1))[:, None]  # (L, 1, H, T) rows that see a key besides the sinks
        out["sink_mass"] = reduce_rows((p_all * sink).sum(-1)[:, None], chose)
        out |= cells(ensemble(others), keep, "_without_sinks")
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


def _model_replicates(per_sequence: dict[str, list[PooledMeans]], *, n_boot: int, ci: float,
                      seed: int) -> dict[str, dict[str, np.ndarray]]:
    """{mean_<q>: {"draws": (n_boot,), "units": (B,)}} of the REPLICATED model means, from each sequence's cells.

    ``stats.bootstrap_many`` resamples with ``resample_indices(B, n_boot, seed)`` on the cells' device, as
    ``bootstrap_pooled_means`` does for the intervals, so the draws' percentiles are the model means' ci_low and
    ci_high (up to float rounding); units are each sequence's pooled mean.
    """
    names = [name for name in REPLICATED if name in per_sequence]
    table = {part: torch.stack([torch.stack([getattr(c, part).sum() for c in per_sequence[name]]) for name in names],
                               dim=1).to(torch.float64) for part in ("sums", "counts")}  # each (B, Q)

    def pooled(i: int):  # (..., B, Q) -> (...) the pooled mean of quantity i over the (resampled) sequences
        return lambda t: t["sums"][..., i].sum(-1) / t["counts"][..., i].sum(-1)

    statistics = {f"mean_{name}": pooled(i) for i, name in enumerate(names)}
    return replicates(bootstrap_many(statistics, table, n_boot=n_boot, ci=ci, seed=seed, keep_draws=True))


def analyse_thermo(captures: Iterable[AttentionScores], conv: ThermoConventions, *, n_boot: int = 1000,
                   ci: float = 0.95, seed: int = 0) -> ThermoAnalysis:
    """Attention thermodynamics of ``captures``, one ``AttentionScores`` per sequence (scores (L, H, T, T) and the
    visible-key mask; T may differ between sequences), on the captures' device.

    ``captures`` may be any iterable, a generator too: each sequence is reduced to its (L, H) sums and counts as it
    arrives and then let go, so a generator that captures batch by batch keeps one batch's scores alive at a time.
    ⟨U⟩, ⟨S⟩, ⟨F⟩, ⟨C⟩ and S / ln n per head, per layer and for the model come with percentile bootstrap
    intervals at level ``ci`` over ``n_boot`` resamples of whole sequences (seeded by ``seed``), as do the sink
    view's quantities; ``replicates`` holds the model means' draws on those resamples. The C(T) curves, their
    peaks and the positional views are point estimates. Captures of log-probabilities give every shift-invariant
    quantity exactly and U, F as NaN (module docstring); captures of both gauges are not analysed together.
    """
    check_range("n_boot", n_boot, low=0)
    check_range("ci", ci, low=0, high=1, low_open=True, high_open=True)
    per_sequence: dict[str, list[PooledMeans]] = {}
    profiles: dict[str, PooledMeans] = {}
    reference, layer_names, gauge = None, None, None  # capture 0's (L, H, blocks) and gauge, which all must share
    # No enumerate(): its cached (index, item) pair would keep the previous capture alive while the next is made.
    for capture in captures:
        i = len(per_sequence.get("energy", ()))  # the capture's index: the sequences reduced before it
        if not isinstance(capture, AttentionScores):
            raise TrajectoryError(f"capture {i} is a {type(capture).__name__}, not an AttentionScores; build it with "
                                  "trajectories.attention.capture_attention or AttentionScores(scores, visible)")
        shape = (capture.n_layers, capture.n_heads, capture.layers)
        if reference is None:
            reference, layer_names, gauge = shape, capture.layer_names, capture.gauge
        elif shape != reference:
            raise TrajectoryError(f"capture {i} has (layers, heads) = {shape[:2]} at blocks {shape[2]}, capture 0 "
                                  f"{reference[:2]} at blocks {reference[2]}; analyse one model's captures together")
        elif capture.gauge != gauge:
            raise TrajectoryError(f"capture {i} holds {capture.gauge}, capture 0 {gauge}: U and F exist for one and "
                                  "not the other; analyse captures of one gauge (one capture path) together")
        cells, prof = _sequence_terms(capture, conv)
        del capture  # the reduction keeps nothing of the scores: let them go before the next capture is made
        for name, cell in cells.items():
            per_sequence.setdefault(name, []).append(cell)
        profiles = {k: profiles[k] + v if k in profiles else v for k, v in prof.items()}
    if reference is None:
        raise TrajectoryError("no attention captures to analyse; capture at least one sequence")
    L, H, _ = reference
    est = _estimates(per_sequence, L, H, n_boot=n_boot, ci=ci, seed=seed)
    identified = {name: gauge == "scores" or name.removesuffix("_without_sinks") not in UNIDENTIFIED
                  for name in per_sequence}
    for name in (name for name, known in identified.items() if not known):  # NaN, never a number in ln Z = 0
        est[name] = {level: [np.full_like(x, math.nan) if isinstance(x, np.ndarray) else math.nan for x in parts]
                     for level, parts in est[name].items()}
    curves = profiles["curve"]  # (n_T, L, H)
    temps = torch.tensor(conv.temperatures, dtype=torch.float64)
    peak = peak_temperature(temps, curves.per_head.cpu())
    model_peak = peak_temperature(temps, curves.model.cpu())
    # Every (layer, head, sequence, query) ensemble in the headline means.
    n_ensembles = int(sum(c.counts.sum() for c in per_sequence["energy"]))
    metrics = {"n_sequences": len(per_sequence["energy"]), "n_layers": L, "n_heads": H, "n_ensembles": n_ensembles,
               "ensemble_temperature": conv.ensemble_temperature, "temperatures": list(conv.temperatures)}
    for name, e in est.items():
        metrics[f"mean_{name}"] = _triple(e["model"])
        metrics[f"per_layer_{name}"] = _triple(e["layer"])
    metrics |= {"heat_curve": curves.model.tolist(), "heat_peak_temperature": float(model_peak.temperature),
                "heat_peak_at_edge": bool(model_peak.at_edge),
                "peak_temperature_per_head": peak.temperature.tolist(), "peak_at_edge_per_head": peak.at_edge.tolist(),
                "n_heads_peak_at_edge": int(peak.at_edge.sum())}
    definitions = dict(DEFINITIONS)
    if gauge != "scores":
        metrics["not_identified"] = dict(NOT_IDENTIFIED)
        definitions["ensemble"] = LOG_PROBABILITY_ENSEMBLE
    host = {k: v for k, v in profiles.items() if k != "curve"}
    mass = host["mass"].per_head.cpu().numpy()  # (L, H, D)
    energy = host["energy"].per_head.cpu().numpy() if "energy" in host else np.full_like(mass, math.nan)
    return ThermoAnalysis(
        metrics=metrics,
        per_head={name: dict(zip(("value", "ci_low", "ci_high"), e["head"])) for name, e in est.items()},
        temperatures=temps.numpy(), heat_curves=curves.per_head.cpu().numpy(),
        peak_temperature=peak.temperature.numpy(), peak_at_edge=peak.at_edge.numpy(),
        by_query_position={k: host[k].per_head.cpu().numpy() for k in ("entropy", "specific_heat")}
        | {"count": host["entropy"].counts.cpu().numpy()},
        by_key_distance={"mass": mass, "energy": energy, "count": host["mass"].counts.cpu().numpy()},
        layer_names=layer_names, definitions=definitions, gauge=gauge,
        replicates=_model_replicates({k: v for k, v in per_sequence.items() if identified[k]}, n_boot=n_boot, ci=ci,
                                     seed=seed))
