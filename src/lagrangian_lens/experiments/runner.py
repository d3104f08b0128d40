"""The resumable loop every per-model experiment shares: plan the runs, collect each model's trajectories once,
run every stage on them, and write each finished run to disk before the next model loads.

A *stage* is one per-model analysis (energy, STP, hypersphere, ...). Its resume key is a hash of exactly what
it reads: the model's content identity, the prompts' text, the trajectory settings, the sites it records and
its own settings. A finished stage whose key matches is kept; a stage whose settings changed is redone, and
the model is loaded again only when trajectories must be collected anew or the stage calls the model.

Output of a stage, in its folder (the run folder, or ``<out>/<stage>`` inside a report)::

    <folder>/results.json               one entry per finished run ("runs"), and "separation": per pretrained
                                        run with its random twin among the runs, each metric's separation
    <folder>/<run>/result.json          the same entry, written last: its presence (and key) marks the run finished
    <folder>/<run>/replicates.safetensors   the bootstrap replicates of the run's metrics (float64
                                        ``<metric>.draws`` (n_boot,), ``<metric>.units`` (B,)), possibly none;
                                        written before result.json and stamped with its key: part of "finished"
    <folder>/<run>/trajectories.*       the collected trajectories (when kept), with their own key

The separation of a metric (``mechanics.separation``) compares a pretrained run with its random twin (same
``model``, weights 'random') on their replicates: the interval of the difference (a paired bootstrap over
prompts, since both runs resample the same prompt indices with the run's seed), Cliff's delta of the
per-trajectory values, and the verdict. The pretrained entry returned by ``run_stages`` carries it as
``entry["separation"] = {"random": <twin run>, "metrics": {metric: separation}}``.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data import CORPORA, load_prompts
from ..errors import RunFolderError, UnsupportedArchitectureError
from ..mechanics.separation import separation
from ..models import LoadedModel, load_model
from ..models.pretrained.architectures import blocks
from ..models.pretrained.loading import param_fingerprint, resolve_device
from ..models.pretrained.random_init import build_random
from ..models.spec import ModelSpec
from ..provenance import claim_run_folder, environment, inside, package_versions, read_json, write_json
from ..trajectories import Decoding, Site, Trajectory, extract, generate, load_trajectories, save_trajectories
from .config import RunConfig, TrajectoryConfig
from .presets import preset_record

CORPUS_DEFAULT_PROMPTS = 32
# Folded into every stage's resume key: raised when the runner's own outputs change, so runs finished by an
# older runner are redone. 2: replicates.safetensors and the separation block.
RUNNER_VERSION = 2
REPLICATES_FILE = "replicates.safetensors"
DEFAULT_SEPARATION_CI = 0.95  # the level when a run's conventions record none ("ci")


def digest(obj) -> str:
    """A short sha256 of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    """One per-model analysis: the sites it records, the settings it reads, and what it does with trajectories."""

    name: str  # its experiment name, and its folder inside a report
    sites: str  # the sites it needs ('final', 'block.-1', 'all'), resolved against each model
    settings: dict  # every setting the analysis reads: with the trajectories' key, its resume key
    analyse: Callable[[list[Trajectory], LoadedModel | None, int | None], dict]  # -> {"metrics", "conventions", ...}
    save: Callable[[Path, dict], None] = lambda run_dir, result: None  # per-run files from analyse's output
    needs_model: bool = False  # the analysis calls the model (e.g. its read-out), not only the trajectories
    version: int = 1  # raised whenever the analysis computes something new: results of an older version are redone
    across_runs: Callable[[list[dict]], dict] | None = None  # entries -> a summary over the runs (results.json)
    shows_progress: bool = False  # analyse takes progress=<bool> (a long analysis draws its own bars unless --quiet)


@dataclass(frozen=True)
class RunPlan:
    """One model to run: parsed from a spec string, or a model the caller loaded (``loaded``)."""

    name: str  # its folder name, unique per model identity
    label: str  # what the results call it
    weights: str  # 'pretrained' or 'random'
    spec: ModelSpec | None = None  # None for a model loaded by the caller
    loaded: LoadedModel | None = field(default=None, compare=False, repr=False)
    twin_of: LoadedModel | None = field(default=None, compare=False, repr=False)  # random twin of a loaded model

    def identity(self) -> dict:
        if self.spec is not None:
            return self.spec.identity()
        source = self.loaded or self.twin_of
        return {"in_memory": source.description.param_fingerprint or param_fingerprint(source.model),
                "weights": self.weights}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "model"


