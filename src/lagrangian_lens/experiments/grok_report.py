"""The grokking experiment's tables, figures and report section, from its ``results.json`` and each run's
``metrics.jsonl`` (see :mod:`.grok`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import RunFolderError
from ..provenance import inside
from .plotting import plt, save
from .section import FigureBlock, Section, TableBlock, conventions_table, opening
from .tables import cell, format_table

RESULTS_VERSION = 1  # the layout of results.json; raised when the tables read something new
KIND_STYLE = {"grok": ("#1f5f8b", "-"), "no-weight-decay": ("#d2691e", "--"), "shuffled-labels": ("#7b4f9d", ":")}
HEAT = "#c0392b"


def check_results(results: dict) -> None:
    version = results.get("conventions", {}).get("results_version")
    if version != RESULTS_VERSION:
        raise RunFolderError(f"these grok results are of layout version {version}, not {RESULTS_VERSION}; run the "
                             "grok experiment again into the same folder: finished runs are reused")


def result_rows(results: dict) -> list[list[str]]:
    """One row per run: p, seed, kind, the detected epochs, the lead, and how the run ended."""
    rows = [["run", "p", "seed", "kind", "onset (acc ≥ 0.5)", "grokked (acc ≥ 0.95)", "C peak",
             "lead = onset − peak", "peak precedes onset", "final train acc", "final test acc", "epochs run",
             "epochs/s"]]
    for r in results["runs"]:
        peak = cell(r["heat_peak"]) + (" (at horizon)" if r["peak_at_horizon"] else "")
        rows.append([r["run"], str(r["p"]), str(r["seed"]), r["kind"], cell(r["onset"]), cell(r["grokked"]), peak,
                     cell(r["lead"]), cell(r["peak_precedes_onset"]), f"{r['final_train_acc']:.3f}",
                     f"{r['final_test_acc']:.3f}", str(r["epochs_run"]), cell(r["epochs_per_s"])])
    return rows


def explain_grok(results: dict) -> list[str]:
    """Sentences from the numbers: how many runs grokked, and how often the C peak came first."""
    c, main = results["counts"], [r for r in results["runs"] if r["kind"] == "grok"]
    leads = [r["lead"] for r in main if r["lead"] is not None]
    out = [f"{c['grokked']} of {c['runs']} runs grokked (test accuracy ≥ 0.95 within the budget) and "
           f"{c['with_onset']} reached the onset (≥ 0.5)."]
    if leads:
        out.append(f"The smoothed C peak preceded the onset in {c['peak_precedes_onset']} of the {len(leads)} runs "
                   f"with an onset (median lead {float(np.median(leads)):.0f} epochs, range {min(leads)} to "
                   f"{max(leads)}).")
    for kind, label in (("no-weight-decay", "without weight decay"), ("shuffled-labels", "with shuffled labels")):
        controls = [r for r in results["runs"] if r["kind"] == kind]
        if controls:
            grokked = sum(r["grokked"] is not None for r in controls)
            final = ", ".join(f"{r['final_test_acc']:.2f}" for r in controls)
            out.append(f"The {len(controls)} control run(s) {label} grokked in {grokked} case(s) (final test "
                       f"accuracy {final}).")
    return out


def _metrics(out: Path, run: str) -> dict[str, np.ndarray]:
    path = inside(Path(out) / "runs", run) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    get = lambda key: np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)  # noqa: E731
    return {key: get(key) for key in ("epoch", "train_acc", "test_acc", "C")}


def grok_figures(out: Path, results: dict) -> list[Path]:
    """Accuracy with C on a twin axis, one panel per p (the first seed, and its controls' C); lead time against p."""
    runs = results["runs"]
    moduli = sorted({r["p"] for r in runs})
    cols = min(len(moduli), 3)
    n_rows = -(-len(moduli) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(5.2 * cols, 3.4 * n_rows + 0.6), squeeze=False,
                             layout="constrained")
    handles = {}
    for ax, p in zip(axes.flat, moduli):
        at_p = [r for r in runs if r["p"] == p]
        first = min(r["seed"] for r in at_p)
        twin = ax.twinx()
        for r in (r for r in at_p if r["seed"] == first):
            m = _metrics(out, r["run"])
            colour, style = KIND_STYLE[r["kind"]]
            if r["kind"] == "grok":
                ax.plot(m["epoch"], m["train_acc"], color="0.6", lw=1, label="train acc")
                ax.plot(m["epoch"], m["test_acc"], color="k", lw=1.3, label="test acc")
                if r["onset"] is not None:
                    ax.axvline(r["onset"], color="k", ls=":", lw=0.8)
                if r["heat_peak"] is not None:
                    twin.axvline(r["heat_peak"], color=HEAT, ls=":", lw=0.8)
                twin.plot(m["epoch"], m["C"], color=HEAT, lw=1.2, ls=style, label="C")
            else:
                twin.plot(m["epoch"], m["C"], color=colour, lw=1, ls=style, label=f"C, {r['kind']}")
        ax.set_title(f"p = {p}, seed {first}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        twin.set_ylabel("C (attention specific heat)", color=HEAT)
        for axis in (ax, twin):
            handles.update(zip(*reversed(axis.get_legend_handles_labels())))  # label -> line, once per label
    for ax in list(axes.flat)[len(moduli):]:
        ax.set_visible(False)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=len(handles), fontsize=8)
    paths = [save(fig, Path(out) / "figures" / "accuracy_heat.png")]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    main = [r for r in runs if r["kind"] == "grok"]
    with_lead = [r for r in main if r["lead"] is not None]
    ax.axhline(0, color="0.5", lw=0.8)
    ax.scatter([r["p"] for r in with_lead], [r["lead"] for r in with_lead], color=KIND_STYLE["grok"][0], zorder=3)
    half = 0.03 * (max(moduli) - min(moduli)) + 1.5  # the median bars' half-width, in units of p
    for p in moduli:
        leads = [r["lead"] for r in with_lead if r["p"] == p]
        if leads:
            ax.plot([p - half, p + half], [np.median(leads)] * 2, color="k", lw=2)
    missing = len(main) - len(with_lead)
    ax.set_title(f"lead = onset − C peak (bar: median){f'; {missing} run(s) without onset' if missing else ''}",
                 fontsize=9)
    ax.set_xlabel("p")
    ax.set_ylabel("lead (epochs; > 0: C peak first)")
    paths.append(save(fig, Path(out) / "figures" / "lead_vs_p.png"))
    return paths


def report_section(out: Path, results: dict) -> Section:
    check_results(results)
    return Section(
        "Grokking: the attention's specific heat before generalisation",
        [*opening(explain_grok(results)),
         "A one-layer transformer (no LayerNorm) trains full-batch on a fraction of the pairs of a + b mod p with "
         "AdamW and weight decay; every logged epoch records train and test accuracy and the thermodynamics of its "
         "attention at the '=' query on a fixed probe batch: C = β² Var_p(E) with E = −score, the effective "
         "specific heat. The onset is the first logged epoch with test accuracy ≥ 0.5; the C peak is searched on "
         "the smoothed curve up to the epoch test accuracy reaches 0.95 (else the run's end); lead = onset − peak. "
         "Runs that never reach the onset have no lead. The controls (no weight decay; shuffled labels) show C "
         "where no generalisation happens."],
        [TableBlock("Runs", result_rows(results)), conventions_table(results["conventions"])],
        [FigureBlock(out / "figures" / "accuracy_heat.png",
                     "Train and test accuracy (left axis) and C at the '=' query (right axis), per p; dotted lines: "
                     "the onset (black) and the C peak (red); the controls' C dashed and dotted."),
         FigureBlock(out / "figures" / "lead_vs_p.png", "Lead time (onset − C peak) per run against p.")],
    )


def summary(results: dict) -> str:
    c = results["counts"]
    return "\n".join([format_table(result_rows(results)), "",
                      f"grokked: {c['grokked']}/{c['runs']}; with onset: {c['with_onset']}; "
                      f"C peak precedes onset: {c['peak_precedes_onset']}/{c['with_onset']}"])
