"""What the geometry experiments (STP kinematics, hypersphere) share: their trajectory defaults and the stage
that turns trajectories into paths, runs an analysis on them and keeps its per-step arrays."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..analysis.geometry import PathConventions
from .config import TrajectoryConfig
from .energy import canonical_site
from .runner import Stage


def geometry_trajectories() -> TrajectoryConfig:
    """The geometry default: teacher-forced text cut to 64 tokens (the text itself is the path)."""
    return TrajectoryConfig(trajectory="teacher-forced", max_tokens=64)


def path_stage(name: str, paths: PathConventions, own: object, analyse: Callable[..., tuple[dict, dict]],
               arrays_file: str, seed: int, extra: dict | None = None, version: int = 1) -> Stage:
    """A stage that analyses the paths of ``paths`` with ``analyse(paths, n_permutations=, seed=, **own, **extra)``."""
    extra = dict(extra or {})

    def run(trajectories, loaded, n_blocks) -> dict:
        conv = dataclasses.replace(paths, site=canonical_site(paths.site, n_blocks))
        metrics, arrays = analyse(conv.paths(trajectories), n_permutations=conv.n_permutations, seed=seed,
                                  **dataclasses.asdict(own), **extra)
        conventions = {**dataclasses.asdict(conv), **dataclasses.asdict(own), **extra}
        if conv.axis == "depth":
            conventions["site"] = "all (embed + every block)"
        return {"metrics": metrics, "conventions": conventions, "arrays": arrays}

    def save(run_dir: Path, result: dict) -> None:
        np.savez_compressed(run_dir / arrays_file, **result["arrays"])

    settings = {"paths": dataclasses.asdict(paths), "own": dataclasses.asdict(own), "extra": extra}
    return Stage(name, paths.sites, settings, run, save, version=version)
