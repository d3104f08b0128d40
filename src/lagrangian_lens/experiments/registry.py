"""The experiment registry: one ``Experiment`` entry per experiment, read by the command line and the report.

Adding an experiment is writing its analysis (``analysis/``) and one module here that builds its config,
its stage(s), its figures and its report section, then registering it; the CLI subcommand, its options and
its place in the report follow from the entry.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .runner import Stage, run_stages
from .section import Section
from .tables import format_table, summary_rows


@dataclass(frozen=True)
class Experiment:
    """What the CLI and the report need to know of an experiment.

    A per-model experiment gives its ``stage`` (built from its own config) and the generic runner does the rest;
    a whole-run experiment (the separator) gives its own ``run``.
    """

    name: str  # the subcommand, and the experiment's folder inside a report
    help: str  # one line for --help
    config: type  # its typed config dataclass: its (leaf) fields are the subcommand's options
    section: Callable[[Path, object], Section]  # (folder, results) -> its part of the HTML report
    headline: tuple[str, ...] = ()  # the metrics its summary table shows
    stage: Callable[[object], Stage] | None = None  # (its config) -> the per-model stage it runs
    report_stage: Callable[[object], Stage] | None = None  # (the report's config) -> its stage inside the report
    figures: Callable[[Path, object], list[Path]] | None = None  # (folder, results) -> written figures
    run: Callable[..., object] | None = None  # a whole-run experiment's own runner: run(config, progress=...)
    summary: Callable[[object], str] | None = None  # results -> printable text (default: the headline table)

    def execute(self, cfg, *, progress: bool = True):
        """Run (or resume) the experiment; returns its results (the entries of a per-model experiment)."""
        if self.run is not None:
            return self.run(cfg, progress=progress)
        entries = run_stages(cfg.run, cfg.trajectories, [self.stage(cfg)], experiment=self.name, config=cfg,
                             progress=progress)[self.name]
        if self.figures is not None:
            self.figures(Path(cfg.run.out), entries)
        return entries

    def summarise(self, results) -> str:
        if self.summary is not None:
            return self.summary(results)
        return format_table(summary_rows(results, self.headline, self.name))


REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if experiment.name in REGISTRY:
        raise ValueError(f"experiment {experiment.name!r} is registered twice")
    REGISTRY[experiment.name] = experiment
    return experiment


ORDER = ("energy", "stp", "sphere", "thermo", "separator", "steer", "grok", "ladder",
         "monitor")  # the report's and --help's order; later entries follow


def experiments() -> dict[str, Experiment]:
    """Every registered experiment, the built-in ones first in ``ORDER`` (importing each module registers it)."""
    from . import energy, grok, ladder, monitor, separator, sphere, steer, stp, thermo  # noqa: F401  (each registers itself)

    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(REGISTRY.items(), key=lambda item: rank.get(item[0], len(ORDER))))
