"""The energy experiment: point-perplexity energy of pretrained models and their random-weight twins.

Reproduces the structure of the energy paper's Tables 1, 2 and 4 and its attractor test. Output folder::

    DIR/run.json            config, environment, git sha (rewritten at every start)
    DIR/results.json        one entry per finished run: model, weights, metrics, conventions, versions
    DIR/<run>/result.json   the same entry, written last: its presence marks the run finished
    DIR/<run>/steps.csv     trajectory, step, position, token_id, log_kinetic, log_ppl, log_energy, ...
    DIR/<run>/trajectories.safetensors (+ .json)   the states at the site, for re-analysis
    DIR/figures/*.png       comparisons across runs

A rerun of the same command skips every run whose ``result.json`` holds the same settings, so an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import csv
import dataclasses
import gc
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import load_prompts
from ..mechanics.stats import normalise_by_row_mean_exp, steps_diff
from ..models import DEFAULT_MODEL, load_model
from ..models.loading import RANDOM_PREFIX
from ..trajectories import Decoding, extract, generate, readout, save_trajectories
from ..trajectories.trajectory import MODES
from .energy_analysis import EnergyAnalysis, EnergyConventions, analyse_energy
from .energy_figures import energy_figures
from .provenance import environment, package_versions, read_json, write_json
from .section import FigureBlock, Section, TableBlock

HEADLINE = ("global_cv", "avg_trajectory_cv", "cv_of_trajectory_means", "mean_log_energy", "kv_ratio_of_means",
            "mean_kv_ratio", "mean_abs_delta_h", "drift_h", "el_residual_median", "attractor_unique_tokens_mean")


@dataclass
class EnergyConfig:
    """Settings of an energy run. Every field is also a command-line option."""

    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    """Model specs: alias, hub id, local directory, .gguf path, or random:<spec>."""
    random_twins: bool = False
    """Also run a random-weight twin of every pretrained model."""
    init: str = "hf"
    """Random-twin initialisation: hf (the library's _init_weights), torch (reset_parameters) or shuffled."""
    prompts: str = "default"
    """Prompt source: 'default' (shipped set), a corpus name (wikitext-2-test, tinystories, tiny-shakespeare) or a file with one prompt per line."""
    n_prompts: int = 32
    """How many prompts to take from the source, in its order."""
    context_tokens: int = 50
    """Prompts are cut to their first this-many tokens."""
    new_tokens: int = 100
    """Tokens generated after each prompt (teacher-forced: tokens of text analysed after the context)."""
    trajectory: str = "generated"
    """generated (the model's own continuation) or teacher-forced (the text's continuation)."""
    ppl: str = "realized"
    """PPL_t from the realized token or from the argmax token (p_max); equal under greedy decoding."""
    decoding: str = "greedy"
    """greedy or sample."""
    temperature: float = 1.0
    """Sampling temperature (decoding=sample)."""
    top_k: int = 0
    """Sample among the top-k tokens, 0 for all (decoding=sample)."""
    site: str = "final"
    """Where h_t is read: final, embed or block.<l>."""
    span: str = "continuation"
    """Analyse the continuation only, or all positions (prompt included)."""
    energy_scale: str = "log"
    """Take the CVs of H = ln E (log) or of E (linear)."""
    zero_velocity_rtol: float = 1e-6
    """A step with ‖v‖ <= rtol·‖h‖ counts as zero velocity and is excluded."""
    attractor_points: int = 11
    """Points on each segment of the neighbouring-attractor test (11: α = 0, 0.1, ..., 1)."""
    attractor_max_segments: int = 2000
    """At most this many segments get the attractor test (a seeded random subset)."""
    n_bootstrap: int = 1000
    """Bootstrap resamples of trajectories for every confidence interval."""
    ci: float = 0.95
    """Confidence level of the intervals."""
    batch_size: int = 16
    """Sequences per forward pass."""
    seed: int = 0
    """Seeds random twins, sampling, subsets and the bootstrap."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    device_map: str | None = None
    """'auto' spreads a model too big for one device over all devices."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run."""
    save_trajectories: bool = True
    """Keep the states at the site of every run (safetensors) for later re-analysis."""
    out: str = "runs/energy"
    """Output folder."""

    def __post_init__(self):
        if self.trajectory not in MODES:
            raise ValueError(f"trajectory must be one of {MODES}, got {self.trajectory!r}")
        if not self.models:
            raise ValueError("give at least one model")
        self.conventions()  # validates ppl, span, scale

    def conventions(self) -> EnergyConventions:
        return EnergyConventions(self.site, self.ppl, self.span, self.energy_scale, self.zero_velocity_rtol,
                                 self.attractor_points, self.attractor_max_segments)

    def result_key(self) -> str:
        """Hash of the settings that change a run's numbers; a finished run with another key is redone."""
        skip = {"models", "random_twins", "out", "batch_size", "device", "device_map", "save_trajectories"}
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    spec: str  # what load_model receives
    weights: str  # "pretrained" or "random"

    @property
    def name(self) -> str:
        spec = self.spec.removeprefix(RANDOM_PREFIX).rstrip("/")
        if "/" in spec and Path(spec).expanduser().exists():  # a local path: its last component names it
            spec = Path(spec).name
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", spec).strip("-.") + f"__{self.weights}"


def plan_runs(cfg: EnergyConfig) -> list[RunSpec]:
    runs = []
    for spec in cfg.models:
        is_random = spec.startswith(RANDOM_PREFIX)
        runs.append(RunSpec(spec, "random" if is_random else "pretrained"))
        if cfg.random_twins and not is_random:
            runs.append(RunSpec(RANDOM_PREFIX + spec, "random"))
    return list(dict.fromkeys(runs))


def run_energy(cfg: EnergyConfig, *, progress: bool = True) -> list[dict]:
    """Run (or resume) every model of ``cfg``; returns the results entries, also in ``out/results.json``."""
    out = Path(cfg.out)
    write_json(out / "run.json", {"experiment": "energy", "config": dataclasses.asdict(cfg),
                                  "result_key": cfg.result_key(), "environment": environment()})
    prompts = load_prompts(cfg.prompts, cfg.n_prompts)
    entries = []
    for run in tqdm(plan_runs(cfg), desc="models", disable=not progress):
        finished = out / run.name / "result.json"
        if finished.is_file() and read_json(finished).get("result_key") == cfg.result_key():
            entries.append(read_json(finished))
            tqdm.write(f"[resume] {run.name}: finished earlier, kept") if progress else None
            continue
        entries.append(_run_one(cfg, run, prompts, out / run.name, progress))
        write_json(out / "results.json", {"experiment": "energy", "runs": entries})
        gc.collect()
    write_json(out / "results.json", {"experiment": "energy", "runs": entries})
    energy_figures(out, entries)
    return entries


def collect_trajectories(cfg: EnergyConfig, loaded, prompts: list[str], progress: bool = False):
    meta = {"model": loaded.description.label}
    if cfg.trajectory == "generated":
        decoding = Decoding(cfg.decoding, cfg.temperature, cfg.top_k, cfg.seed)
        return generate(loaded.model, loaded.tokenizer, prompts, new_tokens=cfg.new_tokens,
                        context_tokens=cfg.context_tokens, sites=cfg.site, decoding=decoding,
                        batch_size=cfg.batch_size, progress=progress, metadata=meta)
    trajectories = extract(loaded.model, loaded.tokenizer, prompts, sites=cfg.site,
                           max_tokens=cfg.context_tokens + cfg.new_tokens, n_context=cfg.context_tokens,
                           batch_size=cfg.batch_size, progress=progress, metadata=meta)
    short = [i for i, t in enumerate(trajectories) if t.n_positions - t.n_context < 2]
    if cfg.span == "continuation" and short:
        raise ValueError(
            f"teacher-forced prompt(s) {short[:10]} have no continuation after {cfg.context_tokens} context tokens; "
            "use longer texts (e.g. --prompts wikitext-2-test), a smaller --context-tokens, or --span all"
        )
    return trajectories


def _run_one(cfg: EnergyConfig, run: RunSpec, prompts: list[str], run_dir: Path, progress: bool) -> dict:
    loaded = load_model(run.spec, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map,
                        trust_remote_code=cfg.trust_remote_code, init=cfg.init, seed=cfg.seed)
    trajectories = collect_trajectories(cfg, loaded, prompts, progress)
    device = next(loaded.model.parameters()).device
    analysis = analyse_energy(trajectories, readout(loaded.model, cfg.site), cfg.conventions(),
                              n_boot=cfg.n_bootstrap, ci=cfg.ci, seed=cfg.seed, device=device)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_steps_csv(run_dir / "steps.csv", analysis)
    if cfg.save_trajectories:
        save_trajectories(trajectories, run_dir / "trajectories")
    entry = {
        "run": run.name, "model": run.spec.removeprefix(RANDOM_PREFIX), "spec": run.spec, "weights": run.weights,
        "metrics": analysis.metrics,
        "conventions": {**dataclasses.asdict(cfg.conventions()), "trajectory": cfg.trajectory,
                        "decoding": cfg.decoding, "context_tokens": cfg.context_tokens, "new_tokens": cfg.new_tokens,
                        "n_prompts": len(prompts), "prompts": cfg.prompts, "init": cfg.init if run.weights == "random" else None},
        "model_description": loaded.description.to_dict(), "versions": package_versions(),
        "seed": cfg.seed, "result_key": cfg.result_key(),
    }
    write_json(run_dir / "result.json", entry)  # written last: marks the run finished
    del loaded
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return entry


STEP_COLUMNS = ("trajectory", "step", "position", "token_id", "log_kinetic", "log_ppl", "log_energy", "entropy",
                "el_residual", "attractor_unique_tokens", "power_e_norm", "zero_velocity")


def write_steps_csv(path: Path, analysis: EnergyAnalysis) -> None:
    """One row per step; energy cells of a zero-velocity step (and absent values) are left empty.

    ``power_e_norm`` is the per-step power dE/dt (dt = one token) on E divided by its trajectory mean.
    """
    t = dict(analysis.table)
    power = steps_diff(normalise_by_row_mean_exp(t["H"]))
    t["power"] = np.concatenate([power, np.full((power.shape[0], 1), np.nan)], axis=1)
    cell = lambda x: "" if x != x else repr(float(x))  # noqa: E731  NaN -> empty cell
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(STEP_COLUMNS)
        for b in range(t["H"].shape[0]):
            for i in range(t["H"].shape[1]):
                if analysis.step_positions[b, i] < 0:
                    continue
                w.writerow([b, i, int(analysis.step_positions[b, i]), int(analysis.step_tokens[b, i]),
                            *(cell(t[c][b, i]) if c in t else "" for c in ("K", "V", "H", "entropy", "el", "attractor", "power")),
                            int(t["H"][b, i] != t["H"][b, i])])


def summary_rows(entries: list[dict], keys=HEADLINE) -> list[list[str]]:
    """A printable table: one row per metric, one column per run, value [ci_low, ci_high]."""
    rows = [["metric", *(e["run"] for e in entries)]]
    for key in keys:
        row = [key]
        for e in entries:
            m = e["metrics"].get(key)
            row.append("-" if m is None else f"{m['value']:.4g} [{m['ci_low']:.4g}, {m['ci_high']:.4g}]"
                       if isinstance(m, dict) else f"{m:.4g}")
        rows.append(row)
    for key in ("zero_velocity_fraction", "repeated_token_fraction", "n_trajectories", "n_steps"):
        rows.append([key, *(f"{e['metrics'][key]:.4g}" for e in entries)])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


DEFINITIONS = [
    ["v_t", "h_t − h_{t−1}", "velocity of the state at the site between consecutive positions"],
    ["K_t", "ln(½‖v_t‖²)", "log-kinetic energy"],
    ["V_t", "−ln p(x_t | h_t) = ln PPL_t", "log-potential: point perplexity of the token emitted from h_t"],
    ["H_t", "K_t + V_t = ln E_t", "log-energy; E_t = ½‖v_t‖²·PPL_t"],
    ["global_cv", "std/|mean| of all (trajectory, step) values", "conservation across the whole run"],
    ["avg_trajectory_cv", "mean over trajectories of std_t/|mean_t|", "conservation within a trajectory"],
    ["cv_of_trajectory_means", "CV of per-trajectory means", "the other reading of 'average of averages'"],
    ["kv_ratio_of_means / mean_kv_ratio", "⟨K⟩/⟨V⟩ and ⟨K_t/V_t⟩ (V_t > 1e-6)", "balance of the two terms"],
    ["mean_delta_h, mean_abs_delta_h, drift_h", "⟨ΔH⟩, ⟨|ΔH|⟩, ΣΔH/Σ|ΔH|", "local conservation on the H scale"],
    ["*_e_norm", "the same on E_t / mean_t E_t", "local conservation on normalised E"],
    ["el_residual", "‖Δ(2v/‖v‖²) − ∇_h ln p(x_t|h_t)‖ / (‖Δ(2v/‖v‖²)‖ + ‖∇‖)", "log-Euler–Lagrange residual, 0 = exact"],
    ["attractor_unique_tokens", "distinct argmax tokens on (1−α)h_t + αh_{t+1}, α = 0, 0.1, …, 1", "neighbouring-attractor test"],
]


def report_section(out: Path, entries: list[dict]) -> Section:
    """The energy experiment's part of the HTML report."""
    conv = entries[0]["conventions"]
    fig = Path(out) / "figures"
    return Section(
        title="Point-perplexity energy",
        paragraphs=[
            "Each model continues every prompt; along the trajectory of states at the site, the log-energy "
            "H_t = ln(½‖v_t‖²) + ln PPL_t is computed per step. A conserved energy would show a small CV and no drift. "
            "Intervals are percentile bootstraps over trajectories. Zero-velocity steps are excluded and counted.",
        ],
        tables=[
            TableBlock("Metrics, value [CI]", summary_rows(entries, HEADLINE + tuple(
                k for k in ("mean_log_kinetic", "mean_log_ppl", "mean_delta_h", "mean_delta_e_norm",
                            "mean_abs_delta_e_norm", "drift_e_norm", "mean_entropy", "entropy_variance",
                            "el_residual_mean") if k in entries[0]["metrics"]))),
            TableBlock("Conventions", [["convention", "value"], *([k, str(v)] for k, v in conv.items() if k != "init")]),
            TableBlock("Definitions", [["quantity", "formula", "meaning"], *DEFINITIONS]),
        ],
        figures=[
            FigureBlock(fig / "energy_traces.png", "Log-energy H_t along the first trajectories of each run."),
            FigureBlock(fig / "log_energy_distribution.png", "Distribution of H_t over all steps, pretrained vs random."),
            FigureBlock(fig / "kinetic_vs_potential.png", "Log-kinetic against log-potential, one point per step."),
            FigureBlock(fig / "cv_bars.png", "The three coefficients of variation with bootstrap intervals."),
            FigureBlock(fig / "attractor_counts.png", "Unique argmax tokens along the segment between consecutive states."),
        ],
    )
