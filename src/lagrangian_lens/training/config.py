"""The training configuration (one typed dataclass, also the CLI's options and loadable from TOML) and the
model it describes. Every setting is checked in ``__post_init__``, so a bad value fails before any work."""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checks import check_device
from ..errors import ConfigError, ModelSpecError
from ..models.own.gpt import GPT, GPTConfig, matched_gpt_config, n_params
from ..models.own.pair import PAIR_FORMS
from ..models.own.splm import FORCE_MODES, MASS_MODES, SPLM, SPLMConfig, resolve_layers
from ..models.own.xi import parse_xi
from ..models.pretrained.loading import resolve_device as resolve_auto
from ..models.spec import ModelSpec

ARCHS = ("splm", "gpt")
BPE_MIN = 257  # a byte-level BPE starts from 256 byte tokens and needs at least one merge
# An alias, a hub id (org/name) or a .gguf file name; anything else must be an existing path.
MODEL_SPEC_RE = re.compile(r"(random:)?[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")


def resolve_device(device: str, field: str = "device") -> torch.device:
    """The torch device ``device`` names, checked; auto is the GPU when there is one, else the CPU."""
    return torch.device(resolve_auto(check_device(field, device)))


def check_tokenizer_spec(spec: str, field: str = "tokenizer") -> str:
    """``spec`` when it is char, bpe:N (N >= 257), or could name a pretrained model; else a ConfigError.

    The ``char`` and ``bpe`` forms are checked strictly; a model spec only for its syntax (an alias, a hub id, a
    .gguf name or an existing path), since whether it resolves is known only when it loads.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(field, f"{spec!r} is not a tokenizer; use char, bpe:N (e.g. bpe:2048) or a model spec")
    kind, colon, size = spec.partition(":")
    if kind.lower() in ("char", "bpe") and spec != "char":
        if kind != "bpe" or not colon or not size.isdigit():
            raise ConfigError(field, f"{spec!r} is not a tokenizer; use char or bpe:N with N a vocab size, "
                                     "e.g. bpe:2048")
        if int(size) < BPE_MIN:
            raise ConfigError(field, f"bpe vocab size {int(size)} is too small: a byte-level BPE starts from 256 "
                                     f"byte tokens; use bpe:{BPE_MIN} or more")
        return spec
    if spec == "char" or Path(spec).expanduser().exists():
        return spec
    try:
        ModelSpec.parse(spec)
    except ModelSpecError as exc:
        raise ConfigError(field, str(exc)) from exc
    if not MODEL_SPEC_RE.fullmatch(spec) and not spec.endswith(".gguf"):
        raise ConfigError(field, f"{spec!r} is neither char, bpe:N, a model alias, a hub id nor an existing path")
    return spec


def _check_range(cfg, field: str, *, low: float, strict: bool = True, high: float | None = None) -> None:
    """``cfg.field`` above ``low`` (or at least ``low`` when not ``strict``) and below ``high``; NaN always fails."""
    value = getattr(cfg, field)
    ok = math.isfinite(value) and (value > low if strict else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        raise ConfigError(field, f"must be {bound}{f' and < {high}' if high is not None else ''}, got {value}")


@dataclass
class TrainConfig:
    """Settings of a training run. Every field is also a command-line option."""

    CHOICES: typing.ClassVar[dict] = {"arch": ARCHS, "mass": MASS_MODES, "force_impl": FORCE_MODES,
                                      "pair_force": ("none", *PAIR_FORMS)}

    arch: str = "splm"
    """splm (scalar-potential LM) or gpt (the matched baseline)."""
    corpus: str = "tiny-shakespeare"
    """Corpus name (tiny-shakespeare, tinystories, wikitext-2-test) or a path to a text file."""
    tokenizer: str = "char"
    """char (every character of the corpus), bpe:N (a byte-level BPE of N >= 257 tokens trained on the train split),
    or a pretrained model spec."""
    val_fraction: float = 0.1
    """The last this-fraction of the corpus (contiguous) is the validation split."""
    block_size: int = 128
    """Context length of training sequences."""
    batch_size: int = 32
    """Sequences per optimiser step (per process under torchrun)."""
    d_model: int = 128
    """Width of the model."""
    n_steps: int = 8
    """SPLM: blocks L (its depth): integration steps, or as many S/A blocks as layers gives."""
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
    xi: str = "mean"
    """SPLM: the context pool ξ of the embeddings: mean, kema:N, legt:N, legt-dt:N or s4d:N."""
    pair_force: str = "none"
    """SPLM: PARF, a pair potential over earlier tokens that adds its force (none: off)."""
    layers: str = ""
    """SPLM: layer types, one per step: S (integration step) or A (attention block), e.g. SSAAAASS; '' is all S."""
    final_norm: bool = False
    """SPLM: an affine LayerNorm on the last state before the read-out."""
    n_layer: int = 0
    """GPT: blocks; 0 matches the parameter count of the SPLM these settings describe."""
    n_head: int = 4
    """Attention heads: the GPT's, and the SPLM's A blocks'."""
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
    """auto, cpu, cuda, cuda:N or mps (auto: the GPU when there is one)."""
    bf16: bool = True
    """bf16 autocast on a GPU (ignored on a CPU)."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard package)."""
    out: str = "runs/train"
    """Run folder: checkpoints, metrics.jsonl, tokenizer, config."""

    def __post_init__(self):
        for field in ("arch", "mass", "force_impl", "pair_force"):
            if getattr(self, field) not in self.CHOICES[field]:
                raise ConfigError(field, f"{getattr(self, field)!r} is not one of {', '.join(self.CHOICES[field])}")
        for field in ("block_size", "batch_size", "d_model", "n_steps", "v_hidden", "n_head",
                      "eval_every", "eval_batches", "checkpoint_every"):
            _check_range(self, field, low=0)
        for field in ("max_steps", "v_depth", "n_layer", "warmup_steps", "lr", "min_lr", "weight_decay", "grad_clip"):
            _check_range(self, field, low=0, strict=False)
        _check_range(self, "dt", low=0)
        _check_range(self, "val_fraction", low=0, high=1)
        parse_xi(self.xi)
        attention = self.arch == "gpt" or "A" in resolve_layers(self.layers, self.n_steps)
        if attention and self.d_model % self.n_head:
            raise ConfigError("n_head", f"d_model {self.d_model} is not divisible by n_head {self.n_head}; "
                                        "give an n_head that divides it")
        check_tokenizer_spec(self.tokenizer)
        check_device("device", self.device)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> TrainConfig:
        """The settings in the TOML file ``path`` (keys are field names), with ``overrides`` over them."""
        path = Path(path).expanduser()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config", f"no file {str(path)!r}; give the path of a TOML file of training "
                                        "settings") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError("config", f"{str(path)!r} is not a readable TOML file ({exc})") from None
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if key not in hints or key == "CHOICES":
                raise ConfigError("config", f"{str(path)!r} sets {key!r}, which is not a training setting; "
                                            f"known: {', '.join(f.name for f in dataclasses.fields(cls))}")
            want = hints[key]
            fits = (isinstance(value, want) and not (want is int and isinstance(value, bool))
                    or want is float and isinstance(value, int) and not isinstance(value, bool))
            if not fits:
                raise ConfigError(key, f"{str(path)!r} sets it to {value!r}; expected a {want.__name__}")
        return cls(**{**data, **overrides})

    def splm_config(self, vocab_size: int) -> SPLMConfig:
        return SPLMConfig(vocab_size=vocab_size, block_size=self.block_size, d_model=self.d_model,
                          n_steps=self.n_steps, v_hidden=self.v_hidden, v_depth=self.v_depth, dt=self.dt,
                          mass=self.mass, gamma=self.gamma, learn_gamma=self.learn_gamma,
                          ln_after_step=self.ln_after_step, force=self.force_impl, xi=self.xi,
                          pair_force=None if self.pair_force == "none" else self.pair_force, layers=self.layers,
                          attn_heads=self.n_head, final_norm=self.final_norm)

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
    raise ConfigError("arch", f"{arch!r} is not one of {', '.join(ARCHS)}")
