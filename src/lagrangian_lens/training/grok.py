"""Full-batch training of the grokking transformer on modular addition, with logging, checkpoints and an exact
resume.

One AdamW step per epoch on the whole training split (lr 1e-3, weight decay 1.0 on every parameter, betas
(0.9, 0.98)); the cross-entropy is taken in float64 (the logits are cast first), as in the grokking reference
setup, so the loss keeps resolving once the training pairs are fitted. Every ``log_every`` epochs (and at epoch
0 and the last one) a row goes to ``metrics.jsonl``: train and test loss and accuracy, the weight norm,
``time_s`` (seconds spent in optimiser steps so far; evaluation excluded, so it measures training speed), and
whatever the caller's ``probe(model)`` returns (the experiment passes the attention thermodynamics; this layer
does not know them). Rows carry ``step`` = ``epoch`` (one step per epoch), so the training pipeline's
conventions hold: ``loop.truncate_metrics`` drops the rows a resume redoes, and ``checkpoint.py`` writes the
safetensors + weights_only checkpoint (its meta also holds the grokked epoch and ``time_s``, so a resumed run
logs exactly what an uninterrupted one does).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_device, check_range
from ..data.modular import ModularData, check_fraction, check_modulus, modular_addition
from ..errors import TrainingError
from ..models.own.gpt import n_params
from ..models.own.grok import GrokConfig, GrokTransformer, weight_norm
from ..provenance import RUN_FILE, claim_run_folder, environment, package_versions, strict, write_json
from .checkpoint import (
    CHECKPOINT,
    clean_stale,
    load_training_state,
    load_weights,
    non_finite,
    read_meta,
    resume_meta,
    save_checkpoint,
)
from .config import resolve_device
from .loop import METRICS, truncate_metrics

EXPERIMENT = "grok-train"  # the owner recorded in a grokking run folder's run.json
ARCH = "grok"
GROKKED_ACC = 0.95  # the test accuracy that ends a run early under stop_after_grok (the detector's 0.95 rule)
# Settings that may differ between a run and its resume: they change neither the weights nor the logged rows.
RESUMABLE_CHANGES = frozenset({"epochs", "checkpoint_every", "stop_after_grok", "device", "out"})
LOOP_KEYS = ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "time_s")
Probe = Callable[[nn.Module], dict[str, float]]  # model -> values logged with each row (called under no_grad)


@dataclass
class GrokTrainConfig:
    """Settings of one grokking training run (data, model, optimiser, budget, logging)."""

    p: int = 113
    """Modulus of a + b mod p (any integer >= 2; the papers use primes, a composite p warns)."""
    fraction: float = 0.3
    """Fraction of the p² pairs used for training, in (0, 1); the rest is the test set."""
    seed: int = 0
    """Seeds the split, the initialisation and the shuffled labels."""
    shuffle_labels: bool = False
    """Control: permute the answers over all pairs, leaving no rule to learn."""
    n_layer: int = 1
    """Transformer blocks."""
    d_model: int = 128
    """Residual width."""
    n_head: int = 4
    """Attention heads (must divide d_model)."""
    d_mlp: int = 512
    """ReLU MLP hidden width."""
    lr: float = 1e-3
    """AdamW learning rate (constant)."""
    weight_decay: float = 1.0
    """AdamW weight decay, on every parameter; 0 is the control that should not grok."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.98
    """AdamW β2."""
    epochs: int = 20_000
    """Full-batch steps (one per epoch): the budget."""
    log_every: int = 100
    """Epochs between logged rows (epoch 0 and the last epoch are always logged)."""
    checkpoint_every: int = 1000
    """Epochs between checkpoints (the last epoch always has one)."""
    stop_after_grok: int = -1
    """Stop this many epochs after test accuracy first reaches 0.95 at a logged epoch; -1 runs every epoch."""
    device: str = "cpu"
    """cpu, cuda, cuda:N, mps, or auto (cuda when available)."""
    out: str = "runs/grok-train"
    """Run folder: run.json, metrics.jsonl, checkpoint/."""

    def __post_init__(self):
        check_modulus(self.p)
        check_fraction(self.fraction, self.p)
        self.model_config()  # checks the architecture's settings
        check_range("lr", float(self.lr), low=0, low_open=True)
        check_range("weight_decay", float(self.weight_decay), low=0)
        for name in ("beta1", "beta2"):
            check_range(name, float(getattr(self, name)), low=0, high=1, high_open=True)
        for name in ("epochs", "log_every", "checkpoint_every"):
            check_range(name, getattr(self, name), low=1)
        check_range("stop_after_grok", self.stop_after_grok, low=-1)
        check_device("device", self.device)

    def model_config(self) -> GrokConfig:
        return GrokConfig(vocab_size=self.p + 1, n_classes=self.p, d_model=self.d_model, n_head=self.n_head,
                          d_mlp=self.d_mlp, n_layer=self.n_layer)

    def data(self) -> ModularData:
        return modular_addition(self.p, self.fraction, self.seed, shuffle_labels=self.shuffle_labels)


