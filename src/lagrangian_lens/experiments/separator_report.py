"""The separator's tables, figures and report section, from its ``results.json`` (see :mod:`.separator`).

Every R² shown is ``r2_centered`` (the paper's definition, the headline) unless a column says otherwise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.papers import SEPARATOR_MODELS, paper_values
from ..errors import RunFolderError
from .plotting import plt, save
from .section import FigureBlock, Section, TableBlock, opening
from .tables import format_table

# The version of the fits and of the results' layout: raised whenever the fits compute something new, so cached
# fits of an older version are redone (it enters their cache keys) and older results are refused by the report.
FIT_VERSION = 2
COLOURS = {"splm": "#2a9d8f", "splm_ln": "#8ab17d", "gpt": "#e76f51", "pretrained": "#264653"}
LABELS = {"splm": "SPLM", "splm_ln": "SPLM (LN after step)", "gpt": "GPT", "pretrained": "pretrained"}
# The predictors of the baseline table: (results key, label), along depth and along tokens.
DEPTH_PREDICTORS = (("fit", "shared V_ψ"), ("velocity_only", "velocity only"), ("mean_step", "mean step"),
                    ("static_null", "static null"), ("linear_reference", "linear reference"))
TOKEN_PREDICTORS = DEPTH_PREDICTORS[:4]


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _median(entry: dict, key: str = "r2_centered") -> str:
    return _num(entry[key]["median"])


def _gain(gain: dict | None) -> str:
    if gain is None:
        return "-"
    return f"{gain['mean']:.4f} ± {gain['std']:.4f}; {gain['max_abs_dev']:.4f}"


def _paper(name: str, r: dict) -> str:
    """The paper's median R² for this model, or for its stand-in (labelled), from ``data.papers``."""
    model = SEPARATOR_MODELS.get(name, r.get("source", ""))
    return paper_values("separator", model, "pretrained").get("r2_centered", "-")


def _symmetry_gaps(r: dict) -> str:
    pooled = r.get("symmetry", {}).get("gap")
    per_layer = r.get("symmetry_per_layer", {}).get("gap_median")
    return f"{_num(pooled)} / {_num(per_layer)}"


def summary_rows(results: dict) -> list[list[str]]:
    """One row per model: the headline fit, its baselines, symmetry, token axis, final-norm gain, capacity."""
    rows = [["model", "R² centred (median)", "paper", "R² uncentred (median)", "force R²", "middle band (centred / uncentred)",
             "velocity-only", "mean step", "static null", "linear reference", "shape",
             "symmetry gap (pooled / per-layer median)", "token axis (R² / force R²)",
             "final-norm gain (mean ± std; max |g − 1|)", "capacity sweep (params: R²)"]]
    for name, r in results["models"].items():
        fit, token = r["fit"], r["token_axis"]["fit"]
        sweep = ", ".join(f"{s['n_params']}: {_median(s)}" for s in r["capacity_sweep"])
        rows.append([name, _median(fit), _paper(name, r), _median(fit, "r2_uncentered"), _median(fit, "force_r2"),
                     f"{_num(fit['r2_centered']['middle_mean'])} / {_num(fit['r2_uncentered']['middle_mean'])}",
                     _median(r["velocity_only"]), _median(r["mean_step"]), _median(r["static_null"]),
                     _median(r["linear_reference"]), fit["shape"], _symmetry_gaps(r),
                     f"{_median(token)} / {_median(token, 'force_r2')}", _gain(r.get("final_norm_gain")), sweep])
    return rows


def _baseline_row(model: str, axis: str, label: str, entry: dict) -> list[str]:
    return [model, axis, label, _median(entry), _num(entry["r2_centered"]["middle_mean"]),
            _median(entry, "r2_uncentered"), _num(entry["r2_uncentered"]["middle_mean"]), _median(entry, "force_r2")]


