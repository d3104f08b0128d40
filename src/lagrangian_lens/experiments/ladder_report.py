"""The SPLM-family ladder's numbers across seeds, its tables, figures and report section (see :mod:`.ladder`).

``summarise`` turns the per-run records into per-arm rows: final validation perplexity as mean ± std over seeds
(sample std, ddof 1), the ratio to the matched GPT (per seed, then the mean), the perplexity at the GPT's total
training FLOPs (``ppl_at_flops``), throughput, wall time and the energy drift per S-block.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import RunFolderError
from .plotting import plt, save
from .section import FigureBlock, Section, TableBlock, TextBlock, conventions_table, opening
from .tables import cell, format_table

RESULTS_VERSION = 1  # the layout of results.json; raised when the tables read something new
GOAL = 1.3  # the best family member's val PPL within this factor of matched attention's
PAPER_PILOT = {"splm_val_ppl": 14.78, "attention_val_ppl": 8.0, "ratio": 1.85}  # attention's is "≈ 8"
GPT = "gpt"
FIGURES = ("val_ppl_vs_steps.png", "val_ppl_vs_flops.png", "energy_drift.png")


def read_rows(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (none when it is missing; a line a kill cut short is skipped)."""
    if not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)]


def ppl_at_flops(flops: list[float], ppl: list[float], target: float | None) -> float | None:
    """The perplexity curve ``ppl`` over increasing training ``flops`` at ``target``, linear in log FLOPs; None
    when ``target`` lies outside the curve (a run that never spent it, or spent it before its first evaluation)."""
    if target is None or not flops:
        return None
    tolerance = 1e-9 * target  # the same FLOPs reached by another order of products
    if target < flops[0] - tolerance or target > flops[-1] + tolerance:
        return None
    return float(np.interp(math.log(target), np.log(flops), ppl))


def curve_flops(run: dict) -> list[float]:
    """Training FLOPs spent at each evaluation of the run."""
    return [s * run["tokens_per_step"] * run["flops_per_token"] for s in run["curve_steps"]]


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _std(values: list) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 and all(v is not None for v in values) else None


def summarise(runs: list[dict], arms: list[dict], *, complete: bool) -> dict:
    """Per-arm rows (in ``arms``' order, those with a run so far), the best SPLM-family arm, and conventions."""
    gpt_ppl = {r["seed"]: r["final_val_ppl"] for r in runs if r["arm"] == GPT}
    gpt_flops = _mean([r["train_flops"] for r in runs if r["arm"] == GPT and r["final_val_ppl"] is not None])
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm["arm"]]
        if not mine:
            continue
        ppl = [r["final_val_ppl"] for r in mine]
        ratios = [r["final_val_ppl"] / gpt_ppl[r["seed"]] if r["final_val_ppl"] and gpt_ppl.get(r["seed"]) else None
                  for r in mine]
        drifts = [r["drift_per_block"] for r in mine]
        rows.append({**arm, "seeds": [r["seed"] for r in mine], "val_ppl_mean": _mean(ppl), "val_ppl_std": _std(ppl),
                     "ratio_to_gpt": _mean(ratios), "flops_per_token": mine[0]["flops_per_token"],
                     "train_flops": _mean([r["train_flops"] for r in mine]),
                     "ppl_at_gpt_flops": _mean([ppl_at_flops(curve_flops(r), r["curve_val_ppl"], gpt_flops)
                                                for r in mine]),
                     "tokens_per_s": _mean([r["tokens_per_s"] for r in mine]),
                     "wall_s": _mean([r["wall_s"] for r in mine]),
                     "drift_per_block": np.mean(drifts, axis=0).tolist() if all(drifts) else None,
                     "status": sorted({r["status"] for r in mine})})
    family = [r for r in rows if r["arch"] == "splm" and r["val_ppl_mean"] is not None]
    best = min(family, key=lambda r: r["val_ppl_mean"], default=None)
    return {"arms": rows, "runs": runs, "gpt_train_flops": gpt_flops, "complete": complete,
            "best": None if best is None else {
                "arm": best["arm"], "val_ppl": best["val_ppl_mean"], "ratio_to_gpt": best["ratio_to_gpt"],
                "within_goal": None if best["ratio_to_gpt"] is None else best["ratio_to_gpt"] <= GOAL},
            "conventions": {
                "goal": f"the best SPLM-family arm's final val PPL within {GOAL}x of the matched GPT's, at equal "
                        "steps, tokens and parameters", "paper_pilot": PAPER_PILOT,
                "matched_parameters": "every SPLM-family arm's potential width (v_hidden) is the one whose total "
                                      "count is closest to the budget; the GPT's depth likewise (matched_gpt_config)",
                "flops": "counted by torch's FlopCounterMode on one real training step (forward and backward, the "
                         "SPLM's double backward included; optimiser, elementwise ops and FFTs not counted)",
                "val_ppl": "exp of the mean loss over fixed validation batches at the last step; mean ± sample std "
                           "(ddof 1) over seeds; ratio: per seed against the GPT of the same seed, then the mean",
                "ppl_at_gpt_flops": "the run's val PPL curve, linear in log training FLOPs, at the GPT's total "
                                    "training FLOPs; none when the run never spent them or spent them before its "
                                    "first evaluation",
                "drift": "per S-block, mean |E_after − E_before| / mean |E| (E = ½m‖v‖² + V, over the block's "
                         "two states) on fixed validation batches",
                "tokens_per_s": "training steps only (forward, backward, AdamW), from metrics.jsonl; wall_s: the "
                                "training calls, evaluations and checkpoints included",
                "results_version": RESULTS_VERSION}}