def make_optimizer(model: nn.Module, cfg: GrokTrainConfig) -> torch.optim.AdamW:
    """AdamW with the decay on every parameter (biases and embeddings too), as the grokking setup has it."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                             betas=(cfg.beta1, cfg.beta2))


def answer_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 cross-entropy of the answers read at '=' (the last position), and the accuracy."""
    logits = model.answer_logits(x).double()  # (N, p)
    return F.cross_entropy(logits, y), (logits.argmax(-1) == y).double().mean()


@torch.no_grad()
def measure(model: nn.Module, data: ModularData, device: torch.device, probe: Probe | None) -> dict:
    """Train and test loss and accuracy, the weight norm, and the probe's values, of the current weights."""
    model.eval()
    row = {}
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        loss, acc = answer_loss(model, x.to(device), y.to(device))
        row.update({f"{split}_loss": float(loss), f"{split}_acc": float(acc)})
    row["weight_norm"] = weight_norm(model)
    if probe is not None:
        values = probe(model)
        if clash := sorted(set(values) & set(LOOP_KEYS)):
            raise TrainingError(f"the probe returned {', '.join(clash)}, which the training loop logs itself; "
                                "rename the probe's keys")
        row.update(values)
    model.train()
    return row


def _stop(cfg: GrokTrainConfig, epoch: int, grok_epoch: int | None) -> bool:
    """Whether the run is over at ``epoch``: its budget spent, or ``stop_after_grok`` epochs past grokking."""
    late = grok_epoch is not None and cfg.stop_after_grok >= 0 and epoch >= grok_epoch + cfg.stop_after_grok
    return epoch >= cfg.epochs or late


