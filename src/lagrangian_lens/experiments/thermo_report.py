"""The thermo experiment's figures, opening sentences, tables and report section, all drawn from the finished runs'
results entries and their ``thermo.npz`` files, so a resumed run draws and reports like a fresh one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..mechanics.separation import SEPARATES
from .definitions import definitions_table
from .explain import Pair, join, metric, name, num, pairs, pct, per_run, times
from .plotting import plt, run_colour, save
from .section import FigureBlock, Section, TableBlock, conventions_table, opening
from .tables import cell, summary_rows

ARRAYS_FILE = "thermo.npz"
# The conventions key of a report run whose model's attention neither capture path reads (its value: why), e.g.
# learned sink logits; such a run has no metrics and no thermo.npz. Models whose layers compute attention inline are
# captured (from their log-probabilities) and are no such runs.
NOT_CAPTURED = "not_captured"
HEADLINE = ("mean_entropy", "mean_normalized_entropy", "mean_specific_heat", "mean_free_energy", "mean_energy",
            "mean_sink_mass", "heat_peak_temperature", "n_heads_peak_at_edge", "n_sequences", "n_ensembles")
DETAIL = ("mean_entropy_without_sinks", "mean_normalized_entropy_without_sinks", "mean_specific_heat_without_sinks",
          "mean_free_energy_without_sinks", "mean_energy_without_sinks", "heat_peak_at_edge", "ensemble_temperature")
# Without a separation verdict (no twin replicates), normalised entropies further apart than this read as a real
# difference in how selectively the two runs attend.
CONCENTRATED = 0.1

DEFINITIONS = [
    ["s_ij, E_ij", "q_i·k_j·scaling (soft-capped where the model caps); E = −s. Captured from log-probabilities: "
     "ln p_ij = s_ij − ln Z_i, so E is known up to a constant per query row",
     "pre-softmax score of query i on key j and its energy"],
    ["p_ij, Z_i", "exp(−E_ij/T)/Z_i over the keys query i sees; Z_i = Σ_j exp(−E_ij/T)",
     "the Boltzmann weights: the model's attention at T = 1"],
    ["mean_energy, per_layer_energy, per_head_energy", "⟨U⟩, U_i = Σ_j p_ij E_ij", "mean energy of a query's ensemble"],
    ["mean_entropy, per_layer_entropy, per_head_entropy", "⟨S⟩, S_i = −Σ_j p_ij ln p_ij (nats)",
     "how spread the attention is: 0 on one key, ln n on n keys evenly"],
    ["mean_normalized_entropy, per_layer_normalized_entropy, per_head_normalized_entropy",
     "⟨S_i / ln n_i⟩ over rows with n_i > 1 visible keys", "entropy against its maximum, in [0, 1]"],
    ["mean_free_energy, per_layer_free_energy, per_head_free_energy", "⟨F⟩, F_i = −T ln Z_i = U_i − T S_i",
     "the minimum of Σ q E + T Σ q ln q over distributions q, reached by p"],
    ["mean_specific_heat, per_layer_specific_heat, per_head_specific_heat", "⟨C⟩, C_i = Var_p(E)/T² = ∂U_i/∂T",
     "how fast attention melts as T rises; 0 for one key or equal scores"],
    ["mean_sink_mass, per_layer_sink_mass, per_head_sink_mass", "⟨Σ_{j ∈ sinks} p_ij⟩ over rows seeing another key",
     "attention mass on the sink keys (sink_positions, by default the first token)"],
    ["*_without_sinks", "the same with the sink keys taken out and p renormalised",
     "the ensemble of the remaining keys"],
    ["heat_curve, heat_peak_temperature, heat_peak_at_edge", "⟨C⟩(T) over the temperature grid, all heads pooled; "
     "its argmax, refined by a parabola in ln T", "where attention changes fastest with temperature"],
    ["peak_temperature_per_head, peak_at_edge_per_head, n_heads_peak_at_edge",
     "the same per head; at_edge: the maximum lies on the grid's first or last temperature",
     "an edge peak is a bound, the curve may rise beyond the grid"],
    ["n_sequences, n_ensembles", "sequences; (layer, head, sequence, query) rows in the means",
     "the sample behind every other number"],
    ["ensemble_temperature", "T of every headline metric", "1 reads the model's own softmax"],
]


# -- figures -----------------------------------------------------------------------------------------------------

def thermo_figures(out: Path, entries: list[dict]) -> list[Path]:
    """Write the three thermo figures into ``out/figures`` from each run's thermo.npz; returns their paths."""
    entries = captured(entries)
    if not entries:
        return []
    data = {e["run"]: dict(np.load(Path(out) / e["run"] / ARRAYS_FILE)) for e in entries}
    fig_dir = Path(out) / "figures"
    return [_heatmaps(entries, data, fig_dir / "thermo_heatmaps.png"),
            _heat_curves(entries, data, fig_dir / "thermo_heat_curves.png"),
            _positional(entries, data, fig_dir / "thermo_positional.png")]


