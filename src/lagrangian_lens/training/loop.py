"""The training loop: AdamW with warmup and cosine decay, gradient clipping, evaluation, JSONL metrics,
checkpoints with an exact resume, a NaN guard, the causal-probe gate, and DDP under torchrun.

A run folder belongs to training (its run.json says ``"experiment": "train"``); the NaN guard stops on a
non-finite loss and never writes non-finite weights, so the checkpoint on disk is always one to resume from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data.tokenizers import build_tokenizer
from ..errors import CausalityError, CheckpointError, TrainingError
from ..models.own.causality import probe_model
from ..models.own.gpt import n_params
from ..models.pretrained.loading import param_fingerprint
from ..provenance import (
    RUN_FILE,
    check_writable_folder,
    claim_run_folder,
    environment,
    git_state,
    package_versions,
    read_json,
    strict,
    write_json,
)
from .checkpoint import (
    CHECKPOINT,
    clean_stale,
    load_run_tokenizer,
    load_training_state,
    load_weights,
    non_finite,
    read_meta,
    resume_meta,
    save_checkpoint,
)
from .config import TrainConfig, build_model
from .data import TokenSplit, corpus_text, split_text
from .distributed import DistInfo, mean_across, setup, teardown

# Settings that may differ between a run and its resume; any other change is refused unless forced.
RESUMABLE_CHANGES = frozenset({"max_steps", "eval_every", "checkpoint_every", "device", "tensorboard", "out"})
EXPERIMENT = "train"  # the owner recorded in a training run folder's run.json
METRICS = "metrics.jsonl"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


def prepare_data(cfg: TrainConfig, out: Path, tokenizer=None):
    """(tokenizer, train split, val split); trains and saves the tokenizer on a new run."""
    text = corpus_text(cfg.corpus)
    train_text, val_text = split_text(text, cfg.val_fraction)
    if tokenizer is None:
        tokenizer = build_tokenizer(cfg.tokenizer, train_text, whole_text=text)
    encode = lambda text: torch.tensor(tokenizer.encode(text), dtype=torch.long)  # noqa: E731
    return (tokenizer, TokenSplit(encode(train_text), cfg.block_size, "train"),
            TokenSplit(encode(val_text), cfg.block_size, "validation"))


@torch.no_grad()
def evaluate(model, split: TokenSplit, cfg: TrainConfig, device, n_batches: int | None = None) -> float:
    """Mean loss over a fixed set of batches (the same ones every time, so evaluations compare)."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 10_000)
    losses = []
    for _ in range(n_batches or cfg.eval_batches):
        x, y = split.batch(cfg.batch_size, gen)
        with _autocast(cfg, device):
            losses.append(float(model(x.to(device), y.to(device))[1]))
    model.train()
    return sum(losses) / len(losses)


def _autocast(cfg: TrainConfig, device: torch.device):
    if device.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def claim(out: Path) -> Path:
    """Check that ``out`` is writable and holds no other experiment's run (a training run of its own is fine)."""
    try:
        legacy = read_json(out / RUN_FILE)
    except (OSError, ValueError):
        legacy = None
    if isinstance(legacy, dict) and "experiment" not in legacy and "model_config" in legacy and "probe" in legacy:
        return check_writable_folder(out)  # a training run from before run folders recorded their owner
    return claim_run_folder(out, EXPERIMENT)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric rows up to ``step`` only, so a resumed run's rows follow its checkpoint without duplicates.

    The rows an interrupted run logged after its last checkpoint are redone by the resume; a line a kill cut
    short is dropped too.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def _stopped(out: Path, what: str) -> TrainingError:
    """The error for a diverged run; it names the last good checkpoint only when one is on disk."""
    try:
        kept = f"the last good checkpoint (step {read_meta(out)['step']}) is kept in {out / CHECKPOINT}"
        then = "resume from it with force (the settings change)"
    except CheckpointError:
        kept, then = "no checkpoint was written", "start again"
    return TrainingError(f"{what}; {kept}. Lower lr or dt, or raise grad_clip, then {then}.",
                         options=("lr", "dt", "grad_clip"))


