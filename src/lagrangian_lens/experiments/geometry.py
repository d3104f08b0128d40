"""What the geometry experiments (STP kinematics, hypersphere) share: their trajectory defaults and the stage
that turns trajectories into paths, runs an analysis on them and keeps its per-step arrays and its bootstrap
replicates (for the pretrained-vs-random separation)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..analysis.geometry import PathConventions
from .config import BootstrapConfig, TrajectoryConfig
from .energy import canonical_site
from .runner import Stage


def geometry_trajectories() -> TrajectoryConfig:
    """The geometry default: teacher-forced text cut to 64 tokens (the text itself is the path)."""
    return TrajectoryConfig(trajectory="teacher-forced", max_tokens=64)


def path_stage(name: str, paths: PathConventions, own: object, analyse: Callable[..., tuple],
               arrays_file: str, seed: int, extra: dict | None = None, version: int = 1,
               boot: BootstrapConfig | None = None) -> Stage:
    """A stage that analyses the paths of ``paths`` with
    ``analyse(paths, n_permutations=, seed=, n_boot=, ci=, return_replicates=True, **own, **extra)``.

    The bootstrap settings come from ``boot``, else from ``extra`` (``n_boot``, ``ci``), else the defaults of
    ``BootstrapConfig``; they are recorded in the conventions and the resume key either way.
    """
    extra = dict(extra or {})
    boot = boot or BootstrapConfig(n_bootstrap=extra.get("n_boot", BootstrapConfig.n_bootstrap),
                                   ci=extra.get("ci", BootstrapConfig.ci))
    extra |= {"n_boot": boot.n_bootstrap, "ci": boot.ci}

    def run(trajectories, loaded, n_blocks) -> dict:
        conv = dataclasses.replace(paths, site=canonical_site(paths.site, n_blocks))
        metrics, arrays, replicates = analyse(conv.paths(trajectories), n_permutations=conv.n_permutations, seed=seed,
                                              return_replicates=True, **dataclasses.asdict(own), **extra)
        conventions = {**dataclasses.asdict(conv), **dataclasses.asdict(own), **extra}
        if conv.axis == "depth":
            conventions["site"] = "all (embed + every block)"
        return {"metrics": metrics, "conventions": conventions, "arrays": arrays, "replicates": replicates}

    def save(run_dir: Path, result: dict) -> None:
        np.savez_compressed(run_dir / arrays_file, **result["arrays"])

    settings = {"paths": dataclasses.asdict(paths), "own": dataclasses.asdict(own), "extra": extra}
    return Stage(name, paths.sites, settings, run, save, version=version)