def check_results(results: dict) -> None:
    version = results.get("conventions", {}).get("results_version")
    if version != RESULTS_VERSION:
        raise RunFolderError(f"these ladder results are of layout version {version}, not {RESULTS_VERSION}; run the "
                             "ladder again into the same folder: finished runs are reused")


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def arm_rows(results: dict) -> list[list[str]]:
    """One row per arm: its make-up, parameters, FLOPs, perplexity and ratio, speed and drift."""
    rows = [["arm", "params (vs budget)", "V_θ width / GPT depth", "FLOPs/token", "val PPL (mean ± std)",
             "ratio to GPT", "PPL at GPT's FLOPs", "tokens/s", "wall s", "drift per S-block (mean, max)"]]
    for r in results["arms"]:
        drift = r["drift_per_block"]
        rows.append([r["arm"], f"{r['params']:,} ({r['mismatch']:+.1%})",
                     f"{r['n_layer']} layer{'s' * (r['n_layer'] != 1)}" if r["arch"] == GPT else str(r["v_hidden"]),
                     f"{r['flops_per_token'] / 1e6:.3g}M", _pm(r["val_ppl_mean"], r["val_ppl_std"]),
                     cell(r["ratio_to_gpt"]), cell(r["ppl_at_gpt_flops"]), _number(r["tokens_per_s"], ",.0f"),
                     _number(r["wall_s"], ".1f"),
                     f"{np.mean(drift):.3g}, {np.max(drift):.3g}" if drift else "-"])
    return rows


def explain_ladder(results: dict) -> list[str]:
    """Sentences from the numbers: the best family member against the goal and the paper's pilot."""
    best, gpt = results["best"], next((r for r in results["arms"] if r["arm"] == GPT), None)
    out = []
    if best is not None:
        against = (f", {best['ratio_to_gpt']:.2f}x the matched GPT's {gpt['val_ppl_mean']:.2f}"
                   if best["ratio_to_gpt"] is not None and gpt else "")
        out.append(f"The best SPLM-family arm, {best['arm']}, reached a validation perplexity of "
                   f"{best['val_ppl']:.2f}{against}.")
        if best["within_goal"] is not None:
            verdict = "met" if best["within_goal"] else "not met"
            out.append(f"The goal (within {GOAL}x of matched attention) is {verdict}; the paper's pilot reached "
                       f"{PAPER_PILOT['splm_val_ppl']} against ≈ {PAPER_PILOT['attention_val_ppl']:g} "
                       f"({PAPER_PILOT['ratio']}x).")
    if not results["complete"]:
        out.append("The ladder is incomplete: these are the runs finished so far.")
    return out


def _curves(results: dict) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """arm -> (steps, training FLOPs, val PPL averaged over its seeds whose curve is complete)."""
    out = {}
    for arm in results["arms"]:
        runs = [r for r in results["runs"] if r["arm"] == arm["arm"] and r["curve_steps"]]
        longest = max((r["curve_steps"] for r in runs), key=len, default=None)
        full = [r for r in runs if r["curve_steps"] == longest]
        if full:
            out[arm["arm"]] = (np.array(longest), np.array(curve_flops(full[0])),
                               np.mean([r["curve_val_ppl"] for r in full], axis=0))
    return out