def plan_runs(cfg: RunConfig) -> list[RunPlan]:
    """Every model of ``cfg``, each followed by its random twin when asked; duplicates once."""
    plans: list[RunPlan] = []
    for m in cfg.models:
        if isinstance(m, LoadedModel):
            fp = m.description.param_fingerprint or param_fingerprint(m.model)
            m.description.param_fingerprint = fp
            stem = f"{_slug(m.description.spec)}-{fp[:8]}"
            plans.append(RunPlan(f"{stem}__{m.description.weights}", m.description.spec, m.description.weights,
                                 loaded=m))
            if cfg.random_twins and m.description.weights != "random":
                plans.append(RunPlan(f"{stem}__random", "random:" + m.description.spec, "random", twin_of=m))
            continue
        spec = ModelSpec.parse(m)
        plans.append(RunPlan(spec.run_name, spec.label, spec.weights, spec))
        if cfg.random_twins and not spec.random:
            twin = spec.with_random()
            plans.append(RunPlan(twin.run_name, twin.label, twin.weights, twin))
    unique = {p.name: p for p in plans}
    return list(unique.values())


def _load(plan: RunPlan, cfg: RunConfig) -> LoadedModel:
    if plan.loaded is not None:
        return plan.loaded
    if plan.twin_of is not None:
        source = plan.twin_of
        pretrained = copy.deepcopy(source.model) if cfg.init == "shuffled" else None  # never permute the caller's
        model = build_random(source.model.config, init=cfg.init, seed=cfg.seed, dtype=next(source.model.parameters()).dtype,
                             pretrained=pretrained).to(next(source.model.parameters()).device)
        desc = dataclasses.replace(source.description, weights="random", init=cfg.init, seed=cfg.seed,
                                   param_fingerprint=param_fingerprint(model), weights_sha256={}, notes=[
                                       f"random twin of the in-memory model {source.description.spec}"])
        return LoadedModel(model, source.tokenizer, desc)
    return load_model(plan.spec.label, dtype=cfg.dtype, device=resolve_device(cfg.device), device_map=cfg.device_map,
                      trust_remote_code=cfg.trust_remote_code, init=cfg.init, seed=cfg.seed)


def n_blocks_of(model) -> int | None:
    """The model's number of blocks, or None when its layout is unknown (only the site 'final' then works)."""
    try:
        return len(blocks(model))
    except UnsupportedArchitectureError:
        return None


def resolve_sites(sites: str, n_blocks: int | None) -> str:
    """'block.-1' -> 'block.<L-1>' (and 'all' as is), so trajectories and results carry canonical names."""
    return ",".join(s if s in ("all", "final") else str(Site.parse(s, n_blocks if n_blocks is not None else 0))
                    for s in sites.split(","))


def collect_trajectories(traj: TrajectoryConfig, cfg: RunConfig, loaded: LoadedModel, prompts: list[str], *,
                         sites: str, progress: bool = False) -> list[Trajectory]:
    """Generated or teacher-forced trajectories of ``prompts`` at ``sites``, as ``traj`` says."""
    meta = {"model": loaded.description.label, "n_blocks": n_blocks_of(loaded.model)}
    if traj.trajectory == "generated":
        top_k = traj.top_k
        vocab = loaded.model.config.get_text_config().vocab_size
        if traj.decoding == "sample" and top_k > vocab:
            print(f"note: top_k {top_k} exceeds the vocabulary of {vocab}; clamped to {vocab}", file=sys.stderr)
            top_k = vocab
        return generate(loaded.model, loaded.tokenizer, prompts, new_tokens=traj.new_tokens,
                        context_tokens=traj.context_tokens, sites=sites,
                        decoding=Decoding(traj.decoding, traj.temperature, top_k, cfg.seed),
                        batch_size=cfg.batch_size, progress=progress, metadata=meta)
    return extract(loaded.model, loaded.tokenizer, prompts, sites=sites, max_tokens=traj.text_tokens,
                   n_context=traj.context_tokens, batch_size=cfg.batch_size, progress=progress, metadata=meta)


def resolve_prompts(cfg: RunConfig) -> list[str]:
    """The prompts of ``cfg``: n_prompts of them, or all of a file / the shipped set, or 32 of a corpus."""
    n = cfg.n_prompts or None
    if n is None and cfg.prompts in CORPORA:
        n = len(load_prompts(cfg.prompts))
        n = min(n, CORPUS_DEFAULT_PROMPTS)
    return load_prompts(cfg.prompts, n)


def note(text: str) -> None:
    """Resume notices always reach the user, --quiet or not: they say why nothing was recomputed."""
    print(text, file=sys.stderr)


