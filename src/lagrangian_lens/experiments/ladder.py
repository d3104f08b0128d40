"""The SPLM-family ladder: which member of the scalar-potential family comes closest to matched attention?

Every arm (the matched GPT, the vanilla SPLM, its learned context pools ξ with and without LayerNorm after every
step, PARF, and hybrids with attention blocks among the S-steps) is sized to one parameter budget (the
SPLM-family arms by their potential's width, the GPT by its depth) and trains the same ``steps`` optimiser steps
of batch_size × block_size tokens, for every seed, on one corpus and tokenizer. Per run: the validation
perplexity curve, the counted training FLOPs (:mod:`..training.flops`), tokens/s, wall time and, for the SPLM
family, the energy drift per S-block. The experiment's folder::

    DIR/run.json, DIR/results.json (rewritten after every run), DIR/flops.json (per arm config), DIR/figures/
    DIR/tokenizer/                      the tokenizer every run trains (identically); its digest keys the runs
    DIR/runs/<arm>-s<seed>/             a training run (training.train): checkpoint/, metrics.jsonl, ladder.json

Its arms, settings and sizing are in :mod:`.ladder_arms`; its tables, figures and report section in
:mod:`.ladder_report`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, DataError, TrainingError
from ..provenance import claim_run_folder, environment, read_json, write_json
from ..training import TrainConfig, load_checkpoint, sample, train
from ..training.checkpoint import CHECKPOINT, read_meta
from ..training.config import build_model, resolve_device
from ..training.data import TokenSplit, corpus_text
from ..training.flops import training_flops_per_token
from ..training.loop import METRICS, RESUMABLE_CHANGES, prepare_data
from .grok import cpu_threads
from .ladder_arms import ARMS, DEFAULT_ARMS, REFERENCE, SCALES, ArmPlan, LadderConfig, size_arms
from .ladder_report import ladder_figures, read_rows, report_section, summarise, summary
from .registry import Experiment, register
from .runner import digest

__all__ = ["ARMS", "DEFAULT_ARMS", "SCALES", "LadderConfig", "run_ladder"]

LADDER_VERSION = 1  # what a run's record means (identity, drift); bump to retrain every run made before
FLOPS_VERSION = 1  # the FLOP counter's conventions (training.flops); bump to recount the cached arms
RECORD = "ladder.json"  # in every run folder: what the run was made from beyond its TrainConfig, and its wall time
# A kept run may differ from the request in these only; a change of max_steps retrains, as it moves the lr schedule.
KEPT_CHANGES = RESUMABLE_CHANGES - {"max_steps"}


@dataclass
class LadderData:
    """The corpus and tokenizer every run trains on, and what identifies them."""

    tokenizer: object
    train: TokenSplit
    val: TokenSplit
    identity: dict  # corpus and tokenizer digests and the ladder's version: part of every run's resume key

    def __post_init__(self):
        if not {"corpus_sha256", "tokenizer_sha256"} <= self.identity.keys():
            raise ValueError(f"the data identity {sorted(self.identity)} lacks the corpus or tokenizer digest")

    @property
    def vocab(self) -> int:
        return len(self.tokenizer)


def load_data(cfg: LadderConfig, out: Path) -> LadderData:
    """Tokenize the corpus as every run will (training's own pipeline); the tokenizer is saved to DIR/tokenizer."""
    tc = cfg.arm_config(REFERENCE, seed=cfg.seeds[0])
    tokenizer, train_split, val_split = prepare_data(tc, out)
    folder = out / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder)
    files = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sorted(folder.iterdir())))
    identity = {"corpus_sha256": hashlib.sha256(corpus_text(cfg.corpus).encode()).hexdigest(),
                "tokenizer_sha256": files.hexdigest(), "ladder_version": LADDER_VERSION}
    return LadderData(tokenizer, train_split, val_split, identity)