def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Train (or resume) the model ``cfg`` describes; returns the final metrics.

    ``resume`` continues the checkpoint in ``cfg.out``; ``force`` resumes despite changed settings, or starts
    over an existing checkpoint. ``progress`` shows a progress bar (nothing else draws one).
    """
    claim(Path(cfg.out))
    _tensorboard_writer(cfg)  # a missing package fails here, before any work
    info = setup(cfg.device)
    try:
        return _train(cfg, info, resume=resume, force=force, progress=progress and info.is_main)
    finally:
        teardown(info)


def _train(cfg: TrainConfig, info: DistInfo, *, resume: bool, force: bool, progress: bool) -> dict:
    out = Path(cfg.out)
    if info.is_main:
        clean_stale(out)
    meta = resume_meta(out, resume=resume, force=force, arch=cfg.arch, config=dataclasses.asdict(cfg),
                       resumable=RESUMABLE_CHANGES, defaults=dataclasses.asdict(type(cfg)()))
    tokenizer, train_split, val_split = prepare_data(cfg, out, load_run_tokenizer(out, meta) if resume else None)
    torch.manual_seed(cfg.seed)
    arch_config = (cfg.splm_config if cfg.arch == "splm" else cfg.gpt_config)(len(tokenizer))
    model = build_model(cfg.arch, dataclasses.asdict(arch_config)).to(info.device)
    if cfg.arch == "splm" and cfg.mass == "logfreq":
        model.mass.set_token_frequencies(torch.bincount(train_split.tokens, minlength=len(tokenizer)).to(info.device))
    optimizer = make_optimizer(model, cfg)
    batch_gen = torch.Generator()
    step = 0
    if resume:
        load_weights(out, model)
        torch.set_rng_state(load_training_state(out, optimizer)["torch"])
        step = meta["step"]
        if info.is_main:
            truncate_metrics(out / METRICS, step)
    else:
        probe = probe_model(model, len(tokenizer), seq_len=min(16, cfg.block_size))
        if not probe.passed:  # the gate: a model that sees the future must not train
            raise CausalityError(f"{cfg.arch}: {probe}. Training aborted before the first optimiser step.")
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / METRICS).unlink(missing_ok=True)  # a forced restart's curve must not follow the old run's rows
            tokenizer.save(_mkdir(out / "tokenizer"))
            write_json(out / RUN_FILE, {"experiment": EXPERIMENT, "config": dataclasses.asdict(cfg),
                                        "model_config": dataclasses.asdict(arch_config), "n_params": n_params(model),
                                        "probe": str(probe), "environment": environment()})
    net = DistributedDataParallel(model) if info.enabled else model
    log = open(out / METRICS, "a", encoding="utf-8") if info.is_main else None
    writer_class = _tensorboard_writer(cfg) if info.is_main else None
    writer = writer_class(str(out / "tensorboard")) if writer_class is not None else None
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {cfg.arch}", disable=not progress)
    metrics: dict = {}
    tokens_per_step = cfg.batch_size * cfg.block_size * info.world_size
    try:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            # Batches are a function of (seed, rank, step): a resumed run draws exactly the batches it would have.
            batch_gen.manual_seed(cfg.seed * 1_000_003 + info.rank * 7919 + step)
            x, y = train_split.batch(cfg.batch_size, batch_gen)
            with _autocast(cfg, info.device):
                _, loss = net(x.to(info.device), y.to(info.device))
            # The mean across ranks is NaN on every rank when it is NaN on one, so all ranks stop together.
            train_loss = mean_across(float(loss.detach()), info)
            if not math.isfinite(train_loss):
                raise _stopped(out, f"the training loss became {train_loss} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            metrics = {"step": step, "train_loss": train_loss, "lr": lr_at(step - 1, cfg),
                       "tokens_per_s": tokens_per_step / (time.perf_counter() - t0)}
            if cfg.arch == "splm":
                metrics.update(model.learned_constants())
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                val = mean_across(evaluate(model, val_split, cfg, info.device), info)
                metrics.update(val_loss=val, val_ppl=math.exp(min(val, 50)))
            save = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
            # Checked on every rank (DDP keeps the weights equal), so all ranks stop together.
            if save and (bad := non_finite(model.state_dict())):
                raise _stopped(out, f"the weights became non-finite by step {step} ({', '.join(bad[:3])})")
            if info.is_main:
                log.write(json.dumps(strict(metrics)) + "\n")
                log.flush()
                if writer is not None:
                    for k, v in metrics.items():
                        writer.add_scalar(k, v, step) if k != "step" else None
                bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", **({"val": f"{metrics['val_loss']:.3f}"}
                                                                         if "val_loss" in metrics else {}))
                if save:
                    _save(out, model, optimizer, info, cfg, arch_config, step, metrics)
            bar.update(1)
    finally:
        bar.close()
        if log is not None:
            log.close()
        if writer is not None:
            writer.close()
    metrics["param_fingerprint"] = param_fingerprint(model)  # equal on every rank when DDP keeps them in sync
    return metrics


def _save(out, model, optimizer, info, cfg, arch_config, step, metrics) -> None:
    rng = {"torch": torch.get_rng_state()}
    meta = {"arch": cfg.arch, "model_config": dataclasses.asdict(arch_config), "train_config": dataclasses.asdict(cfg),
            "step": step, "seed": cfg.seed, "tokenizer": "../tokenizer", "git": git_state(), "metrics": metrics,
            "n_params": n_params(model), "world_size": info.world_size, "versions": package_versions()}
    save_checkpoint(out, model, optimizer, rng, meta)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _tensorboard_writer(cfg: TrainConfig):
    """TensorBoard's SummaryWriter class when ``cfg.tensorboard`` asks for it, else None."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TrainingError("tensorboard needs the tensorboard package: pip install tensorboard, or turn "
                            "tensorboard off", options=("tensorboard",)) from exc
    return SummaryWriter
