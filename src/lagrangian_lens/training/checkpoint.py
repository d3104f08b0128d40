"""Checkpoints: safetensors weights, a JSON meta file, and optimiser + RNG state for an exact resume.

Layout of ``<run>/checkpoint/``: ``model.safetensors``, ``meta.json`` (arch, model config, train config, step,
seed, tokenizer folder, git sha, metrics), ``optimizer.pt`` and ``rng.pt`` (both loaded with weights_only=True).
A checkpoint is written to a temporary folder and renamed, so a kill mid-write leaves the previous one intact.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

CHECKPOINT = "checkpoint"



def save_checkpoint(run_dir: Path, model, optimizer, rng: dict, meta: dict) -> Path:
    run_dir = Path(run_dir)
    tmp = run_dir / f".{CHECKPOINT}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng, tmp / "rng.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    final = run_dir / CHECKPOINT
    old = run_dir / f".{CHECKPOINT}.old{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_dir(path: Path) -> Path:
    """Accept a run folder or its checkpoint folder."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    if (path / CHECKPOINT / "meta.json").is_file():
        return path / CHECKPOINT
    raise CheckpointError(f"no checkpoint in {str(path)!r}: expected {CHECKPOINT}/meta.json (a run folder of "
                          "`lagrangian-lens train`)")


def read_meta(path: Path) -> dict:
    return json.loads((checkpoint_dir(path) / "meta.json").read_text())


def load_weights(path: Path, model) -> None:
    model.load_state_dict(load_file(str(checkpoint_dir(path) / "model.safetensors")))


def load_training_state(path: Path, optimizer) -> dict:
    """Restore the optimiser in place; returns the RNG state dict."""
    ckpt = checkpoint_dir(path)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    return torch.load(ckpt / "rng.pt", weights_only=True)
