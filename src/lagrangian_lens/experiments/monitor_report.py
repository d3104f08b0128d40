"""The monitor experiment's tables, figures, report section and printed summary, read from results.json and the
scores files beside it (so a resumed run reports exactly as a fresh one).

Figures per model (PNG + SVG): ROC curves per anomaly type for the best method, one curve per feature set (the
perplexity baseline dashed); histograms of the anomaly scores of each type against the in-distribution test set;
one spliced sequence token by token under each stream kind (prefix, window, CUSUM), with its splice, the
threshold, the first alarm and the change point marked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..provenance import read_json
from .monitor_eval import BASELINE, HIGHER, LOWER
from .plotting import plt, save
from .section import FigureBlock, Section, TableBlock, TextBlock, conventions_table
from .tables import format_table

TITLE = "Energy anomaly monitor"
FIGURES = ("monitor_roc", "monitor_scores", "monitor_trace")  # each followed by "-<run>.png"
EXAMPLE_CHARS = 700  # past the splice of the spliced example (at 35-65 % of 128 tokens)


def number(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def interval(row: dict) -> str:
    """``+0.09 [0.03, 0.15]`` (the interval only when one was drawn)."""
    core = f"{row['difference']:+.3f}"
    return core if row["ci_low"] is None else f"{core} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def figure_path(out: Path, name: str, run: str) -> Path:
    return Path(out) / "figures" / f"{name}-{run}.png"


def _scores(out: Path, run: str) -> dict | None:
    path = Path(out) / "scores" / f"{run}.json"
    return read_json(path) if path.is_file() else None


def energy_set(results: dict) -> str | None:
    """The feature set compared with the baseline in the figures and sentences: 'energy' when run, else the first
    non-baseline set."""
    sets = [fs for fs in results["feature_sets"] if fs != BASELINE]
    return "energy" if "energy" in sets else (sets[0] if sets else None)


def roc_curve(normal: np.ndarray, anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every threshold 'anomaly score >= s', from (0, 0) to (1, 1)."""
    cuts = np.unique(np.concatenate([normal, anomalous]))[::-1]
    fpr = np.array([0.0, *((normal >= c).mean() for c in cuts)])
    tpr = np.array([0.0, *((anomalous >= c).mean() for c in cuts)])
    return fpr, tpr


