"""The training configuration (one typed dataclass, also the CLI's options and loadable from TOML) and the
model it describes."""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.own.gpt import GPT, GPTConfig, matched_gpt_config, n_params
from ..models.own.splm import SPLM, SPLMConfig

ARCHS = ("splm", "gpt")


@dataclass
class TrainConfig:
    """Settings of a training run. Every field is also a command-line option."""

    arch: str = "splm"
    """splm (scalar-potential LM) or gpt (the matched baseline)."""
    corpus: str = "tiny-shakespeare"
    """Corpus name (tiny-shakespeare, tinystories, wikitext-2-test) or a path to a text file."""
    tokenizer: str = "char"
    """char, bpe:N (byte-level BPE trained on the train split), or a pretrained model spec."""
    val_fraction: float = 0.1
    """The last this-fraction of the corpus (contiguous) is the validation split."""
    block_size: int = 128
    """Context length of training sequences."""
    batch_size: int = 32
    """Sequences per optimiser step (per process under torchrun)."""
    d_model: int = 128
    """Width of the model."""
    n_steps: int = 8
    """SPLM: integration steps L (its depth)."""
    v_hidden: int = 512
    """SPLM: width of the potential MLP."""
    v_depth: int = 2
    """SPLM: hidden layers of the potential MLP."""
    dt: float = 1.0
    """SPLM: integration step."""
    mass: str = "global"
    """SPLM: mass model, global, token or logfreq."""
    gamma: float = 0.5
    """SPLM: initial damping."""
    learn_gamma: bool = True
    """SPLM: learn the damping (else keep it fixed)."""
    ln_after_step: bool = False
    """SPLM: LayerNorm without affine parameters after every step."""
    force_impl: str = "autograd"
    """SPLM: compute the force by autograd (create_graph) or closed_form (the MLP's input-gradient written out)."""
    n_layer: int = 0
    """GPT: blocks; 0 matches the parameter count of the SPLM these settings describe."""
    n_head: int = 4
    """GPT: attention heads."""
    max_steps: int = 2000
    """Optimiser steps."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    weight_decay: float = 0.1
    """AdamW weight decay (on matrices only)."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: off)."""
    eval_every: int = 200
    """Evaluate on the validation split every this-many steps."""
    eval_batches: int = 20
    """Batches per evaluation."""
    checkpoint_every: int = 500
    """Write a checkpoint every this-many steps (and at the end)."""
    seed: int = 1337
    """Seeds the weights, the batches and everything random."""
    device: str = "auto"
    """cpu, cuda, or auto."""
    bf16: bool = True
    """bf16 autocast on a GPU (ignored on a CPU)."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard package)."""
    out: str = "runs/train"
    """Run folder: checkpoints, metrics.jsonl, tokenizer, config."""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        SPLMConfig(mass=self.mass, force=self.force_impl)  # validates the SPLM choices early

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> TrainConfig:
        data = tomllib.loads(Path(path).read_text())
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown keys in {path}: {sorted(unknown)}")
        return cls(**{**data, **overrides})

    def splm_config(self, vocab_size: int) -> SPLMConfig:
        return SPLMConfig(vocab_size=vocab_size, block_size=self.block_size, d_model=self.d_model,
                          n_steps=self.n_steps, v_hidden=self.v_hidden, v_depth=self.v_depth, dt=self.dt,
                          mass=self.mass, gamma=self.gamma, learn_gamma=self.learn_gamma,
                          ln_after_step=self.ln_after_step, force=self.force_impl)

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        if self.n_layer > 0:
            return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, d_model=self.d_model,
                             n_layer=self.n_layer, n_head=self.n_head)
        with torch.device("meta"):
            target = n_params(SPLM(self.splm_config(vocab_size)))
        return matched_gpt_config(target, vocab_size=vocab_size, block_size=self.block_size, d_model=self.d_model,
                                  n_head=self.n_head)


def build_model(arch: str, model_config: dict):
    """An SPLM or GPT from its config dict (as saved in a checkpoint)."""
    if arch == "splm":
        return SPLM(SPLMConfig(**model_config))
    if arch == "gpt":
        return GPT(GPTConfig(**model_config))
    raise ValueError(f"unknown arch {arch!r}; known: {ARCHS}")