def train_grok(cfg: GrokTrainConfig, probe: Probe | None = None, *, resume: bool = False, force: bool = False,
               progress: bool = False) -> dict:
    """Train (or resume) the run ``cfg`` describes; returns its last logged row with ``grok_epoch`` (the first
    logged epoch with test accuracy >= 0.95, or None) and ``n_params``.

    ``resume`` continues the checkpoint in ``cfg.out`` (a finished run returns at once); ``force`` resumes
    despite changed settings, or starts over an existing checkpoint. ``probe`` is called on every logged row.
    """
    out = claim_run_folder(cfg.out, EXPERIMENT)
    clean_stale(out)
    meta = resume_meta(out, resume=resume, force=force, arch=ARCH, config=dataclasses.asdict(cfg),
                       resumable=RESUMABLE_CHANGES, defaults=dataclasses.asdict(type(cfg)()))
    device = resolve_device(cfg.device)
    data = cfg.data()
    torch.manual_seed(cfg.seed)
    model = GrokTransformer(cfg.model_config()).to(device)
    optimizer = make_optimizer(model, cfg)
    x, y = data.train_x.to(device), data.train_y.to(device)
    epoch, grok_epoch, time_s, row = 0, None, 0.0, {}
    if meta is not None:
        load_weights(out, model)
        torch.set_rng_state(load_training_state(out, optimizer)["torch"])
        epoch, grok_epoch, time_s, row = meta["step"], meta["grok_epoch"], meta["time_s"], meta["metrics"]
        truncate_metrics(out / METRICS, epoch)
    else:
        truncate_metrics(out / METRICS, -1)  # a forced restart starts a fresh log
        write_json(out / RUN_FILE, {"experiment": EXPERIMENT, "config": dataclasses.asdict(cfg), "seed": cfg.seed,
                                    "model_config": dataclasses.asdict(cfg.model_config()), "n_params": n_params(model),
                                    "data": {"n_train": len(data.train_idx), "n_test": len(data.test_idx)},
                                    "environment": environment()})
    bar = tqdm(total=cfg.epochs, initial=epoch, desc=f"grok p={cfg.p} seed={cfg.seed}", disable=not progress)
    with open(out / METRICS, "a", encoding="utf-8") as log:
        try:
            if meta is None:
                row = _log(log, {"epoch": 0, "step": 0, **measure(model, data, device, probe), "time_s": 0.0})
            while not _stop(cfg, epoch, grok_epoch):
                t0 = time.perf_counter()
                loss, _ = answer_loss(model, x, y)
                if not math.isfinite(value := float(loss.detach())):
                    raise TrainingError(f"the training loss became {value} at epoch {epoch}; lower lr or weight_decay "
                                        "and start again", options=("lr", "weight_decay"))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch += 1
                time_s += time.perf_counter() - t0
                if epoch % cfg.log_every == 0 or _stop(cfg, epoch, grok_epoch):
                    row = _log(log, {"epoch": epoch, "step": epoch, **measure(model, data, device, probe),
                                     "time_s": time_s})
                    if grok_epoch is None and row["test_acc"] >= GROKKED_ACC:
                        grok_epoch = epoch
                    bar.set_postfix(train=f"{row['train_acc']:.2f}", test=f"{row['test_acc']:.2f}")
                if epoch % cfg.checkpoint_every == 0 or _stop(cfg, epoch, grok_epoch):
                    _save(out, model, optimizer, cfg, epoch, grok_epoch, time_s, row)
                bar.update(1)
        finally:
            bar.close()
    return {**row, "grok_epoch": grok_epoch, "n_params": n_params(model)}


def _log(log, row: dict) -> dict:
    log.write(json.dumps(strict(row)) + "\n")
    log.flush()
    return row


def _save(out: Path, model, optimizer, cfg: GrokTrainConfig, epoch: int, grok_epoch: int | None, time_s: float,
          row: dict) -> None:
    if bad := non_finite(model.state_dict()):
        raise TrainingError(f"the weights became non-finite by epoch {epoch} ({', '.join(bad[:3])}); lower lr and "
                            "start again", options=("lr",))
    meta = {"arch": ARCH, "model_config": dataclasses.asdict(cfg.model_config()),
            "train_config": dataclasses.asdict(cfg), "step": epoch, "seed": cfg.seed,
            "tokenizer": "",  # none: the tokens are the numbers 0..p-1 and '=' (id p)
            "grok_epoch": grok_epoch, "time_s": time_s, "metrics": row, "n_params": n_params(model),
            "versions": package_versions()}
    save_checkpoint(out, model, optimizer, {"torch": torch.get_rng_state()}, meta)


def read_metrics(out: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``, in order (a line a kill cut short is skipped)."""
    rows = []
    for line in (Path(out) / METRICS).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def run_progress(out: str | Path) -> dict | None:
    """The checkpoint meta of the run in ``out`` (its ``step``, ``grok_epoch``, ``train_config``), or None when
    it holds none."""
    return read_meta(Path(out)) if (Path(out) / CHECKPOINT / "meta.json").is_file() else None