def baseline_rows(results: dict) -> list[list[str]]:
    """One row per model, axis and predictor, with both R² definitions (median and middle band) and force R²."""
    rows = [["model", "axis", "predictor", "R² centred", "middle band", "R² uncentred", "middle band", "force R²"]]
    for name, r in results["models"].items():
        rows += [_baseline_row(name, "depth", label, r[key]) for key, label in DEPTH_PREDICTORS]
        for key, label in (("with_position_0", "linear reference, position 0 kept"),
                           ("without_position_0", "linear reference, position 0 dropped")):
            rows.append(_baseline_row(name, "depth", label, r["position_zero"][key]))
        rows += [_baseline_row(name, "tokens", label, r["token_axis"][key]) for key, label in TOKEN_PREDICTORS]
    return rows


def oracle_rows(results: dict) -> list[list[str]]:
    """One row per SPLM: its own V_θ in the fit, against the paper's figure and the α, β its constants imply."""
    rows = [["model", "R² centred (median)", "R² uncentred (median)", "paper's figure", "α per layer (expected)",
             "β per layer (expected)"]]
    for name, o in results["oracle"].items():
        rows.append([LABELS[name], _median(o), _median(o, "r2_uncentered"), _num(o.get("paper_r2"), 3),
                     f"{', '.join(f'{a:.4f}' for a in o['alpha'])} ({o['alpha_expected']:.4f})",
                     f"{', '.join(f'{b:.4f}' for b in o['beta'])} ({o['beta_expected']:.4f})"])
    return rows


