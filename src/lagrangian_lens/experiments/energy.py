"""The energy experiment: point-perplexity energy of pretrained models and their random-weight twins.

Reproduces the structure of the energy paper's Tables 1, 2 and 4 and its attractor test. Output folder::

    DIR/run.json, DIR/results.json, DIR/<run>/result.json   as for every experiment (see .runner)
    DIR/<run>/steps.csv     trajectory, step, position, token_id, token_text, log_kinetic, log_ppl, log_energy, ...
    DIR/<run>/samples.txt   the context and continuation of the first trajectories, as text
    DIR/<run>/trajectories.safetensors (+ .json)   the states at the site, for re-analysis
    DIR/figures/*.png       comparisons across runs
"""
from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.cross_model import size_correlations
from ..analysis.energy import EnergyAnalysis, EnergyConventions, analyse_energy
from ..data.papers import missing
from ..errors import ConfigError, TrajectoryError
from ..mechanics.stats import normalise_by_row_mean_exp, steps_diff
from ..models.pretrained.architectures import unembedding
from ..trajectories import Site, readout
from . import definitions
from .config import BootstrapConfig, RunConfig, TrajectoryConfig
from .definitions import definitions_table
from .energy_figures import energy_figures
from .explain import explain_energy
from .registry import Experiment, register
from .runner import Stage
from .samples import SAMPLES_FILE, read_samples, samples_of, token_texts, write_samples
from .section import FigureBlock, Section, TableBlock, TextBlock, conventions_table, opening
from .tables import summary_rows

HEADLINE = ("global_cv", "avg_trajectory_cv", "cv_of_trajectory_means", "mean_log_energy", "kv_ratio_of_means",
            "mean_kv_ratio", "mean_abs_delta_h", "drift_h", "el_residual_median", "attractor_unique_tokens_mean",
            "zero_velocity_fraction", "repeated_token_fraction", "n_trajectories", "n_steps")
DETAIL = ("mean_log_kinetic", "mean_log_ppl", "mean_delta_h", "mean_delta_e_norm", "mean_abs_delta_e_norm",
          "drift_e_norm", "mean_entropy", "entropy_variance", "el_residual_mean", "el_residual_median_minus",
          "el_cos_median", "el_scale_ratio_median", "classical_energy_cv", "mean_log_lagrangian", "log_action_per_step",
          "logit_displacement_rel_error", "attractor_unique_tokens_sem")
SIZE_METRICS = ("drift_h", "drift_e_norm")  # Table 5: parameter count against energy drift, each normalisation
MIN_STEPS = 3  # states along the analysed span: 2 velocities give one ΔH and one Euler–Lagrange residual


@dataclass
class EnergyConfig:
    """Settings of an energy run: the models and prompts, the trajectories, the paper's conventions, the intervals."""

    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/energy"))
    trajectories: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    conventions: EnergyConventions = field(default_factory=EnergyConventions)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def __post_init__(self):
        check_span(self.trajectories, self.conventions)


def check_span(traj: TrajectoryConfig, conv: EnergyConventions) -> None:
    """The analysed span must hold at least 3 states, whatever the text; known before any model loads."""
    if conv.span == "continuation" and traj.trajectory == "generated" and traj.new_tokens < MIN_STEPS:
        raise ConfigError("new_tokens", f"the energy of a generated continuation needs at least {MIN_STEPS} new "
                                        f"tokens (2 velocities give one ΔH and one Euler–Lagrange residual); got "
                                        f"{traj.new_tokens}")
    if traj.trajectory == "teacher-forced" and conv.span == "continuation" and traj.max_tokens and \
            traj.max_tokens < traj.context_tokens + MIN_STEPS:
        raise ConfigError("max_tokens", f"texts cut to {traj.max_tokens} tokens leave fewer than {MIN_STEPS} "
                                        f"after {traj.context_tokens} context tokens")


def canonical_site(site: str, n_blocks: int | None) -> str:
    """'block.-1' -> 'block.<L-1>' once the model's depth is known."""
    parsed = Site.parse(site)
    return str(parsed.resolve(n_blocks)) if parsed.is_depth and n_blocks is not None else str(parsed)


def energy_stage(conv: EnergyConventions, boot: BootstrapConfig, seed: int, context_tokens: int) -> Stage:
    """The energy analysis as a runner stage: it reads the site's states and calls the model's read-out."""

    def analyse(trajectories, loaded, n_blocks) -> dict:
        c = dataclasses.replace(conv, site=canonical_site(conv.site, n_blocks))
        short = [i for i, t in enumerate(trajectories) if t.n_positions - t.n_context < MIN_STEPS - 1]
        if c.span == "continuation" and short:
            raise TrajectoryError(
                f"text(s) {short[:10]} have no continuation after {context_tokens} context tokens (fewer than "
                f"{MIN_STEPS} states are left to analyse): use longer texts (e.g. the corpus wikitext-2-test), "
                "fewer context tokens, or the span 'all'", options=("prompts", "context_tokens", "span"))
        device = next(loaded.model.parameters()).device
        analysis = analyse_energy(trajectories, readout(loaded.model, c.site), c, n_boot=boot.n_bootstrap,
                                  ci=boot.ci, seed=seed, device=device, unembedding=unembedding(loaded.model).weight)
        # The tokenizer lives with the model: the text is decoded here, for save() to write beside the numbers.
        return {"metrics": analysis.metrics, "analysis": analysis, "replicates": analysis.replicates,
                "conventions": {**dataclasses.asdict(c), "n_boot": boot.n_bootstrap, "ci": boot.ci},
                "samples": samples_of(trajectories, loaded.tokenizer),
                "token_text": token_texts(loaded.tokenizer, analysis.step_tokens.ravel())}

    def save(run_dir: Path, result: dict) -> None:
        write_steps_csv(run_dir / "steps.csv", result["analysis"], result["token_text"])
        write_samples(run_dir / SAMPLES_FILE, result["samples"])

    settings = {"conventions": dataclasses.asdict(conv), "bootstrap": dataclasses.asdict(boot)}
    return Stage("energy", conv.site, settings, analyse, save, needs_model=True, version=4,
                 across_runs=lambda entries: {"size_correlations": size_correlations(entries, SIZE_METRICS, boot.ci)})  # 4: samples.txt, token_text