def monitor_figures(out: Path, results: dict) -> list[Path]:
    """Every model's ROC, score and trace figures (the trace when a streaming monitor ran); [] without evaluate."""
    written = []
    for run, entry in results["models"].items():
        scores, evaluation = _scores(out, run), entry.get("evaluation")
        if scores is None or evaluation is None:
            continue
        method, test = evaluation["best_method"], "test"
        sets = [fs for fs in results["feature_sets"] if fs in scores["sets"]]
        kinds = results["anomalies"]
        fig, axes = plt.subplots(2, (len(kinds) + 1) // 2, figsize=(3.4 * ((len(kinds) + 1) // 2), 6.4), squeeze=False)
        for ax, kind in zip(axes.flat, kinds):
            for fs in sets:
                s = scores["sets"][fs][method]
                fpr, tpr = roc_curve(np.array(s[test]), np.array(s[kind]))
                ax.plot(fpr, tpr, "--" if fs == BASELINE else "-", label=fs, lw=1.2)
            ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
            ax.axvline(results["conventions"]["target_fpr"], color="k", lw=0.6, alpha=0.5)
            ax.set_title(kind, fontsize=9)
            ax.set_xlabel("false-positive rate", fontsize=8)
            ax.set_ylabel("true-positive rate", fontsize=8)
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{entry['model']}: ROC per anomaly type ({method})", fontsize=10)
        written.append(save(fig, figure_path(out, FIGURES[0], run)))
        written.append(_histograms(out, run, entry, scores, results, method))
        if scores["traces"]:
            written.append(_trace(out, run, entry, scores, method))
    return written


def _histograms(out, run, entry, scores, results, method) -> Path:
    fs = energy_set(results) or BASELINE
    s, kinds = scores["sets"][fs][method], results["anomalies"]
    fig, axes = plt.subplots(2, (len(kinds) + 1) // 2, figsize=(3.4 * ((len(kinds) + 1) // 2), 6.0), squeeze=False)
    threshold = scores["thresholds"][fs][method]
    for ax, kind in zip(axes.flat, kinds):
        both = np.concatenate([s["test"], s[kind]])
        log = both.min() > 0 and both.max() > 100 * both.min()  # a Mahalanobis distance can span decades
        bins = np.geomspace(both.min(), both.max(), 30) if log else np.linspace(both.min(), both.max(), 30)
        ax.hist(s["test"], bins, alpha=0.6, label="in-distribution test")
        ax.hist(s[kind], bins, alpha=0.6, label=kind)
        ax.axvline(threshold, color="k", lw=0.8, ls="--", label="threshold")
        if log:
            ax.set_xscale("log")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("anomaly score", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{entry['model']}: anomaly scores, {fs} features ({method})", fontsize=10)
    return save(fig, figure_path(out, FIGURES[1], run))


def _trace(out, run, entry, scores, method) -> Path:
    """One spliced sequence token by token: a row per stream kind, a column per streaming feature set."""
    kinds = [k for k in ("prefix", "window", "cusum") if k in scores["traces"]]
    sets = list(dict.fromkeys(fs for k in kinds for fs in scores["traces"][k]))
    fig, axes = plt.subplots(len(kinds), len(sets), figsize=(5.2 * len(sets), 2.5 * len(kinds)), squeeze=False,
                             sharex=True)
    for (i, kind), (j, fs) in ((a, b) for a in enumerate(kinds) for b in enumerate(sets)):
        ax, by_method = axes[i, j], scores["traces"][kind].get(fs, {})
        trace = by_method.get(method) or next(iter(by_method.values()), None)
        if trace is None:
            ax.set_visible(False)
            continue
        ax.plot(trace["tokens"], trace["scores"], lw=1.2, label=f"{kind} score")
        ax.axvline(trace["splice"], color="tab:red", lw=1, label="splice (first pasted token)")
        ax.axhline(trace["threshold"], color="k", lw=0.8, ls="--", label="threshold")
        if trace["first_alarm"] is not None:
            ax.axvline(trace["first_alarm"], color="tab:orange", lw=1, ls=":", label="first alarm")
        if trace.get("change_point") is not None:
            ax.axvline(trace["change_point"], color="tab:green", lw=1, ls="-.", label="change point")
        if min(trace["scores"]) > 0 and max(trace["scores"]) > 100 * min(trace["scores"]):
            ax.set_yscale("log")
        ax.set_title(f"{kind}, {fs}", fontsize=9)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("last token read", fontsize=8)
    fig.suptitle(f"{entry['model']}: one spliced sequence token by token ({method})", fontsize=10)
    return save(fig, figure_path(out, FIGURES[2], run))


def auroc_rows(results: dict, entry: dict) -> list[list[str]]:
    """One row per (anomaly, method), one column per feature set: AUROC (TPR at the target FPR; at the calibrated
    threshold)."""
    sets = results["feature_sets"]
    cells = {(r["anomaly"], r["method"], r["feature_set"]): r for r in entry["evaluation"]["table"]}
    rows = [["anomaly", "method", *sets]]
    for kind in results["anomalies"]:
        for m in results["methods"]:
            rows.append([kind, m, *(f"{number(c['auroc'])} ({number(c['tpr_at_fpr'])}; {number(c['tpr_calibrated'])})"
                                    for c in (cells[(kind, m, fs)] for fs in sets))])
    return rows


def monitor_rows(entry: dict) -> list[list[str]]:
    """One row per saved monitor: a sequence monitor (threshold on whole sequences) or a stream monitor (threshold
    on each held-out trace's worst row), with its realised FPR on the in-distribution test set when evaluated (for
    a stream monitor: the share of test traces that alarm anywhere)."""
    evaluation = entry.get("evaluation") or {}
    realised = {(r["feature_set"], r["method"], "sequence"): r["realised_fpr"] for r in evaluation.get("monitors", [])}
    realised |= {(r["feature_set"], r["method"], r["kind"]): r["normal_alarmed"]
                 for r in evaluation.get("localisation", [])}
    rows = [["feature set", "method", "kind", "threshold", "realised FPR (test)", "file"]]
    for mon in entry["monitors"]:
        rows.append([mon["feature_set"], mon["method"], mon["kind"], number(mon["threshold"], 4),
                     number(realised.get((mon["feature_set"], mon["method"], mon["kind"]))), mon["file"]])
    return rows


def localisation_rows(entry: dict) -> list[list[str]]:
    rows = [["stream kind", "feature set", "method", "AUROC (trace peaks)", "spliced", "detected (alarm ≥ splice)",
             "early alarm", "median |alarm − splice|", "median |change − splice|", "chance |error|", "median delay",
             "test traces alarmed"]]
    for r in entry["evaluation"]["localisation"]:
        rows.append([r["kind"], r["feature_set"], r["method"], number(r["auroc"]), str(r["n"]), number(r["detected"]),
                     number(r["early"]), number(r["median_abs_error"]), number(r.get("median_abs_change_error")),
                     number(r.get("chance_abs_error")), number(r["median_delay"]), number(r["normal_alarmed"])])
    return rows


def comparison_rows(results: dict, entry: dict) -> list[list[str]]:
    """Per anomaly type, every feature set's AUROC minus the perplexity baseline's (the best method), with its
    paired bootstrap interval: '+' where the set is higher beyond the interval, '−' where the baseline is."""
    evaluation = entry["evaluation"]
    method = evaluation["best_method"]
    cells = {(r["anomaly"], r["feature_set"]): r for r in evaluation["comparison"] if r["method"] == method}
    sets = [fs for fs in results["feature_sets"] if fs != BASELINE]
    mark = {HIGHER: " +", LOWER: " −"}
    rows = [["anomaly", *(f"{fs} − {BASELINE}" for fs in sets)]]
    for kind in results["anomalies"]:
        rows.append([kind, *(interval(c) + mark.get(c["verdict"], "") if c else "-"
                             for c in (cells.get((kind, fs)) for fs in sets))])
    return rows


def twin_rows(results: dict) -> list[list[str]]:
    """Per trained model with its random-weight twin evaluated beside it: each anomaly type and feature set's AUROC
    for both (the trained model's best method), and whether training separates them."""
    rows = [["model", "anomaly", "feature set", "AUROC trained", "AUROC random twin", "difference [95 % CI]",
             "separates"]]
    for pair in results.get("twins", []):
        entry = results["models"][pair["trained"]]
        method = entry["evaluation"]["best_method"]
        for r in (r for r in pair["comparison"] if r["method"] == method):
            rows.append([entry["model"], r["anomaly"], r["feature_set"], number(r["auroc"]),
                         number(r["baseline_auroc"]), interval(r),
                         {HIGHER: "yes, trained higher", LOWER: "yes, twin higher"}.get(r["verdict"], "no")])
    return rows


def comparison_sentences(results: dict, entry: dict) -> list[str]:
    """Per anomaly type, whether the energy features beat the perplexity baseline (the best method)."""
    evaluation, fs = entry["evaluation"], energy_set(results)
    method = evaluation["best_method"]
    rows = [r for r in evaluation["comparison"] if r["feature_set"] == fs and r["method"] == method]
    if not rows:
        return [f"No comparison with the perplexity baseline: run the feature sets {BASELINE} and another."]
    level = f"{rows[0]['ci']:.0%} bootstrap interval over sequences" if rows[0]["ci_low"] is not None else "no interval"
    out = [f"{entry['model']}, {method} ({level}), {fs} features against the perplexity baseline:"]
    for r in rows:
        a, b = number(r["auroc"]), number(r["baseline_auroc"])
        if r["verdict"] == HIGHER:
            out.append(f"{r['anomaly']}: energy beats perplexity (AUROC {a} against {b}, {interval(r)}).")
        elif r["verdict"] == LOWER:
            out.append(f"{r['anomaly']}: energy does not beat perplexity, which is higher (AUROC {a} against {b}, "
                       f"{interval(r)}).")
        else:
            out.append(f"{r['anomaly']}: no clear difference (AUROC {a} against {b}, {interval(r)}).")
    wins = sum(r["verdict"] == HIGHER for r in rows)
    out.append(f"Energy beats the baseline on {wins} of {len(rows)} anomaly types.")
    return out


def status_sentences(results: dict, entry: dict) -> list[str]:
    """The realised FPR at the calibrated threshold, and the splice localisation of the streaming monitors."""
    evaluation = entry["evaluation"]
    method, target = evaluation["best_method"], results["conventions"]["target_fpr"]
    out = [f"At thresholds calibrated to {target:.0%} FPR on held-out paragraphs, the in-distribution test set's "
           f"realised FPR is " + ", ".join(f"{r['realised_fpr']:.1%} ({r['feature_set']})"
                                            for r in evaluation["monitors"] if r["method"] == method) + f" ({method})."]
    for r in (r for r in evaluation["localisation"] if r["method"] == method):
        delay = "" if r["median_delay"] is None else f" (median delay {number(r['median_delay'])} tokens)"
        error = "" if r["median_abs_error"] is None else f"; median |alarm − splice| {number(r['median_abs_error'])}"
        if r.get("median_abs_change_error") is not None:
            error += f", median |change point − splice| {number(r['median_abs_change_error'])}"
        if r.get("chance_abs_error") is not None:
            error += f" (a uniform guess: {number(r['chance_abs_error'])})"
        out.append(f"Token by token ({r['kind']}, {r['feature_set']}; threshold calibrated so that {target:.0%} of "
                   f"held-out traces alarm), {r['detected']:.0%} of {r['n']} spliced sequences alarm at or after the "
                   f"splice{delay} and {r['early']:.0%} before it{error}; {r['normal_alarmed']:.0%} of "
                   f"in-distribution test sequences alarm somewhere; trace-peak AUROC {number(r['auroc'])}.")
    return out


def report_section(out: Path, results: dict) -> Section:
    intro = (f"A density model of per-sequence energy features (fitted on {results['conventions']['n_calibration']} "
             f"WikiText-2 paragraphs of {results['conventions']['tokens']} tokens, its threshold calibrated on "
             f"{results['conventions']['n_heldout']} held-out ones) flags text whose trajectory is unusual. "
             "The perplexity set (mean log point-perplexity alone) is the baseline energy has to beat.")
    paragraphs, tables, figures, texts = [intro], [], [], []
    for run, entry in results["models"].items():
        tables.append(TableBlock(f"{entry['model']}: monitors", monitor_rows(entry)))
        if entry.get("evaluation") is None:
            paragraphs.append(f"{entry['model']}: fitted and calibrated only; run with --evaluate for the anomaly sets.")
            continue
        paragraphs += [" ".join(comparison_sentences(results, entry)), " ".join(status_sentences(results, entry))]
        tables.append(TableBlock(f"{entry['model']}: AUROC (TPR at {results['conventions']['target_fpr']:.0%} FPR; "
                                 "TPR at the calibrated threshold)", auroc_rows(results, entry)))
        if entry["evaluation"]["comparison"]:
            tables.append(TableBlock(f"{entry['model']}: each feature set against the perplexity baseline "
                                     f"({entry['evaluation']['best_method']}; AUROC difference, 95 % paired bootstrap "
                                     "interval)", comparison_rows(results, entry)))
        if entry["evaluation"]["localisation"]:
            tables.append(TableBlock(f"{entry['model']}: splice localisation", localisation_rows(entry)))
        for name, caption in zip(FIGURES, ("ROC curves per anomaly type, one per feature set, the perplexity "
                                           "baseline dashed.",
                                           "Anomaly scores of each type against the in-distribution test set.",
                                           "One spliced sequence token by token under each stream kind: the splice, "
                                           "the threshold, the first alarm and (CUSUM) the change point.")):
            if figure_path(out, name, run).is_file():
                figures.append(FigureBlock(figure_path(out, name, run), f"{entry['model']}: {caption}"))
        texts += [TextBlock(f"{entry['model']}: first sequence of {name}", text[:EXAMPLE_CHARS])
                  for name, text in entry.get("examples", {}).items()]
    if results.get("twins"):
        tables.append(TableBlock("Trained model against its random-weight twin (same sequences; paired bootstrap)",
                                 twin_rows(results)))
    used = {n for names in results["feature_sets"].values() for n in names}
    tables.append(TableBlock("Features", [["feature", "definition"],
                                          *([k, v] for k, v in results["features"].items() if k in used)]))
    tables.append(conventions_table(results["conventions"]))
    return Section(TITLE, paragraphs, tables, figures, texts)


def summary(results: dict) -> str:
    parts = []
    for entry in results["models"].values():
        parts.append(format_table(monitor_rows(entry)))
        if entry.get("evaluation") is not None:
            parts += [format_table(auroc_rows(results, entry)), "\n".join(comparison_sentences(results, entry)),
                      "\n".join(status_sentences(results, entry))]
            if entry["evaluation"]["comparison"]:
                parts.append(format_table(comparison_rows(results, entry)))
            if entry["evaluation"]["localisation"]:
                parts.append(format_table(localisation_rows(entry)))
    if results.get("twins"):
        parts.append(format_table(twin_rows(results)))
    return "\n\n".join(parts) + ("" if results["complete"] else "\n\n(incomplete: run the same command to resume)")