def separator_figures(out: Path, results: dict) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for name, r in results["models"].items():
        per_layer = r["fit"]["r2_centered"]["per_layer"]
        layers = (np.arange(len(per_layer)) + 0.5) / len(per_layer)  # fit layers at the centres of their depth bins
        ax.plot(layers, per_layer, "-o", ms=3, color=COLOURS[name], label=f"{name}: shared V_ψ")
        ax.plot(layers, r["velocity_only"]["r2_centered"]["per_layer"], "--x", ms=4, color=COLOURS[name], alpha=0.6,
                label=f"{name}: velocity only")
    ax.set_xlabel("relative depth")
    ax.set_ylabel("test R² per layer (centred)")
    ax.legend(fontsize=7)
    paths = [save(fig, out / "figures" / "r2_profiles.png")]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, r in results["models"].items():
        sweep = r["capacity_sweep"]
        ax.plot([s["n_params"] for s in sweep], [s["r2_centered"]["median"] for s in sweep], "-o",
                color=COLOURS[name], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("V_ψ parameters")
    ax.set_ylabel("median test R² (centred)")
    ax.legend(fontsize=8)
    paths.append(save(fig, out / "figures" / "capacity_sweep.png"))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(results["models"])
    for offset, (key, stat, label) in enumerate((("symmetry", "gap", "pooled"),
                                                 ("symmetry_per_layer", "gap_median", "per-layer median"))):
        gaps = [results["models"][n].get(key, {}).get(stat) for n in names]
        if any(g is not None for g in gaps):
            ax.bar(np.arange(len(names)) + 0.4 * offset - 0.2, [g or 0.0 for g in gaps], width=0.4, label=label,
                   color=[COLOURS[n] for n in names], alpha=1.0 - 0.4 * offset)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("R²(free) − R²(symmetric M)")
    ax.legend(fontsize=8)
    paths.append(save(fig, out / "figures" / "symmetry_gaps.png"))
    return paths


def check_results(results: dict) -> None:
    """Results written by an older version of the fits lack fields the tables read: refuse them, saying the fix."""
    version = results.get("conventions", {}).get("fit_version", 1)
    if version < FIT_VERSION:
        raise RunFolderError(f"these separator results are of fit version {version}, older than {FIT_VERSION}: they "
                             "lack r2_centered, force_r2 and the newer tests. Run the separator again into the same "
                             "folder: its trained models and depth trajectories are reused, only the fits are redone")


GOOD_FIT = 0.9  # a median centred R² at or above this reads as "one shared potential explains the steps"
SMALL_FORCE = 0.1  # a force R² below this: V_ψ adds little beyond the velocity-only baseline


def explain_separator(results: dict) -> list[str]:
    """Two or three sentences from the numbers: which models one shared potential explains, and whether V_ψ adds
    anything beyond inertia. Every clause is decided by the numbers it quotes."""
    rows = []
    for name, r in results["models"].items():
        fit = r["fit"]
        rows.append((LABELS.get(name, name), fit["r2_centered"]["median"], fit["force_r2"]["median"]))
    if not rows:
        return []
    listed = "; ".join(f"{label} {r2:.3f} (force R² {force:.3f})" for label, r2, force in rows)
    good = [label for label, r2, _ in rows if r2 >= GOOD_FIT]
    weak = [label for label, _, force in rows if force < SMALL_FORCE]
    sentences = [f"Median centred test R² of the shared V_ψ fit: {listed}."]
    sentences.append(f"One shared potential explains the layer steps (R² ≥ {GOOD_FIT}) of {', '.join(good)} only."
                     if good else f"No model's layer steps reach R² {GOOD_FIT} under one shared potential.")
    if weak:
        sentences.append(f"For {', '.join(weak)} the potential adds little beyond the velocity-only baseline "
                         f"(force R² < {SMALL_FORCE}): what R² there is comes mostly from α·v, not from a force.")
    return sentences


def report_section(out: Path, results: dict) -> Section:
    check_results(results)
    c = results["conventions"]
    return Section(
        "Shared-potential separator",
        [*opening(explain_separator(results)),
         "Δx_l ≈ α_l v_l − β_l ∇V_ψ(x_l) with one V_ψ for all layers, scored on held-out passages. R² centred "
         "(r2_centered) is the paper's definition, SS_tot centred on each layer's mean step, and the headline; R² "
         "uncentred (r2_uncentered) takes SS_tot = Σ‖Δx‖², against the static null, and so credits any fit for "
         "reproducing the mean step. force R² = (R²_fit − R²_velocity-only)/(1 − R²_velocity-only) is what V_ψ adds "
         "beyond inertia (the same under both definitions); the middle band is the mean over the middle third of "
         f"the layers. States centred per {c['centering']!r}; the first {c['skip_positions']} position(s) "
         "dropped (the baseline table shows what position 0 carries). The token axis runs the same fit along "
         "positions at every layer (one V_ψ, α_ℓ and β_ℓ per layer). The final-norm gain is measured on the norm "
         "before the read-out (- where there is none). The oracle plugs each SPLM's own V_θ into the same fit."],
        [TableBlock("Models (R² centred unless stated)", summary_rows(results)),
         TableBlock("Baselines: every predictor, both R² definitions", baseline_rows(results)),
         TableBlock("Oracle (SPLM)", oracle_rows(results))],
        [FigureBlock(out / "figures" / "r2_profiles.png",
                     "Per-layer test R² (centred) of the shared fit and the velocity-only baseline."),
         FigureBlock(out / "figures" / "capacity_sweep.png", "Median R² (centred) against V_ψ size."),
         FigureBlock(out / "figures" / "symmetry_gaps.png", "Jacobian-symmetry gaps in PCA coordinates.")],
    )


def summary(results: dict) -> str:
    lines = [format_table(summary_rows(results)), format_table(baseline_rows(results))]
    for name, o in results["oracle"].items():
        paper = f" (the paper: {o['paper_r2']:.3f})" if o.get("paper_r2") is not None else ""
        lines.append(f"oracle on {LABELS[name]}: median R² centred {_median(o)}, uncentred "
                     f"{_median(o, 'r2_uncentered')}{paper}; α {np.round(o['alpha'], 4).tolist()} (expected "
                     f"{o['alpha_expected']:.4f}); β {np.round(o['beta'], 4).tolist()} (expected "
                     f"{o['beta_expected']:.4f})")
    return "\n\n".join(lines)