STEP_COLUMNS = ("trajectory", "step", "position", "token_id", "token_text", "log_kinetic", "log_ppl", "log_energy",
                "entropy", "el_residual", "attractor_unique_tokens", "power_e_norm", "zero_velocity")


def write_steps_csv(path: Path, analysis: EnergyAnalysis, token_text: dict[int, str] | None = None) -> None:
    """One row per step; energy cells of a zero-velocity step (and absent values) are left empty.

    ``token_text`` maps a token id to its text, decoded on its own (the column is empty without it); the csv
    module quotes that text, so a token holding a comma, a quote or a newline keeps the file valid.
    ``power_e_norm`` is the per-step power dE/dt (dt = one token) on E divided by its trajectory mean.
    """
    token_text = token_text or {}
    t = dict(analysis.table)
    power = steps_diff(normalise_by_row_mean_exp(t["H"]))
    t["power"] = np.concatenate([power, np.full((power.shape[0], 1), np.nan)], axis=1)
    cell = lambda x: "" if x != x else repr(float(x))  # noqa: E731  NaN -> empty cell
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(STEP_COLUMNS)
        for b in range(t["H"].shape[0]):
            for i in range(t["H"].shape[1]):
                if analysis.step_positions[b, i] < 0:
                    continue
                token = int(analysis.step_tokens[b, i])
                w.writerow([b, i, int(analysis.step_positions[b, i]), token, token_text.get(token, ""),
                            *(cell(t[c][b, i]) if c in t else "" for c in ("K", "V", "H", "entropy", "el", "attractor", "power")),
                            int(t["H"][b, i] != t["H"][b, i])])


def size_rows(rows: list[dict]) -> list[list[str]]:
    """Table 5's summary: one row per weight class and drift metric."""
    number = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
    return [["weights", "metric", "models", "Pearson r [CI]", "p"],
            *([r["weights"], r["metric"], str(r["n"]), f"{number(r['r'])} [{number(r['ci_low'])}, {number(r['ci_high'])}]",
               number(r["p_value"])] for r in rows)]


def report_section(out: Path, entries: list[dict]) -> Section:
    """The energy experiment's part of the HTML report."""
    conv = entries[0]["conventions"]
    fig = Path(out) / "figures"
    return Section(
        title="Point-perplexity energy",
        paragraphs=[
            *opening(explain_energy(entries)),
            "Each model continues every prompt; along the trajectory of states at the site, the log-energy "
            "H_t = ln(½‖v_t‖²) + ln PPL_t is computed per step. A conserved energy would show a small CV and no drift. "
            "Intervals are percentile bootstraps over trajectories. Zero-velocity steps are excluded and counted.",
            "The paper's Table 4 (⟨ΔE⟩, ⟨|ΔE|⟩, drift) leaves its normalisation unstated (its ⟨|ΔE|⟩ near 0.01 cannot "
            "be on the H scale), so every normalisation offered is reported under its own name: *_h on H = ln E, "
            "*_e_norm on E divided by its trajectory mean.",
            *(f"Not in the paper column: {m['what']} ({m['why']})." for m in missing() if m["paper"] == "energy"),
        ],
        tables=[
            TableBlock("Metrics, value [CI]", summary_rows(entries, HEADLINE + DETAIL, "energy")),
            *([TableBlock("Across models (Table 5): Pearson r of parameter count against drift", size_rows(sizes))]
              if (sizes := size_correlations(entries, SIZE_METRICS)) else []),
            conventions_table(conv, skip=("init",)),
            definitions_table(definitions.ENERGY),
        ],
        texts=[TextBlock(f"{e['run']}: the first prompts and their continuations ({SAMPLES_FILE})", text)
               for e in entries if (text := read_samples(Path(out) / e["run"])) is not None],
        figures=[
            FigureBlock(fig / "energy_traces.png", "Log-energy H_t along the first trajectories of each run."),
            FigureBlock(fig / "log_energy_distribution.png", "Distribution of H_t over all steps, pretrained vs random."),
            FigureBlock(fig / "kinetic_vs_potential.png", "Log-kinetic against log-potential, one point per step."),
            FigureBlock(fig / "cv_bars.png", "The three coefficients of variation with bootstrap intervals."),
            FigureBlock(fig / "attractor_counts.png", "Unique argmax tokens along the segment between consecutive states."),
        ],
    )


EXPERIMENT = register(Experiment(
    name="energy", help="point-perplexity energy of models (and random twins)", config=EnergyConfig,
    section=report_section, headline=HEADLINE, figures=energy_figures,
    stage=lambda cfg: energy_stage(cfg.conventions, cfg.bootstrap, cfg.run.seed, cfg.trajectories.context_tokens),
    report_stage=lambda cfg: energy_stage(cfg.energy, cfg.bootstrap, cfg.run.seed, cfg.trajectories.context_tokens),
))


def run_energy(cfg: EnergyConfig, *, progress: bool = True) -> list[dict]:
    """Run (or resume) every model of ``cfg``; returns the results entries, also in ``out/results.json``."""
    return EXPERIMENT.execute(cfg, progress=progress)
