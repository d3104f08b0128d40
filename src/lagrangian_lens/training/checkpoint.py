"""Checkpoints: safetensors weights, a JSON meta file, and optimiser + RNG state for an exact resume.

Layout of ``<run>/checkpoint/``: ``model.safetensors``, ``meta.json`` (arch, model config, train config, step,
seed, tokenizer folder, git sha, metrics), ``optimizer.pt`` and ``rng.pt`` (both loaded with weights_only=True).
A checkpoint is written to a temporary folder and renamed, so a kill mid-write leaves the previous one intact;
the temporary folders a killed writer leaves behind are removed by the next save or resume. Non-finite weights
are never written, and are refused when read.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data.tokenizers import load_tokenizer
from ..errors import CheckpointError, DataError
from ..provenance import write_json

CHECKPOINT = "checkpoint"
TMP, OLD = f".{CHECKPOINT}.tmp", f".{CHECKPOINT}.old"  # + the writer's pid
META_TYPES = {"arch": str, "model_config": dict, "train_config": dict, "step": int, "tokenizer": str}


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` that hold a NaN or an infinity."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _writer_alive(name: str, prefix: str) -> bool:
    """Whether the process whose pid ends the temporary folder name ``name`` is still running (so still writing)."""
    pid = name.removeprefix(prefix)
    if not pid.isdigit() or int(pid) in (0, os.getpid()):
        return False  # not a writer's name, or our own leftover (this process writes one checkpoint at a time)
    if os.name != "posix":
        return True  # os.kill cannot probe a pid safely here: leave the folder be
    try:
        os.kill(int(pid), 0)  # signal 0: an existence check only
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or a pid beyond probing: leave it be
    return True


def clean_stale(run_dir: Path) -> list[Path]:
    """Remove the temporary folders of checkpoint writes killed midway; returns the removed folders.

    A kill between the two renames of a save leaves no ``checkpoint`` but a complete ``.checkpoint.old<pid>``:
    that one is restored, not removed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stale = sorted(p for p in run_dir.iterdir() if p.is_dir() and any(
        p.name.startswith(prefix) and not _writer_alive(p.name, prefix) for prefix in (TMP, OLD)))
    final = run_dir / CHECKPOINT
    for folder in stale:
        if folder.name.startswith(OLD) and not final.exists() and (folder / "meta.json").is_file():
            os.replace(folder, final)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return [p for p in stale if not p.exists()]


def save_checkpoint(run_dir: Path, model, optimizer, rng: dict, meta: dict) -> Path:
    run_dir = Path(run_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if bad := non_finite(state):  # the caller checks first and explains; this keeps the invariant on its own
        raise CheckpointError(f"refusing to write non-finite weights ({', '.join(bad[:3])}) into {run_dir}")
    clean_stale(run_dir)
    tmp, old, final = run_dir / f"{TMP}{os.getpid()}", run_dir / f"{OLD}{os.getpid()}", run_dir / CHECKPOINT
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        write_json(tmp / "meta.json", meta)  # last: a folder with meta.json is complete
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only when the write failed
    shutil.rmtree(old, ignore_errors=True)
    return final


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, short enough for a one-line error."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 120 else text[:117] + "..."


def checkpoint_dir(path: Path) -> Path:
    """Accept a run folder or its checkpoint folder."""
    path = Path(path).expanduser()
    if (path / "meta.json").is_file():
        return path
    if (path / CHECKPOINT / "meta.json").is_file():
        return path / CHECKPOINT
    what = "does not exist" if not path.exists() else f"holds no {CHECKPOINT}/meta.json"
    raise CheckpointError(f"no checkpoint at {str(path)!r}: it {what}; give a training run folder (or its "
                          f"{CHECKPOINT} folder)")


def read_meta(path: Path) -> dict:
    file = checkpoint_dir(path) / "meta.json"
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{file} is damaged ({_reason(exc)}); the checkpoint cannot be used, retrain or "
                              "restore the run folder from a copy") from exc
    bad = [k for k, kind in META_TYPES.items() if not isinstance(meta, dict) or not isinstance(meta.get(k), kind)]
    if bad:
        raise CheckpointError(f"{file} lacks a valid {', '.join(bad)}; it is damaged or not a training checkpoint, "
                              "retrain or restore the run folder from a copy")
    return meta


def load_weights(path: Path, model) -> None:
    """Load the checkpoint's weights into ``model``; damaged, non-finite or mismatched weights are refused."""
    file = checkpoint_dir(path) / "model.safetensors"
    try:
        state = load_file(str(file))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{file} is unreadable ({_reason(exc)}): the checkpoint is damaged or was cut "
                              "short; retrain or restore the run folder from a copy") from exc
    if bad := non_finite(state):
        raise CheckpointError(f"{file} holds non-finite weights ({', '.join(bad[:3])}): the run diverged; retrain "
                              "with a lower lr")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{file} does not fit the model its meta.json describes ({_reason(exc)}); the "
                              "checkpoint is damaged or mixed from two runs") from exc


def load_training_state(path: Path, optimizer) -> dict:
    """Restore the optimiser in place; returns the RNG state dict."""
    ckpt = checkpoint_dir(path)
    try:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        rng = torch.load(ckpt / "rng.pt", weights_only=True)
        if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
            raise ValueError("rng.pt holds no torch RNG state")
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"the optimiser or RNG state in {ckpt} is damaged ({_reason(exc)}); it cannot resume "
                              "exactly, retrain or restore the run folder from a copy") from exc
    return rng


def load_run_tokenizer(path: Path, meta: dict):
    """The tokenizer the checkpoint's run saved (its folder is named in meta.json, relative to the checkpoint)."""
    folder = (checkpoint_dir(path) / str(meta["tokenizer"])).resolve()
    try:
        return load_tokenizer(folder)
    except DataError as exc:
        raise CheckpointError(f"the checkpoint's tokenizer is missing or damaged: {exc}") from exc


def resume_meta(out: Path, *, resume: bool, force: bool, arch: str, config: dict, resumable: frozenset[str],
                defaults: dict | None = None) -> dict | None:
    """The checkpoint meta of ``out`` to resume from, checked against the requested run; None for a fresh start.

    Resuming needs a checkpoint of the same ``arch`` whose recorded train config equals ``config`` except in the
    ``resumable`` settings (``force`` accepts other changes); a fresh start over an existing checkpoint needs
    ``force``. Every refusal names the settings that fix it. A setting the checkpoint's record lacks (one added to
    the config after it was written) counts as its value in ``defaults``: a new setting's default is the one that
    reproduces the runs made before it existed, so those runs still resume.
    """
    if not resume:
        if (out / CHECKPOINT).exists() and not force:
            raise CheckpointError(f"{out} already holds a checkpoint: resume it, or force a restart over it, or give "
                                  "another out", options=("resume", "force", "out"))
        return None
    if not (out / CHECKPOINT / "meta.json").is_file():
        raise CheckpointError(f"nothing to resume in {out}: it holds no checkpoint; train without resume to "
                              "start a run there", options=("resume", "out"))
    meta = read_meta(out)
    if meta["arch"] != arch:
        raise CheckpointError(f"the checkpoint in {out} is a {meta['arch']!r} model; arch {arch} cannot resume it: "
                              "give another out", options=("arch", "out"))
    old = {**(defaults or {}), **meta["train_config"]}
    changed = {k: (old.get(k), v) for k, v in config.items() if k not in resumable and old.get(k) != v}
    if changed and not force:
        raise CheckpointError(
            "resuming with a changed config: " + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            + ". Resume with the original settings, or with force to accept the change.",
            options=(*changed, "force"))
    return meta
