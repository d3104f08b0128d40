"""Using a trained checkpoint: load it, sample text from it, evaluate it on a corpus split.

A checkpoint that is missing, damaged or non-finite is refused with a CheckpointError when it loads.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, DataError
from .checkpoint import checkpoint_dir, load_run_tokenizer, load_weights, read_meta
from .config import build_model, resolve_device
from .data import corpus_text, split_text

SPLITS = ("train", "val")


def load_checkpoint(path: str | Path, device: str = "auto"):
    """(model, tokenizer, meta) from a run folder or its checkpoint folder; ``device`` auto is the GPU if any."""
    torch_device = resolve_device(device)
    ckpt = checkpoint_dir(Path(path))
    meta = read_meta(ckpt)
    try:
        model = build_model(meta["arch"], meta["model_config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt / 'meta.json'} does not describe a model this toolkit builds ({exc}); it is "
                              "damaged or from another version, retrain") from exc
    load_weights(ckpt, model)
    tokenizer = load_run_tokenizer(ckpt, meta)
    return model.to(torch_device).eval(), tokenizer, meta


def check_sampling(temperature: float, top_k: int, new_tokens: int) -> None:
    """Sampling settings that make sense, else a ConfigError naming the setting."""
    if not temperature > 0 or not math.isfinite(temperature):  # NaN fails both comparisons
        raise ConfigError("temperature", f"must be a finite number > 0, got {temperature}; use greedy for argmax "
                                         "decoding")
    if top_k < 0:
        raise ConfigError("top_k", f"must be >= 0 (0: all tokens), got {top_k}")
    if new_tokens < 0:
        raise ConfigError("new_tokens", f"must be >= 0, got {new_tokens}")


@torch.no_grad()
def sample(model, tokenizer, prompt: str, *, new_tokens: int = 200, temperature: float = 1.0, top_k: int = 0,
           greedy: bool = False, seed: int = 0) -> str:
    """Continue ``prompt``; the context is cut to the model's block size as it grows.

    ``top_k`` above the vocabulary size means all tokens (as 0 does).
    """
    check_sampling(temperature, top_k, new_tokens)
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(prompt) or [0]], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    block = model.config.block_size
    for _ in range(new_tokens):
        logits = model(ids[:, -block:])[0][:, -1].float()  # (1, V)
        if greedy:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            z = logits / temperature
            if top_k > 0:
                z = z.masked_fill(z < z.topk(min(top_k, z.shape[-1])).values[:, -1:], float("-inf"))
            nxt = torch.multinomial(F.softmax(z, -1), 1, generator=gen)
        ids = torch.cat([ids, nxt], dim=1)
    return tokenizer.decode(ids[0].tolist())


@torch.no_grad()
def evaluate_checkpoint(path: str | Path, corpus: str | None = None, split: str = "val", device: str = "auto",
                        max_blocks: int | None = None) -> dict:
    """Loss and perplexity over a whole split, in consecutive non-overlapping blocks."""
    if split not in SPLITS:
        raise ConfigError("split", f"{split!r} is not one of {', '.join(SPLITS)}")
    model, tokenizer, meta = load_checkpoint(path, device)
    device = next(model.parameters()).device
    cfg = meta["train_config"]
    if not isinstance(cfg.get("corpus"), str) or not isinstance(cfg.get("val_fraction"), float):
        raise CheckpointError(f"the checkpoint at {path} records no corpus or val_fraction; its meta.json is damaged")
    train_text, val_text = split_text(corpus_text(corpus or cfg["corpus"]), cfg["val_fraction"])
    tokens = torch.tensor(tokenizer.encode(val_text if split == "val" else train_text), device=device)
    block = model.config.block_size
    n_blocks = (len(tokens) - 1) // block
    if max_blocks:
        n_blocks = min(n_blocks, max_blocks)
    if n_blocks < 1:
        raise DataError(f"the {split} split has {len(tokens)} tokens, fewer than one block of {block} + 1; "
                        "evaluate on a longer corpus", options=("corpus",))
    total, count = 0.0, 0
    for s in range(0, n_blocks, 32):
        rows = torch.stack([tokens[i * block:(i + 1) * block + 1] for i in range(s, min(s + 32, n_blocks))])
        logits, _ = model(rows[:, :-1])
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten(), reduction="sum"))
        count += rows[:, 1:].numel()
    loss = total / count
    return {"split": split, "corpus": corpus or cfg["corpus"], "tokens": count, "loss": loss, "ppl": math.exp(loss),
            "step": meta["step"], "arch": meta["arch"]}
