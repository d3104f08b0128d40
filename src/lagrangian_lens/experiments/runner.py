"""What every experiment shares: the common settings, the list of runs, trajectory collection, and a
resumable loop over models that writes each finished run to disk before the next model starts.

Output folder of any experiment::

    DIR/run.json            config, result key, environment, git sha (rewritten at every start)
    DIR/results.json        one entry per finished run: model, weights, metrics, conventions, versions
    DIR/<run>/result.json   the same entry, written last: its presence marks the run finished

A rerun of the same command skips every run whose ``result.json`` has the same result key, so an interrupted
run resumes where it stopped; a run made with other settings is redone.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import load_prompts
from ..models import DEFAULT_MODEL, load_model
from ..models.pretrained.loading import RANDOM_PREFIX
from ..provenance import environment, package_versions, read_json, write_json
from ..trajectories import Decoding, extract, generate
from ..trajectories.trajectory import MODES


@dataclass
class RunConfig:
    """Settings shared by every experiment. Every field is also a command-line option."""

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
    decoding: str = "greedy"
    """greedy or sample."""
    temperature: float = 1.0
    """Sampling temperature (decoding=sample)."""
    top_k: int = 0
    """Sample among the top-k tokens, 0 for all (decoding=sample)."""
    site: str = "final"
    """Where h_t is read: final, embed or block.<l>."""
    batch_size: int = 16
    """Sequences per forward pass."""
    seed: int = 0
    """Seeds random twins, sampling, subsets, nulls and the bootstrap."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    device_map: str | None = None
    """'auto' spreads a model too big for one device over all devices."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run."""
    save_trajectories: bool = True
    """Keep the analysed states of every run (safetensors) for later re-analysis."""
    out: str = "runs/experiment"
    """Output folder."""

    # Settings that never change a run's numbers (beyond float tolerance): not part of the result key.
    NOT_IN_RESULT_KEY = frozenset({"models", "random_twins", "out", "batch_size", "device", "device_map",
                                   "save_trajectories"})

    def __post_init__(self):
        if self.trajectory not in MODES:
            raise ValueError(f"trajectory must be one of {MODES}, got {self.trajectory!r}")
        if not self.models:
            raise ValueError("give at least one model")
        self.decoding_rule()  # validates decoding, temperature

    def decoding_rule(self) -> Decoding:
        return Decoding(self.decoding, self.temperature, self.top_k, self.seed)

    def result_key(self) -> str:
        """Hash of the settings that change a run's numbers; a finished run with another key is redone."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in self.NOT_IN_RESULT_KEY}
        settings["experiment"] = type(self).__name__
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


def plan_runs(cfg: RunConfig) -> list[RunSpec]:
    runs = []
    for spec in cfg.models:
        is_random = spec.startswith(RANDOM_PREFIX)
        runs.append(RunSpec(spec, "random" if is_random else "pretrained"))
        if cfg.random_twins and not is_random:
            runs.append(RunSpec(RANDOM_PREFIX + spec, "random"))
    return list(dict.fromkeys(runs))


def collect_trajectories(cfg: RunConfig, loaded, prompts: list[str], *, sites: str, max_tokens: int | None = None,
                         progress: bool = False):
    """Generated or teacher-forced trajectories of ``prompts`` at ``sites``, as ``cfg`` says.

    Teacher-forced texts are cut to ``max_tokens`` (default: context + new tokens), with the first
    ``context_tokens`` marked as context.
    """
    meta = {"model": loaded.description.label}
    if cfg.trajectory == "generated":
        return generate(loaded.model, loaded.tokenizer, prompts, new_tokens=cfg.new_tokens,
                        context_tokens=cfg.context_tokens, sites=sites, decoding=cfg.decoding_rule(),
                        batch_size=cfg.batch_size, progress=progress, metadata=meta)
    return extract(loaded.model, loaded.tokenizer, prompts, sites=sites,
                   max_tokens=max_tokens or cfg.context_tokens + cfg.new_tokens, n_context=cfg.context_tokens,
                   batch_size=cfg.batch_size, progress=progress, metadata=meta)


Analyse = Callable[[object, list[str], Path], dict]  # (loaded model, prompts, run dir) -> {"metrics", "conventions", ...}


def run_models(cfg: RunConfig, experiment: str, analyse: Analyse, *, progress: bool = True) -> list[dict]:
    """Run (or resume) ``analyse`` on every model of ``cfg``; returns the entries, also in ``out/results.json``."""
    out = Path(cfg.out)
    prompts = load_prompts(cfg.prompts, cfg.n_prompts)
    write_json(out / "run.json", {"experiment": experiment, "config": dataclasses.asdict(cfg),
                                  "result_key": cfg.result_key(), "environment": environment()})
    entries = []
    for run in tqdm(plan_runs(cfg), desc=f"{experiment}: models", disable=not progress):
        finished = out / run.name / "result.json"
        if finished.is_file() and read_json(finished).get("result_key") == cfg.result_key():
            entries.append(read_json(finished))
            if progress:
                tqdm.write(f"[resume] {run.name}: finished earlier, kept")
            continue
        entries.append(_run_one(cfg, run, prompts, out / run.name, analyse))
        write_json(out / "results.json", {"experiment": experiment, "runs": entries})
    write_json(out / "results.json", {"experiment": experiment, "runs": entries})
    return entries


def _run_one(cfg: RunConfig, run: RunSpec, prompts: list[str], run_dir: Path, analyse: Analyse) -> dict:
    loaded = load_model(run.spec, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map,
                        trust_remote_code=cfg.trust_remote_code, init=cfg.init, seed=cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = analyse(loaded, prompts, run_dir)
    common = {"trajectory": cfg.trajectory, "decoding": cfg.decoding, "context_tokens": cfg.context_tokens,
              "new_tokens": cfg.new_tokens, "n_prompts": len(prompts), "prompts": cfg.prompts,
              "init": cfg.init if run.weights == "random" else None}
    entry = {
        "run": run.name, "model": run.spec.removeprefix(RANDOM_PREFIX), "spec": run.spec, "weights": run.weights,
        **result, "conventions": {**result.get("conventions", {}), **common},
        "model_description": loaded.description.to_dict(), "versions": package_versions(),
        "seed": cfg.seed, "result_key": cfg.result_key(),
    }
    write_json(run_dir / "result.json", entry)  # written last: marks the run finished
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return entry