def run_stages(cfg: RunConfig, traj: TrajectoryConfig, stages: list[Stage], *, experiment: str, config: object,
               folders: dict[str, Path] | None = None, progress: bool = True) -> dict[str, list[dict]]:
    """Run (or resume) every stage on every model of ``cfg``; returns {stage name: entries}.

    ``folders`` maps each stage to its output folder (default: all in ``cfg.out``, for a single stage).
    """
    out = claim_run_folder(cfg.out, experiment)
    prompts = resolve_prompts(cfg)
    folders = folders or {stages[0].name: out}
    write_json(out / "run.json", {"experiment": experiment, "config": _plain(config), "seed": cfg.seed,
                                  "preset": preset_record(config), "prompts_sha256": digest(prompts),
                                  "environment": environment()})
    for name, folder in folders.items():
        if folder != out:
            claim_run_folder(folder, name)
            write_json(folder / "run.json", {"experiment": name, "part_of": experiment, "config": _plain(config)})
    sites = ",".join(dict.fromkeys(s.sites for s in stages))
    base = {"prompts_sha256": digest(prompts), "run": cfg.identity(), "trajectory": dataclasses.asdict(traj),
            "sites": sites}
    entries: dict[str, list[dict]] = {s.name: [] for s in stages}
    for plan in tqdm(plan_runs(cfg), desc=f"{experiment}: models", disable=not progress):
        _run_plan(plan, cfg, traj, stages, folders, base, prompts, sites, entries, progress)
        for s in stages:  # finished results are on disk before the next model starts
            write_json(folders[s.name] / "results.json", _results(s.name, entries[s.name], []))
    for s in stages:  # every run is finished: compare each pretrained run with its random twin, summarise
        pairs = separations(folders[s.name], entries[s.name])
        summary = s.across_runs(entries[s.name]) if s.across_runs is not None else None
        write_json(folders[s.name] / "results.json", _results(s.name, entries[s.name], pairs, summary))
    return entries


def _results(stage: str, entries: list[dict], pairs: list[dict], across_runs: dict | None = None) -> dict:
    """The stage's results.json: its runs exactly as their result.json files, the separation block, and the
    stage's summary across runs (when it has one)."""
    out = {"experiment": stage, "runs": [{k: v for k, v in e.items() if k != "separation"} for e in entries],
           "separation": pairs}
    if across_runs is not None:
        out["across_runs"] = across_runs
    return out


def separations(folder: Path, entries: list[dict]) -> list[dict]:
    """Per pretrained entry whose random twin (same ``model``, weights 'random') is among ``entries``: the
    separation of every metric with replicates in both runs, read from their replicates files.

    Returns [{"pretrained": run, "random": run, "metrics": {metric: Separation.to_dict()}}] and attaches
    ``{"random": run, "metrics": ...}`` to each such pretrained entry as ``entry["separation"]``.
    """
    twins: dict[str, dict] = {}
    for e in entries:
        if e.get("weights") == "random":
            twins.setdefault(e["model"], e)
    pairs = []
    for e in entries:
        twin = twins.get(e["model"]) if e.get("weights") != "random" else None
        if twin is None:
            continue
        a, b = (load_replicates(inside(folder, x["run"])) for x in (e, twin))
        level = e.get("conventions", {}).get("ci", DEFAULT_SEPARATION_CI)
        metrics = {}
        for name in (n for n in a if n in b):
            values = tuple(_point(x["metrics"].get(name)) for x in (e, twin))
            metrics[name] = separation(a[name]["draws"], b[name]["draws"], a[name]["units"], b[name]["units"],
                                       ci=level, values=values).to_dict()
        e["separation"] = {"random": twin["run"], "metrics": metrics}
        pairs.append({"pretrained": e["run"], "random": twin["run"], "metrics": metrics})
    return pairs


def _point(metric) -> float | None:
    """The point value of an estimate {"value", ...}, or of a plain number."""
    value = metric.get("value") if isinstance(metric, dict) else metric
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def save_replicates(run_dir: Path, replicates: dict, key: str) -> None:
    """{metric: {"draws", "units"}} -> ``<run_dir>/replicates.safetensors``, float64, stamped with ``key``."""
    tensors = {}
    for name, parts in replicates.items():
        for part in ("draws", "units"):
            tensors[f"{name}.{part}"] = torch.as_tensor(np.asarray(parts[part], dtype=np.float64)).reshape(-1).contiguous()
    save_file(tensors, str(run_dir / REPLICATES_FILE), metadata={"result_key": key})