def captured(entries: list[dict]) -> list[dict]:
    """The runs whose attention was captured (all but a report's runs of unsupported architectures)."""
    return [e for e in entries if not (e.get("conventions") or {}).get(NOT_CAPTURED)]


def _heatmaps(entries, data, path):
    """Rows ⟨S⟩, ⟨C⟩ (and sink mass), one column per run, one colour scale per row so runs compare by eye."""
    rows = [(q, label) for q, label in (("entropy", "⟨S⟩"), ("specific_heat", "⟨C⟩"), ("sink_mass", "sink mass"))
            if all(f"per_head.{q}.value" in d for d in data.values())]
    fig, axes = plt.subplots(len(rows), len(entries), figsize=(3.4 * len(entries) + 1, 2.8 * len(rows)),
                             squeeze=False, layout="constrained")
    for r, (q, label) in enumerate(rows):
        values = [data[e["run"]][f"per_head.{q}.value"] for e in entries]  # each (L, H)
        finite = np.concatenate([v[np.isfinite(v)] for v in values])
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        for c, (e, v) in enumerate(zip(entries, values)):
            ax = axes[r, c]
            image = ax.imshow(v, aspect="auto", origin="lower", vmin=low, vmax=high, cmap="viridis")
            ax.set_title(f"{e['run']}\n{label}" if r == 0 else label, fontsize=8)
            ax.set_xlabel("head", fontsize=8)
            ax.set_ylabel("layer", fontsize=8)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=axes[r, :].tolist(), shrink=0.9, label=label)
    return save(fig, path)


def _heat_curves(entries, data, path):
    """Every head's ⟨C⟩(T), coloured by layer, its peak marked; the pooled curve in black."""
    fig, axes = plt.subplots(1, len(entries), figsize=(4.6 * len(entries), 3.6), squeeze=False, sharey=True)
    for ax, e in zip(axes[0], entries):
        d = data[e["run"]]
        t, curves, peaks = d["temperatures"], d["heat_curves"], d["peak_temperature"]  # (n_T,), (n_T, L, H), (L, H)
        colours = plt.get_cmap("viridis")(np.linspace(0, 1, max(curves.shape[1], 2)))
        for layer in range(curves.shape[1]):
            for head in range(curves.shape[2]):
                ax.plot(t, curves[:, layer, head], lw=0.7, alpha=0.5, color=colours[layer])
                if np.isfinite(peaks[layer, head]):
                    y = np.interp(np.log(peaks[layer, head]), np.log(t), curves[:, layer, head])
                    ax.plot(peaks[layer, head], y, "o", ms=2.5, color=colours[layer])
        pooled = e["metrics"].get("heat_curve")
        if pooled is not None:
            ax.plot(t, np.asarray(pooled, dtype=float), "k-", lw=1.8, label="all heads")
            ax.legend(fontsize=7)
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("temperature T (1: the model's softmax)")
        ax.set_title(f"{e['run']} (colour: layer)", fontsize=8)
    axes[0, 0].set_ylabel("⟨C⟩(T)")
    return save(fig, path)


