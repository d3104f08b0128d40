"""The main job: every registered per-model analysis on a model and its random twin, then one ``report.html``.

The report iterates the experiment registry: each experiment with a stage runs on the same trajectories,
collected once per model, into its own folder ``<out>/<experiment>/``. Each stage resumes on its own key, so
changing a geometry setting recomputes the geometry only, from the kept trajectories.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.energy import EnergyConventions
from ..analysis.geometry import PathConventions
from ..analysis.sphere import SphereConventions
from ..analysis.stp import StpConventions
from ..analysis.thermo import ThermoConventions
from ..errors import ConfigError
from ..experiments.config import BootstrapConfig, RunConfig, TrajectoryConfig
from ..experiments.energy import check_span
from ..experiments.registry import experiments
from ..experiments.runner import run_stages
from ..provenance import read_json
from .html import provenance_section, write_report

SEPARATOR, STEER, GROK, LADDER, MONITOR = "separator", "steer", "grok", "ladder", "monitor"
WHOLE_RUN = (SEPARATOR, GROK, LADDER, MONITOR)  # experiments whose results.json is their own, not a list of per-model runs


@dataclass
class ReportConfig:
    """The report's settings: models and prompts (random twins on), trajectories, and each analysis's own part."""

    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/report", random_twins=True))
    trajectories: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    energy: EnergyConventions = field(default_factory=EnergyConventions)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    paths: PathConventions = field(default_factory=PathConventions)
    stp: StpConventions = field(default_factory=StpConventions)
    sphere: SphereConventions = field(default_factory=SphereConventions)
    thermo: ThermoConventions = field(default_factory=ThermoConventions)  # its leaf names are the thermo command's
    separator: str | None = None
    """Add the shared-potential separator section from this finished `separator` run folder."""
    steer: str | None = None
    """Add the Jacobian-steering (Table 3) section from this finished `steer` run folder."""
    grok: str | None = None
    """Add the grokking (specific heat before generalisation) section from this finished `grok` run folder."""
    ladder: str | None = None
    """Add the SPLM-family ladder section from this finished `ladder` run folder."""
    monitor: str | None = None
    """Add the energy anomaly monitor section from this finished `monitor` run folder (evaluated with --evaluate)."""

    # The geometry sections run along tokens at the energy site, on the energy's trajectories.
    FIXED = frozenset({"axis"})

    def __post_init__(self):
        check_span(self.trajectories, self.energy)
        if self.paths.axis != "token":
            raise ConfigError("axis", "the report's geometry sections run along the token axis at the energy site")
        for name in FINISHED_RUNS:
            if getattr(self, name) is not None:
                check_finished_folder(getattr(self, name), name)


# Experiments whose finished run folder the report can include as a section (--separator DIR, --steer DIR,
# --grok DIR, --ladder DIR, --monitor DIR): they run on their own data (trained models, long teacher-forced texts,
# anomaly sets), not on the report's trajectories.
FINISHED_RUNS = (SEPARATOR, STEER, GROK, LADDER, MONITOR)


def check_finished_folder(folder: str, experiment: str) -> None:
    """``folder`` holds a finished run of ``experiment``, else a ConfigError naming the option that gave it."""
    path = Path(folder).expanduser()
    run_file, results = path / "run.json", path / "results.json"
    if not (run_file.is_file() and results.is_file()):
        raise ConfigError(experiment, f"{folder!r} is not a finished {experiment} run: it lacks run.json or "
                                      f"results.json. Run `lagrangian-lens {experiment}` into it first.")
    try:
        owner = read_json(run_file).get("experiment")
        read_json(results)
    except (ValueError, AttributeError):
        raise ConfigError(experiment, f"{folder!r} holds unreadable run.json or results.json") from None
    if owner != experiment:
        raise ConfigError(experiment, f"{folder!r} holds a {owner} run, not a {experiment} run")


def finished_section(registry: dict, experiment: str, folder: str):
    """The report section of a finished run folder: a whole-run experiment's own results, or a per-model
    experiment's runs."""
    path = Path(folder).expanduser()
    results = read_json(path / "results.json")
    return registry[experiment].section(path, results if experiment in WHOLE_RUN else results["runs"])


# The quantisation type in a GGUF file name: 'model.Q4_1.gguf', 'model-q8_0.gguf', 'model.IQ4_XS.gguf', 'model.F16.gguf'.
GGUF_TYPE = re.compile(r"[.\-_]((?:I?Q\d+(?:_[A-Z0-9]+)*)|BF16|F16|F32)\.gguf$", re.IGNORECASE)


def describe_weights(description: dict) -> str:
    """Where a run's weights came from and the precision it ran in, from its model description.

    'SmolLM2-135M-Instruct: a Q4_1 GGUF de-quantised to float32'; 'org/model: bfloat16 weights run in float32';
    'smollm2-135m-instruct with random weights: hf initialisation (seed 0) in float32'.
    """
    dtype = description.get("dtype", "an unrecorded dtype")
    if description.get("weights") == "random":
        return (f"{description.get('source')} with random weights: {description.get('init')} initialisation "
                f"(seed {description.get('seed')}) in {dtype}")
    source = str(description.get("source", ""))
    if source.lower().endswith(".gguf"):
        file = Path(source).name
        if (found := GGUF_TYPE.search(file)) is None:
            return f"{file[:-len('.gguf')]}: a GGUF (its file name does not say the quantisation) loaded as {dtype}"
        kind = found.group(1).upper()
        verb = "converted" if kind.startswith(("F", "BF")) else "de-quantised"
        article = "an" if kind[0] in "AEFHILMNORSX" else "a"  # as the letter is spoken: 'an F16', 'a Q4_1'
        return f"{file[:found.start()]}: {article} {kind} GGUF {verb} to {dtype}"
    stored = (description.get("config") or {}).get("torch_dtype") or (description.get("config") or {}).get("dtype")
    spec = description.get("spec", source)
    return f"{spec}: {stored} weights run in {dtype}" if stored and stored != dtype else f"{spec}: {dtype} weights"


def subtitle(entries: list[dict]) -> str:
    """The report's header line: every run's weights and precision, each model once."""
    described = dict.fromkeys(describe_weights(e["model_description"]) for e in entries
                              if e.get("model_description"))
    return "; ".join(described) or "models: " + ", ".join(dict.fromkeys(e["model"] for e in entries))


def make_report(cfg: ReportConfig, *, progress: bool = True) -> tuple[Path, str]:
    """Run (or resume) the analyses into ``cfg.run.out``; returns the report path and a printable summary."""
    out = Path(cfg.run.out)
    registry = experiments()
    per_model = [e for e in registry.values() if e.report_stage is not None]
    stages = [e.report_stage(cfg) for e in per_model]
    folders = {s.name: out / s.name for s in stages}
    entries = run_stages(cfg.run, cfg.trajectories, stages, experiment="report", config=cfg, folders=folders,
                         progress=progress)
    sections = []
    for e in per_model:
        if e.figures is not None:
            e.figures(folders[e.name], entries[e.name])
        sections.append(e.section(folders[e.name], entries[e.name]))
    for name in FINISHED_RUNS:
        if getattr(cfg, name):
            sections.append(finished_section(registry, name, getattr(cfg, name)))
    first = entries[per_model[0].name]
    sections.append(provenance_section(first, read_json(out / "run.json")["environment"]))
    path = write_report(out / "report.html", "lagrangian-lens report", sections, subtitle=subtitle(first))
    summary = "\n\n".join(e.summarise(entries[e.name]) for e in per_model)
    return path, summary