def load_replicates(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """``<run_dir>/replicates.safetensors`` as {metric: {"draws": (n_boot,), "units": (B,)}}."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in load_file(str(run_dir / REPLICATES_FILE)).items():
        name, _, part = key.rpartition(".")
        out.setdefault(name, {})[part] = tensor.numpy()
    return {name: parts for name, parts in out.items() if {"draws", "units"} <= parts.keys()}


def _replicates_match(run_dir: Path, key: str) -> bool:
    """The run's replicates file exists and was written by the run of ``key`` (its header alone is read)."""
    path = run_dir / REPLICATES_FILE
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("result_key") == key
    except Exception:  # a damaged header: recompute the run rather than fail
        return False


def _run_plan(plan, cfg, traj, stages, folders, base, prompts, sites, entries, progress) -> None:
    identity = plan.identity()
    traj_key = digest({**base, "model": identity})
    keys = {s.name: digest({"trajectories": traj_key, "stage": s.name, "settings": s.settings, "version": s.version,
                            "runner": RUNNER_VERSION})
            for s in stages}
    pending = []
    for s in stages:
        finished = inside(folders[s.name], plan.name) / "result.json"
        entry = read_json(finished) if finished.is_file() else {}
        if entry and entry.get("run") != plan.name:
            raise RunFolderError(f"{finished} names the run {entry.get('run')!r}, not its own folder {plan.name!r}: "
                                 "the file was edited or damaged; delete it to recompute that run")
        if entry.get("result_key") == keys[s.name] and _replicates_match(finished.parent, keys[s.name]):
            entries[s.name].append(entry)
            note(f"[resume] {s.name}/{plan.name}: finished earlier with the same settings, kept")
        else:
            pending.append(s)
    if not pending:
        return
    store = inside(folders[stages[0].name], plan.name)
    loaded, trajectories, description = None, None, None
    if not any(s.needs_model for s in pending):
        trajectories, description = _cached_trajectories(store, traj_key)
    if trajectories is None or any(s.needs_model for s in pending):
        loaded = _load(plan, cfg)
        description = loaded.description.to_dict()
    if trajectories is None:
        run_sites = resolve_sites(sites, n_blocks_of(loaded.model))
        trajectories = collect_trajectories(traj, cfg, loaded, prompts, sites=run_sites, progress=progress)
        if cfg.save_trajectories:
            store.mkdir(parents=True, exist_ok=True)
            save_trajectories(trajectories, store / "trajectories")
            write_json(store / "trajectories.key.json", {"key": traj_key, "model_description": description})
    n_blocks = trajectories[0].metadata.get("n_blocks") if trajectories else None
    common = {**{k: v for k, v in dataclasses.asdict(traj).items()}, "prompts": cfg.prompts,
              "n_prompts": len(prompts), "prompts_sha256": base["prompts_sha256"],
              "init": cfg.init if plan.weights == "random" else None}
    for s in pending:
        run_dir = inside(folders[s.name], plan.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        result = (s.analyse(trajectories, loaded, n_blocks, progress=progress) if s.shows_progress
                  else s.analyse(trajectories, loaded, n_blocks))
        s.save(run_dir, result)
        save_replicates(run_dir, result.get("replicates") or {}, keys[s.name])  # before result.json: part of finished
        entry = {"run": plan.name, "model": plan.label.removeprefix("random:"), "spec": plan.label,
                 "weights": plan.weights, "metrics": result["metrics"],
                 # The stage's own conventions win over the run-wide ones of the same name: a stage's top_k (the
                 # steering lists' length) is not the sampler's top_k of the trajectory settings.
                 "conventions": {**common, **result.get("conventions", {})}, "model_identity": identity,
                 "model_description": description, "versions": package_versions(), "seed": cfg.seed,
                 "result_key": keys[s.name]}
        write_json(run_dir / "result.json", entry)  # written last: marks the run finished
        entries[s.name].append(entry)
    if loaded is not None and plan.loaded is None:
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _cached_trajectories(store: Path, key: str):
    """(trajectories, model description) saved under ``key``, or (None, None)."""
    marker = store / "trajectories.key.json"
    if not (marker.is_file() and (store / "trajectories.safetensors").is_file()):
        return None, None
    saved = read_json(marker)
    if saved.get("key") != key:
        return None, None
    return load_trajectories(store / "trajectories"), saved.get("model_description")


def _plain(config):
    """A config as JSON-able data, field by field (``dataclasses.asdict`` would deep-copy a loaded model)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {k: _plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [_plain(v) for v in config]
    return config.description.label if isinstance(config, LoadedModel) else config