def _styles(arms: list[str]) -> dict[str, dict]:
    """Line style per arm: the GPT black; one colour per family member, its -ln variant dashed in the same colour."""
    families = list(dict.fromkeys(a.removesuffix("-ln") for a in arms if a != GPT))
    palette = plt.get_cmap("tab10")
    return {a: {"color": "k", "lw": 2.0} if a == GPT else
            {"color": palette(families.index(a.removesuffix("-ln")) % 10), "lw": 1.2,
             "ls": "--" if a.endswith("-ln") else "-"} for a in arms}


def ladder_figures(out: Path, results: dict) -> list[Path]:
    """Val PPL against steps and against training FLOPs (log), per arm; energy drift per S-block per arm."""
    curves, paths = _curves(results), []
    styles = _styles([arm["arm"] for arm in results["arms"]])
    for x_key, name, label in ((0, FIGURES[0], "optimiser step"), (1, FIGURES[1], "training FLOPs (counted)")):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        for arm, curve in curves.items():
            ax.plot(curve[x_key], curve[2], label=arm, **styles[arm])
        if x_key == 1:
            ax.set_xscale("log")
            if results["gpt_train_flops"]:
                ax.axvline(results["gpt_train_flops"], color="0.5", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation perplexity (mean over seeds)")
        if curves:
            ax.legend(fontsize=7, ncol=2)
        paths.append(save(fig, Path(out) / "figures" / name))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for arm in results["arms"]:
        if arm["drift_per_block"]:
            blocks = np.arange(1, len(arm["drift_per_block"]) + 1)
            ax.plot(blocks, arm["drift_per_block"], marker="o", ms=3, label=arm["arm"], **styles[arm["arm"]])
    ax.set_yscale("log")
    ax.set_xlabel("S-block (integration step)")
    ax.set_ylabel("mean |ΔE| / mean |E|")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    paths.append(save(fig, Path(out) / "figures" / FIGURES[2]))
    return paths


def report_section(out: Path, results: dict) -> Section:
    check_results(results)
    texts = []
    drawn = results.get("samples") or {}
    for arm, text in drawn.get("arms", {}).items():
        texts.append(TextBlock(f"{arm} (seed {drawn['seed']}), greedy", text["greedy"]))
        texts.append(TextBlock(f"{arm} (seed {drawn['seed']}), temperature {drawn['temperature']}", text["sampled"]))
    return Section(
        "The SPLM-family ladder: how close does a scalar potential come to attention?",
        [*opening(explain_ladder(results)),
         f"Every arm trains the same optimiser steps on the same tokens at one parameter budget: the matched GPT, "
         f"the vanilla SPLM (ξ the causal mean), its learned context pools ξ (kema, legt, legt-dt, s4d) with and "
         f"without LayerNorm after every step (-ln), PARF (a pair force over earlier tokens), and hybrids with one "
         f"(SSSASSSS) or two (AASSSSSS, Variant A) attention blocks among the S-steps. The goal: the best family "
         f"member within {GOAL}x of matched attention at equal steps and parameters."],
        [TableBlock("Arms (final validation perplexity over seeds)", arm_rows(results)),
         conventions_table(results["conventions"])],
        [FigureBlock(Path(out) / "figures" / FIGURES[0], "Validation perplexity against optimiser steps (mean "
                                                         "over seeds; dashed: LayerNorm after every step)."),
         FigureBlock(Path(out) / "figures" / FIGURES[1], "Validation perplexity against counted training FLOPs; "
                                                         "dotted: the GPT's total."),
         FigureBlock(Path(out) / "figures" / FIGURES[2], "Energy drift per S-block of each SPLM-family arm.")],
        texts,
    )


def summary(results: dict) -> str:
    best = results["best"]
    tail = "no SPLM-family arm finished" if best is None else (
        f"best SPLM-family arm: {best['arm']} (val PPL {best['val_ppl']:.2f}, ratio to GPT "
        f"{cell(best['ratio_to_gpt'])}; goal <= {GOAL})")
    return "\n".join([format_table(arm_rows(results)), "", tail])
