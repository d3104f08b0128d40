"""The thermo experiment: attention read as a canonical ensemble, per layer × head, for models and random twins.

Per model, the trajectories' tokens (generated or teacher-forced, as the trajectory settings say) go through the
model once more with the attention capture on (``trajectories.attention``), in batches; ``analysis.thermo`` turns
the scores into ⟨U⟩, ⟨S⟩, ⟨F⟩, ⟨C⟩ per head with intervals over sequences, the C(T) sweep with its peak
temperatures, and the positional and attention-sink views. Output folder::

    DIR/run.json, DIR/results.json, DIR/<run>/result.json   as for every experiment (see .runner)
    DIR/<run>/thermo.npz       per-head estimates, C(T) curves, positional profiles: the figures redraw from it
    DIR/<run>/replicates.safetensors   bootstrap draws of the model means, for the random-twin separation
    DIR/figures/thermo_*.png   heatmaps layer × head, C(T) curves, the positional view

A trajectory of T positions holds T + 1 tokens, the last one emitted but never read by the model; the capture
reads the T tokens the trajectory's states were computed from, so its query positions are the trajectory's.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..analysis.thermo import QUANTITIES, AttentionScores, ThermoAnalysis, ThermoConventions, analyse_thermo
from ..mechanics.stats import resample_indices
from ..mechanics.thermo import attention_thermo, boltzmann_weights, reduce_rows
from ..trajectories import Trajectory
from ..trajectories.attention import capture_attention
from .config import BootstrapConfig, RunConfig, TrajectoryConfig
from .registry import Experiment, register
from .runner import Stage
from .thermo_report import ARRAYS_FILE, HEADLINE, report_section, thermo_figures

NAME = "thermo"
SITE = "final"  # the runner collects trajectories at a site; the capture reads their tokens only
REPLICATED = (*QUANTITIES, "sink_mass")  # the model means mean_<q> whose replicates feed the separation
CAPTURE_CONVENTIONS = {
    "tokens": "each trajectory's T input tokens (context and continuation), the positions its states cover",
    "capture": "pre-softmax scores s = q·k·scaling (soft-capped where the model caps) of every head, grouped-query "
               "heads expanded, from eager attention run through transformers' AttentionInterface",
}


@dataclass
class ThermoConfig:
    """Settings of a thermo run: the models and prompts, the trajectories, the ensemble's conventions, the intervals."""

    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/thermo"))
    trajectories: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    conventions: ThermoConventions = field(default_factory=ThermoConventions)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


def capture_records(model: torch.nn.Module, trajectories: Sequence[Trajectory], batch_size: int) -> list[AttentionScores]:
    """Every trajectory's attention scores at every block: batched, right-padded forwards, records on the host."""
    device = next(model.parameters()).device
    records = []
    for start in range(0, len(trajectories), batch_size):
        tokens = [t.token_ids[:t.n_positions] for t in trajectories[start:start + batch_size]]
        input_ids = torch.zeros(len(tokens), max(map(len, tokens)), dtype=torch.long)  # (B, P), padding masked
        mask = torch.zeros_like(input_ids)
        for b, ids in enumerate(tokens):
            input_ids[b, :len(ids)], mask[b, :len(ids)] = ids, 1
        for cap in capture_attention(model, input_ids.to(device), mask.to(device), device="cpu"):
            records.append(AttentionScores(cap.scores, cap.visible[:, None], cap.token_ids,
                                           layer_names=tuple(f"block.{layer}" for layer in cap.layers)))
    return records