def _pooled(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(L, H, P) per-head means and their counts -> (P,) the mean over every kept value at each position."""
    total = counts.sum((0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.nansum(np.nan_to_num(values) * counts, (0, 1)) / total, np.nan)


def _positional(entries, data, path):
    """S and C by query position, mean attention by key distance, and the sink mass per layer, one line per run."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for i, e in enumerate(entries):
        d, colour = data[e["run"]], run_colour(e, i)
        n_query = d["by_query_position.count"]
        for ax, key in zip(axes[:2], ("entropy", "specific_heat")):
            ax.plot(_pooled(d[f"by_query_position.{key}"], n_query), color=colour, lw=1.2, label=e["run"])
        mass = _pooled(d["by_key_distance.mass"], d["by_key_distance.count"])
        axes[2].plot(np.arange(mass.size), mass, color=colour, lw=1.2, label=e["run"])
        sink = e["metrics"].get("per_layer_sink_mass") or {}
        if sink.get("value") is not None:  # with its interval over sequences where it has one
            value, low, high = (np.asarray([np.nan if x is None else x for x in sink.get(part) or sink["value"]])
                                for part in ("value", "ci_low", "ci_high"))
            axes[3].errorbar(np.arange(value.size), value, yerr=np.clip([value - low, high - value], 0, None),
                             fmt="o-", color=colour, lw=1.2, capsize=3, label=e["run"])
    for ax, (x, y) in zip(axes, (("query position", "⟨S⟩"), ("query position", "⟨C⟩"),
                                 ("key distance (query − key position)", "mean attention weight"),
                                 ("layer", "sink mass"))):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    axes[2].set_yscale("log")
    axes[3].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7)
    return save(fig, path)


# -- opening sentences and tables --------------------------------------------------------------------------------

def explain_thermo(entries: list[dict]) -> list[str]:
    """The section's opening sentences, each chosen by the numbers it quotes."""
    groups = pairs(entries)
    sentences = [s for p in groups for s in (_concentration(p, len(groups) > 1), _heat(p, len(groups) > 1),
                                             _sinks(p, len(groups) > 1)) if s]
    probabilities = [e["run"] for e in entries if (e.get("metrics") or {}).get("not_identified")]
    if probabilities:
        sentences.append(f"For {join(probabilities)}, attention was read from the probabilities (its layers "
                         "compute attention inline, so the scores are not captured), which fix the energies only up "
                         "to a constant per query row: S, C, C(T) and the sink mass are exact, while U and F are not "
                         "identified and are left blank.")
    missing = [f"{e['run']} ({reason})" for e in entries if (reason := (e.get("conventions") or {}).get(NOT_CAPTURED))]
    return sentences + ([f"No attention was captured for {join(missing)}."] if missing else [])


def _concentration(pair: Pair, several: bool) -> str | None:
    ratio = {id(e): r for e in pair.runs() if (r := metric(e, "mean_normalized_entropy")) is not None}
    if not ratio:
        return None
    text = ("As a share of its maximum ln n (n the keys a query sees), attention entropy averages "
            + per_run(pair, several, {k: pct(v) for k, v in ratio.items()}))
    if pair.pretrained is None or pair.random is None or len(ratio) < 2:
        return text + "."
    gap = ratio[id(pair.random)] - ratio[id(pair.pretrained)]
    sep = ((pair.pretrained.get("separation") or {}).get("metrics") or {}).get("mean_normalized_entropy")
    if not (sep["verdict"] == SEPARATES if sep else abs(gap) > CONCENTRATED):
        why = "the bootstrap does not separate them" if sep else "too small to call either more selective"
        return text + f": a gap of {pct(abs(gap))} of the maximum, {why}."
    more = pair.pretrained if gap > 0 else pair.random
    return text + f": {name(pair, more, several)} attends more selectively."