def arm_flops(plan: ArmPlan, data: LadderData, device: torch.device, cache: Path) -> float:
    """Counted training FLOPs per token of the arm's model on a real training batch, cached per model config."""
    tc = plan.config
    arch_config = dataclasses.asdict((tc.splm_config if tc.arch == "splm" else tc.gpt_config)(data.vocab))
    key = digest({"arch": tc.arch, "model": arch_config, "batch": [tc.batch_size, tc.block_size],
                  "version": FLOPS_VERSION})
    known = read_json(cache) if cache.is_file() else {}
    if key not in known:
        torch.manual_seed(0)
        model = build_model(tc.arch, arch_config).to(device)
        x, y = data.train.batch(tc.batch_size, torch.Generator().manual_seed(0))
        known[key] = training_flops_per_token(model, x.to(device), y.to(device))
        write_json(cache, known)
    return known[key]


def relative_drift(drift: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per S-block, mean |ΔE| / mean |E| (E over the block's two states): each (n_S, ...) -> (n_S,)."""
    scale = 0.5 * (before.abs().flatten(1).mean(1) + after.abs().flatten(1).mean(1))  # (n_S,)
    return drift.abs().flatten(1).mean(1) / scale


def energy_drift(run: Path, val: TokenSplit, tc: TrainConfig, n_batches: int, device: torch.device) -> list[float]:
    """The trained SPLM's relative energy drift per S-block over ``n_batches`` fixed validation batches."""
    model, _, _ = load_checkpoint(run, str(device))
    gen = torch.Generator().manual_seed(tc.seed + 20_000)
    parts = {"energy_drift_per_block": [], "energy_before": [], "energy_after": []}
    for _ in range(n_batches):
        physics = model.physics(val.batch(tc.batch_size, gen)[0].to(device))
        for key, kept in parts.items():
            kept.append(physics[key].float().cpu())  # (n_S, B, T)
    drift, before, after = (torch.cat(parts[k], dim=1) for k in parts)
    return relative_drift(drift, before, after).tolist()


def _action(tc: TrainConfig, identity: dict, name: str) -> str:
    """fresh, resume or keep the run in ``tc.out``; a run made with other settings is retrained (fresh), noted."""
    run = Path(tc.out)
    if not (run / CHECKPOINT / "meta.json").is_file():
        return "fresh"
    meta = read_meta(run)
    old = {**dataclasses.asdict(TrainConfig()), **meta["train_config"]}
    record = read_json(run / RECORD) if (run / RECORD).is_file() else {}
    changed = [k for k, v in dataclasses.asdict(tc).items() if k not in KEPT_CHANGES and old.get(k) != v]
    changed += [k for k in identity if record.get("identity", {}).get(k) != identity[k]]
    if meta["step"] > tc.max_steps:
        changed.append(f"steps ({meta['step']} trained)")
    if changed:
        print(f"note: the run {name} was made with other settings ({', '.join(changed)}); retraining it",
              file=sys.stderr)
        return "fresh"
    return "keep" if meta["step"] == tc.max_steps else "resume"


def train_run(tc: TrainConfig, identity: dict, name: str, progress: bool) -> str:
    """Train, resume or keep the run; returns its status: finished, or diverged (the error's message)."""
    run = Path(tc.out)
    action = _action(tc, identity, name)
    if action == "keep":  # it reached its last step (a diverged run stops short of it, and resumes)
        return "finished"
    if action == "fresh":  # train(force=True) starts the run's metrics log over
        write_json(run / RECORD, {"identity": identity, "wall_s": 0.0, "status": "started"})
    start, status = time.perf_counter(), "finished"
    try:
        train(tc, resume=action == "resume", force=action == "fresh", progress=progress)
    except TrainingError as exc:  # a diverged arm is a result; the ladder goes on
        print(f"note: the run {name} stopped: {exc}", file=sys.stderr)
        status = f"diverged: {exc}"
    record = read_json(run / RECORD)
    write_json(run / RECORD, {**record, "wall_s": record["wall_s"] + time.perf_counter() - start, "status": status})
    return status


def run_result(plan: ArmPlan, tc: TrainConfig, status: str, flops: float, data: LadderData, cfg: LadderConfig,
               device: torch.device) -> dict:
    """One run's numbers: its curve, final val PPL, FLOPs, throughput, wall time and energy drift per S-block."""
    run = Path(tc.out)
    rows = read_rows(run / METRICS)
    tokens_per_step = tc.batch_size * tc.block_size
    train_s = sum(tokens_per_step / r["tokens_per_s"] for r in rows if r.get("tokens_per_s"))
    curve = [(r["step"], r["val_ppl"]) for r in rows if r.get("val_ppl") is not None]
    finished = status == "finished" and bool(curve) and curve[-1][0] == tc.max_steps
    drift = (energy_drift(run, data.val, tc, cfg.drift_batches, device) if finished and tc.arch == "splm" else None)
    steps = rows[-1]["step"] if rows else 0
    return {"run": run.name, "arm": plan.name, "seed": tc.seed, "status": status, "steps": steps,
            "params": plan.params, "flops_per_token": flops, "tokens_per_step": tokens_per_step,
            "train_flops": flops * tokens_per_step * steps, "curve_steps": [s for s, _ in curve],
            "curve_val_ppl": [p for _, p in curve], "final_val_ppl": curve[-1][1] if finished else None,
            "train_s": train_s, "tokens_per_s": steps * tokens_per_step / train_s if train_s else None,
            "wall_s": read_json(run / RECORD)["wall_s"], "drift_per_block": drift}


def samples(results: dict, cfg: LadderConfig, plans: dict[str, ArmPlan], device: torch.device) -> dict:
    """A greedy and a sampled continuation of ``cfg.prompt`` by the best SPLM-family arm and the GPT (first seed)."""
    arms = [a for a in (results["best"]["arm"] if results["best"] else None, "gpt") if a in plans]
    out = {"prompt": cfg.prompt, "seed": cfg.seeds[0], "new_tokens": cfg.sample_tokens,
           "temperature": cfg.temperature, "arms": {}}
    for arm in arms:
        run = Path(cfg.out) / "runs" / f"{arm}-s{cfg.seeds[0]}"
        if not (run / CHECKPOINT).is_dir():
            continue
        model, tokenizer, _ = load_checkpoint(run, str(device))
        ways = {"greedy": {"greedy": True}, "sampled": {"temperature": cfg.temperature}}
        out["arms"][arm] = {how: sample(model, tokenizer, cfg.prompt, new_tokens=cfg.sample_tokens, seed=0, **kw)
                            for how, kw in ways.items()}
    return out


def run_ladder(cfg: LadderConfig, *, progress: bool = True) -> dict:
    """Train (or resume) every arm at every seed; write results.json after every run, then figures and samples."""
    out = claim_run_folder(cfg.out, "ladder")
    device = resolve_device(cfg.device)
    with cpu_threads(cfg.threads):
        data = load_data(cfg, out)
        try:  # the samples come last: a prompt the tokenizer cannot encode must fail before any training
            data.tokenizer.encode(cfg.prompt)
        except DataError as exc:
            raise ConfigError("prompt", f"{cfg.prompt!r} cannot be encoded: {exc}; give a prompt in the corpus's "
                                        "alphabet") from None
        plans = size_arms(cfg, data.vocab)
        write_json(out / "run.json", {"experiment": "ladder", "config": dataclasses.asdict(cfg),
                                      "size": dataclasses.asdict(cfg.size), "vocab": data.vocab,
                                      "data": data.identity, "arms": [p.record() for p in plans.values()],
                                      "environment": environment()})
        flops = {name: arm_flops(plan, data, device, out / "flops.json") for name, plan in plans.items()}
        runs = []
        order = [(seed, name) for seed in cfg.seeds for name in cfg.arms]  # seed-major: a whole ladder first
        for i, (seed, name) in enumerate(order, 1):
            tc = plans[name].run_config(seed, out / "runs" / f"{name}-s{seed}")
            if progress:
                print(f"[{i}/{len(order)}] {name}, seed {seed}", file=sys.stderr)
            status = train_run(tc, data.identity, f"{name}-s{seed}", progress)
            runs.append(run_result(plans[name], tc, status, flops[name], data, cfg, device))
            results = summarise(runs, [p.record() for p in plans.values()], complete=i == len(order))
            write_json(out / "results.json", results)
        results["samples"] = samples(results, cfg, plans, device)
    write_json(out / "results.json", results)
    ladder_figures(out, results)
    return results


EXPERIMENT = register(Experiment(
    name="ladder", help="the SPLM-family ladder: every ξ pool, PARF and hybrid against matched attention",
    config=LadderConfig, section=report_section, figures=ladder_figures, run=run_ladder, summary=summary,
))
