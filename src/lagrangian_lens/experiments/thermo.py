"""The thermo experiment: attention read as a canonical ensemble, per layer × head, for models and random twins.

Per model, the trajectories' tokens (generated or teacher-forced, as the trajectory settings say) go through the
model once more with the attention capture on (``trajectories.attention``), batch by batch as ``analysis.thermo``
reads them, so one batch's scores are in memory at a time; the analysis turns the scores into ⟨U⟩, ⟨S⟩, ⟨F⟩, ⟨C⟩
per head with intervals over sequences (and the model means' bootstrap replicates), the C(T) sweep with its peak
temperatures, and the positional and attention-sink views. The report runs the same stage on its own trajectories
(``ReportConfig.thermo``). Output folder::

    DIR/run.json, DIR/results.json, DIR/<run>/result.json   as for every experiment (see .runner)
    DIR/<run>/thermo.npz       per-head estimates, C(T) curves, positional profiles: the figures redraw from it
    DIR/<run>/replicates.safetensors   bootstrap draws of the model means, for the random-twin separation
    DIR/figures/thermo_*.png   heatmaps layer × head, C(T) curves, the positional view

A trajectory of T positions holds T + 1 tokens, the last one emitted but never read by the model; the capture
reads the T tokens the trajectory's states were computed from, so its query positions are the trajectory's.

A model whose layers compute attention inline is captured from its log-probabilities instead of its scores (the
capture finds this at run time, see ``trajectories.attention``): its runs carry every shift-invariant number (S, C, C(T), the sink view), U and F as NaN (null in
results.json) with metrics["not_identified"] saying why, and conventions["capture"] names the path taken.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.thermo import ThermoAnalysis, ThermoConventions, analyse_thermo
from ..errors import UnsupportedArchitectureError
from ..trajectories.attention import CAPTURE_METHODS, iter_captures
from .config import BootstrapConfig, RunConfig, TrajectoryConfig
from .registry import Experiment, register
from .runner import Stage
from .thermo_report import ARRAYS_FILE, HEADLINE, NOT_CAPTURED, report_section, thermo_figures

NAME = "thermo"
SITE = "final"  # the runner collects trajectories at a site; the capture reads their tokens only
TOKENS = "each trajectory's T input tokens (context and continuation), the positions its states cover"


@dataclass
class ThermoConfig:
    """Settings of a thermo run: the models and prompts, the trajectories, the ensemble's conventions, the intervals."""

    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/thermo"))
    trajectories: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    conventions: ThermoConventions = field(default_factory=ThermoConventions)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


def per_head_metrics(analysis: ThermoAnalysis) -> dict[str, dict]:
    """per_head_<q>: {"value", "ci_low", "ci_high"} as (L, H) nested lists, for results.json."""
    return {f"per_head_{name}": {part: values[part].tolist() for part in ("value", "ci_low", "ci_high")}
            for name, values in analysis.per_head.items()}


def save_arrays(path: Path, analysis: ThermoAnalysis) -> None:
    """The analysis's arrays as one npz: per_head.<q>.<part> (L, H), the sweep, and the positional profiles."""
    arrays = {f"per_head.{name}.{part}": values[part] for name, values in analysis.per_head.items()
              for part in ("value", "ci_low", "ci_high")}
    arrays |= {f"by_query_position.{k}": v for k, v in analysis.by_query_position.items()}
    arrays |= {f"by_key_distance.{k}": v for k, v in analysis.by_key_distance.items()}
    arrays |= {"temperatures": analysis.temperatures, "heat_curves": analysis.heat_curves,
               "peak_temperature": analysis.peak_temperature, "peak_at_edge": analysis.peak_at_edge,
               "layer_names": np.array(analysis.layer_names or [], dtype=str)}
    np.savez_compressed(path, **arrays)


def thermo_stage(conv: ThermoConventions, boot: BootstrapConfig, seed: int, batch_size: int, site: str = SITE, *,
                 skip_unsupported: bool = False) -> Stage:
    """The thermo analysis as a runner stage: it re-runs the model on the trajectories' tokens with the capture on.

    ``site`` is only where the runner collects the trajectories (the capture reads their tokens): inside the report
    it is the other stages' site, so adding this stage leaves their trajectories and resume keys as they were.
    ``skip_unsupported`` (the report's stage) records a model whose attention neither capture path reads (learned
    sink logits, no attention weights) as a run without metrics, its reason under conventions[NOT_CAPTURED],
    instead of failing the whole report.
    """

    def analyse(trajectories, loaded, n_blocks) -> dict:
        captures = iter_captures(loaded.model, trajectories, batch_size)  # captured while the analysis reads them
        try:
            analysis = analyse_thermo(captures, conv, n_boot=boot.n_bootstrap, ci=boot.ci, seed=seed)
        except UnsupportedArchitectureError as err:
            if not skip_unsupported:
                raise
            return {"metrics": {}, "conventions": {**dataclasses.asdict(conv), NOT_CAPTURED: str(err)}}
        return {"metrics": {**analysis.metrics, **per_head_metrics(analysis)}, "analysis": analysis,
                "replicates": analysis.replicates,
                "conventions": {**dataclasses.asdict(conv), "n_boot": boot.n_bootstrap, "ci": boot.ci,
                                "tokens": TOKENS, "capture": CAPTURE_METHODS[analysis.gauge], **analysis.definitions}}

    def save(run_dir: Path, result: dict) -> None:
        if result.get("analysis") is not None:
            save_arrays(run_dir / ARRAYS_FILE, result["analysis"])

    settings = {"conventions": dataclasses.asdict(conv), "bootstrap": dataclasses.asdict(boot)}
    # 2: the replicates come from the analysis, and the stage runs inside the report. 3: models whose layers compute
    # attention inline are analysed from their log-probabilities (their version-2 runs in a report hold no metrics).
    # 4: the finite part of an additive mask (ALiBi's position bias) is part of the recorded scores.
    return Stage(NAME, site, settings, analyse, save, needs_model=True, version=4)


EXPERIMENT = register(Experiment(
    name=NAME, help="attention thermodynamics: U, S, F, C per layer × head, C(T) peaks, sinks (and random twins)",
    config=ThermoConfig, section=report_section, headline=HEADLINE, figures=thermo_figures,
    stage=lambda cfg: thermo_stage(cfg.conventions, cfg.bootstrap, cfg.run.seed, cfg.run.batch_size),
    report_stage=lambda cfg: thermo_stage(cfg.thermo, cfg.bootstrap, cfg.run.seed, cfg.run.batch_size,
                                          site=cfg.energy.site, skip_unsupported=True),
))


def run_thermo(cfg: ThermoConfig, *, progress: bool = True) -> list[dict]:
    """Run (or resume) every model of ``cfg``; returns the results entries, also in ``out/results.json``."""
    return EXPERIMENT.execute(cfg, progress=progress)