def _heat(pair: Pair, several: bool) -> str | None:
    heat = {id(e): c for e in pair.runs() if (c := metric(e, "mean_specific_heat")) is not None}
    if not heat:
        return None
    text = "The mean specific heat ⟨C⟩ = Var(E)/T² at T = 1 is " + per_run(pair, several,
                                                                         {k: num(v) for k, v in heat.items()})
    both = pair.pretrained is not None and pair.random is not None and len(heat) == 2
    if both and min(heat.values()) > 0:
        big = max(pair.runs(), key=lambda e: heat[id(e)])
        text += f" ({name(pair, big, several)}'s is {times(*heat.values())} larger)"
    peaks = []
    for e in pair.runs():
        t = metric(e, "heat_peak_temperature")
        if t is None:
            continue
        edge = e["metrics"].get("heat_peak_at_edge")
        where = "at the edge of the grid, so possibly beyond it" if edge else \
            ("below" if t < 1 else "above") + " the model's own temperature 1"
        peaks.append(f"T = {num(t)} for {name(pair, e, several)} ({where})")
    return text + (f"; the pooled C(T) peaks at {join(peaks)}." if peaks else ".")


def _sinks(pair: Pair, several: bool) -> str | None:
    mass = {id(e): m for e in pair.runs() if (m := metric(e, "mean_sink_mass")) is not None}
    if not mass:
        return None
    positions = (pair.runs()[0].get("conventions") or {}).get("sink_positions", [0])
    keys = "the first token" if list(positions) == [0] else f"the keys at positions {join([str(p) for p in positions])}"
    return (f"The share of a query's attention on {keys} (the sink view) averages "
            f"{per_run(pair, several, {k: pct(v) for k, v in mass.items()})}.")


def per_layer_rows(entries: list[dict]) -> list[list[str]]:
    """Header and one row per layer: ⟨S⟩, ⟨C⟩ and the sink mass with their intervals, in every run."""
    keys = (("entropy", "⟨S⟩"), ("specific_heat", "⟨C⟩"), ("sink_mass", "sink mass"))
    header = ["layer", *(f"{e['run']}: {label}" for e in entries for _, label in keys)]
    n_layers = max((len((e["metrics"].get("per_layer_entropy") or {}).get("value") or []) for e in entries), default=0)

    def at(entry: dict, key: str, layer: int) -> str:
        m = entry["metrics"].get(f"per_layer_{key}") or {}
        parts = [m.get(part) for part in ("value", "ci_low", "ci_high")]
        if any(p is None or layer >= len(p) for p in parts):
            return "-"
        return cell({part: p[layer] for part, p in zip(("value", "ci_low", "ci_high"), parts)})

    return [header, *([str(layer), *(at(e, key, layer) for e in entries for key, _ in keys)]
                      for layer in range(n_layers))]


def report_section(out: Path, entries: list[dict]) -> Section:
    """The thermo experiment's part of the HTML report."""
    conv = entries[0]["conventions"] if entries else {}
    fig = Path(out) / "figures"
    return Section(
        title="Attention thermodynamics",
        paragraphs=[
            *opening(explain_thermo(entries)),
            "Each query's softmax over the keys it sees is read as a canonical ensemble: energies E = −s from the "
            "pre-softmax scores, Boltzmann weights at temperature T (T = 1 is the model's own attention), and per "
            "query the mean energy U, entropy S, free energy F = U − T·S and specific heat C = Var(E)/T². Every "
            "mean pools (sequence, query) rows per layer and head; intervals are percentile bootstraps over "
            "sequences. The first query positions (skip_query_positions) see too few keys to count. The sink "
            "keys are reported on their own: their attention mass, and the ensemble without them.",
        ],
        tables=[
            TableBlock("Metrics, value [CI]", summary_rows(entries, HEADLINE + DETAIL, "thermo")),
            TableBlock("Per layer, value [CI over sequences]", per_layer_rows(entries)),
            conventions_table(conv, skip=("init",)),
            definitions_table(DEFINITIONS),
        ],
        figures=[
            FigureBlock(fig / "thermo_heatmaps.png", "Per layer × head: ⟨S⟩, ⟨C⟩ and the sink mass, one column per "
                                                     "run on one colour scale per row."),
            FigureBlock(fig / "thermo_heat_curves.png", "⟨C⟩(T) of every head (colour: layer; dots: peaks) and of "
                                                        "all heads pooled; dashed: T = 1."),
            FigureBlock(fig / "thermo_positional.png", "⟨S⟩ and ⟨C⟩ by query position, the mean attention weight by "
                                                       "key distance (sinks included), and the sink mass per layer."),
        ],
    )