def _model_cells(record: AttentionScores, conv: ThermoConventions) -> dict[str, tuple[float, int]]:
    """One sequence's (sum, count) over its kept rows, all layers and heads, of every replicated quantity.

    The rows are those of ``analyse_thermo``'s model means: query positions from ``skip_query_positions`` on,
    sink keys left out of the ensemble under sinks='exclude', and the sink mass over rows seeing another key.
    """
    s, visible, pos = record.scores, record.visible, record.token_positions  # (L, H, T, T), (L, H, T, T), (T,)
    keep = pos >= conv.skip_query_positions  # (T,)
    sink = torch.isin(pos, torch.tensor(conv.sink_positions, dtype=torch.long, device=pos.device))  # (T,) keys
    th = attention_thermo(s, visible & ~sink if conv.sinks == "exclude" else visible, conv.ensemble_temperature)
    cells = {name: reduce_rows(getattr(th, prop)[:, None], keep) for name, prop in QUANTITIES.items()}
    if conv.sink_positions:
        p = boltzmann_weights(s, visible, conv.ensemble_temperature)  # (L, H, T, T) over every visible key
        chose = (keep & (visible & ~sink).any(-1))[:, None]  # (L, 1, H, T)
        cells["sink_mass"] = reduce_rows((p * sink).sum(-1)[:, None], chose)
    return {name: (float(c.sums.sum()), int(c.counts.sum())) for name, c in cells.items()}


def mean_replicates(records: Sequence[AttentionScores], conv: ThermoConventions, *, n_boot: int,
                    seed: int) -> dict[str, dict[str, np.ndarray]]:
    """{mean_<q>: {"draws": (n_boot,), "units": (B,)}} of the model means, as the runner's separation reads them.

    The draws are the pooled means on ``stats.resample_indices(B, n_boot, seed)``, the resamples the analysis's
    own intervals use (so their percentiles are its ci_low and ci_high); units are each sequence's pooled mean.
    Without resamples (n_boot 0, or a single sequence) the draws are empty.
    """
    cells = [_model_cells(r, conv) for r in records]
    out = {}
    for name in (n for n in REPLICATED if n in cells[0]):
        sums = torch.tensor([c[name][0] for c in cells], dtype=torch.float64)  # (B,)
        counts = torch.tensor([c[name][1] for c in cells], dtype=torch.float64)  # (B,)
        draws = torch.empty(0, dtype=torch.float64)
        if n_boot > 0 and len(records) > 1:
            idx = resample_indices(len(records), n_boot, seed, sums.device)  # (n_boot, B)
            weights = torch.zeros(n_boot, len(records), dtype=torch.float64).scatter_add_(
                1, idx, torch.ones_like(idx, dtype=torch.float64))  # how often each sequence is drawn
            draws = (weights @ sums) / (weights @ counts)
        out[f"mean_{name}"] = {"draws": draws.numpy(), "units": (sums / counts).numpy()}
    return out


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


def thermo_stage(conv: ThermoConventions, boot: BootstrapConfig, seed: int, batch_size: int) -> Stage:
    """The thermo analysis as a runner stage: it re-runs the model on the trajectories' tokens with the capture on."""

    def analyse(trajectories, loaded, n_blocks) -> dict:
        records = capture_records(loaded.model, trajectories, batch_size)
        analysis = analyse_thermo(records, conv, n_boot=boot.n_bootstrap, ci=boot.ci, seed=seed)
        return {"metrics": {**analysis.metrics, **per_head_metrics(analysis)}, "analysis": analysis,
                "replicates": mean_replicates(records, conv, n_boot=boot.n_bootstrap, seed=seed),
                "conventions": {**dataclasses.asdict(conv), "n_boot": boot.n_bootstrap, "ci": boot.ci,
                                **CAPTURE_CONVENTIONS, **analysis.definitions}}

    def save(run_dir: Path, result: dict) -> None:
        save_arrays(run_dir / ARRAYS_FILE, result["analysis"])

    settings = {"conventions": dataclasses.asdict(conv), "bootstrap": dataclasses.asdict(boot)}
    return Stage(NAME, SITE, settings, analyse, save, needs_model=True, version=1)


EXPERIMENT = register(Experiment(
    name=NAME, help="attention thermodynamics: U, S, F, C per layer × head, C(T) peaks, sinks (and random twins)",
    config=ThermoConfig, section=report_section, headline=HEADLINE, figures=thermo_figures,
    stage=lambda cfg: thermo_stage(cfg.conventions, cfg.bootstrap, cfg.run.seed, cfg.run.batch_size),
))


def run_thermo(cfg: ThermoConfig, *, progress: bool = True) -> list[dict]:
    """Run (or resume) every model of ``cfg``; returns the results entries, also in ``out/results.json``."""
    return EXPERIMENT.execute(cfg, progress=progress)
