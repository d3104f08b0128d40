"""The SPLM-family ladder's arms and settings: the arm table, the scales, the config, and the sizing of every arm
to one parameter budget (the SPLM-family arms by their potential's width, the GPT by its depth).

The runs themselves are in :mod:`.ladder`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checks import check_choice, check_device, check_range
from ..errors import ConfigError
from ..models.own.gpt import Block, GPTConfig, matched_gpt_config, n_params
from ..models.own.splm import ScalarPotential
from ..training import TrainConfig
from ..training.config import build_model

EVALS_PER_CHECKPOINT = 5  # a checkpoint every fifth evaluation: a resume redoes at most five evaluations' steps


def _middle_attention(n: int) -> str:
    """hybrid-1a: one attention block after the first n/2 − 1 S-steps ("SSSASSSS" at n = 8)."""
    return "S" * (n // 2 - 1) + "A" + "S" * (n - n // 2)


def _front_attention(n: int) -> str:
    """hybrid-2a, the paper's Variant A: two attention blocks first, then the flow ("AASSSSSS" at n = 8)."""
    return "AA" + "S" * (n - 2)


# The arms: name -> TrainConfig overrides over the ladder's shared settings (a ``layers`` value may be a function
# of n_steps). Adding an arm is one line here; every SPLM-family arm is then sized to the budget by its v_hidden.
ARMS: dict[str, dict] = {
    "gpt": {"arch": "gpt"},
    "splm": {},
    "splm-ln": {"ln_after_step": True},
    "splm-kema4": {"xi": "kema:4"},
    "splm-kema4-ln": {"xi": "kema:4", "ln_after_step": True},
    "splm-legt16": {"xi": "legt:16"},
    "splm-legt16-ln": {"xi": "legt:16", "ln_after_step": True},
    "splm-legt-dt16": {"xi": "legt-dt:16"},
    "splm-legt-dt16-ln": {"xi": "legt-dt:16", "ln_after_step": True},
    "splm-s4d16": {"xi": "s4d:16"},
    "splm-s4d16-ln": {"xi": "s4d:16", "ln_after_step": True},
    "parf-structural": {"pair_force": "structural"},
    "parf-mlp": {"pair_force": "mlp"},
    "hybrid-1a": {"layers": _middle_attention},
    "hybrid-2a": {"layers": _front_attention},
}
# parf-mlp evaluates an MLP on all T² token pairs at every S-step: about 11x a vanilla step on a CPU (1.1 s), 13
# more minutes for two seeds at the cpu scale; it runs when named (--arms parf-mlp).
DEFAULT_ARMS = [name for name in ARMS if name != "parf-mlp"]
REFERENCE = "splm"  # the vanilla SPLM: its count at (d_model, v_hidden) is the budget, unless a budget is given


@dataclass(frozen=True)
class Scale:
    """The sizes a scale sets; each is also its own option, which overrides it."""

    d_model: int
    v_hidden: int | None  # the reference SPLM's potential width; None: found from the budget
    budget: int | None  # the parameter budget; None: the reference SPLM's count at v_hidden
    block_size: int
    batch_size: int
    steps: int
    eval_every: int
    warmup_steps: int
    lr: float  # peak learning rate (AdamW)
    min_lr: float  # the learning rate at the end of the cosine decay

    def __post_init__(self):
        if (self.v_hidden is None) == (self.budget is None):
            raise ConfigError("budget", f"a scale sets one of v_hidden ({self.v_hidden}) and a budget "
                                        f"({self.budget}): the other follows from it")


SCALES = {
    # Sized on this project's 2-core CPU, shared with other work (load ≈ 3), one thread: a training step (16 × 64
    # tokens) took 0.03 s for the GPT, 0.10-0.12 s for the vanilla SPLM and its pools (d 32, V_θ ≈ 190 wide, 8
    # S-steps), 0.07-0.09 s for the hybrids and 0.26 s for parf-structural; a 300-step run with its evaluations
    # 12 s (GPT) to 40 s (SPLM) and 95 s (parf-structural), so the 14 default arms × 2 seeds take about 20 minutes.
    # At lr 1e-3 the vanilla SPLM sat on its unigram plateau (val PPL ≈ 325) from step 60 to 300; 3e-3 leaves it.
    "cpu": Scale(d_model=32, v_hidden=192, budget=None, block_size=64, batch_size=16, steps=300, eval_every=20,
                 warmup_steps=30, lr=3e-3, min_lr=3e-4),
    # The paper's pilot: ≈ 16.5M parameters, 4000 steps of 32 × 256 tokens (for a GPU).
    "paper": Scale(d_model=256, v_hidden=None, budget=16_500_000, block_size=256, batch_size=32, steps=4000,
                   eval_every=100, warmup_steps=200, lr=1e-3, min_lr=1e-4),
}
SIZE_FIELDS = tuple(f.name for f in dataclasses.fields(Scale))


@dataclass
class LadderConfig:
    """Settings of the SPLM-family ladder. Every field is also a command-line option; a size left unset (None)
    takes the value of ``scale``."""

    CHOICES: typing.ClassVar[dict] = {"scale": tuple(SCALES)}

    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    """Arms to train, in the tables' order (all but parf-mlp by default; see ARMS in experiments/ladder_arms.py)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Seeds: every arm trains once per seed (weights and batches)."""
    scale: str = "cpu"
    """Sizes: cpu (d_model 32, 300 steps of 16 × 64 tokens, about 20 minutes on 2 cores) or paper (≈ 16.5M
    parameters, 4000 steps of 32 × 256 tokens, for a GPU). The size options below override it."""
    corpus: str = "tinystories"
    """Corpus name (tinystories: the shipped sample, or the full file where it is found) or a text file."""
    tokenizer: str = "bpe:1024"
    """char, or bpe:N (a byte-level BPE trained on the train split, as training does)."""
    val_fraction: float = 0.1
    """The last this-fraction of the corpus is the validation split."""
    d_model: int | None = None
    """Width of every arm (None: the scale's)."""
    v_hidden: int | None = None
    """The reference (vanilla) SPLM's potential width; its parameter count is the budget (None: the scale's)."""
    budget: int | None = None
    """The parameter budget every arm is sized to, instead of v_hidden's count (None: the scale's)."""
    n_steps: int = 8
    """Blocks of every SPLM-family arm (S-steps, and the hybrids' attention blocks among them)."""
    block_size: int | None = None
    """Context length of training sequences (None: the scale's)."""
    batch_size: int | None = None
    """Sequences per optimiser step (None: the scale's)."""
    steps: int | None = None
    """Optimiser steps of every arm (None: the scale's)."""
    lr: float | None = None
    """Peak learning rate (AdamW) of every arm (None: the scale's, 3e-3 on cpu, 1e-3 for paper)."""
    min_lr: float | None = None
    """Learning rate at the end of the cosine decay (None: the scale's, a tenth of its lr)."""
    warmup_steps: int | None = None
    """Linear warmup steps (None: the scale's)."""
    eval_every: int | None = None
    """Evaluate on the validation split every this-many steps: the curve's resolution (None: the scale's)."""
    eval_batches: int = 8
    """Validation batches per evaluation (the same batches every time)."""
    drift_batches: int = 4
    """Validation batches on which each SPLM-family run's energy drift per S-block is measured."""
    prompt: str = "Once upon a time"
    """The prompt of the samples (best SPLM-family arm and GPT, first seed)."""
    sample_tokens: int = 60
    """New tokens per sample."""
    temperature: float = 0.8
    """Temperature of the sampled continuation (the other one is greedy)."""
    threads: int = 1
    """CPU threads torch uses while training (0: torch's default); on a busy CPU more only wait on each other."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    out: str = "runs/ladder"
    """Output folder: run.json, results.json, figures, and every run's folder in runs/."""

    def __post_init__(self):
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ConfigError("arms", f"{', '.join(map(repr, unknown)) or 'none given'}: not an arm; known arms: "
                                      f"{', '.join(ARMS)}")
        for name in ("arms", "seeds"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ConfigError(name, f"{values} is empty or repeats a value; give each at least once, once")
        check_choice("scale", self.scale, tuple(SCALES))
        if self.v_hidden is not None and self.budget is not None:
            raise ConfigError("budget", f"give v_hidden ({self.v_hidden}) or a budget ({self.budget}), not both: "
                                        "the budget is the vanilla SPLM's count at v_hidden")
        for name in (*SIZE_FIELDS, "eval_batches", "drift_batches", "sample_tokens"):
            if getattr(self, name) is not None:  # counts from 1; a warmup, a final lr may be 0; the lr exceeds 0
                check_range(name, getattr(self, name), low=0 if name in ("warmup_steps", "min_lr", "lr") else 1,
                            low_open=name == "lr")
        check_range("n_steps", self.n_steps, low=3)  # a hybrid keeps S-steps around its attention
        check_range("temperature", self.temperature, low=0, low_open=True)
        check_range("threads", self.threads, low=0)
        check_device("device", self.device)
        for name in self.arms:  # every arm's training settings are checked now, before any work
            self.arm_config(name, seed=self.seeds[0])

    @property
    def size(self) -> Scale:
        """The sizes this run uses: the scale's, with every size given explicitly over it."""
        base = SCALES[self.scale]
        given = {k: getattr(self, k) for k in SIZE_FIELDS if getattr(self, k) is not None}
        if "v_hidden" in given or "budget" in given:  # one of the two sets the budget; the other follows
            given.setdefault("v_hidden", None)
            given.setdefault("budget", None)
        return dataclasses.replace(base, **given)

    def arm_config(self, name: str, *, seed: int, v_hidden: int | None = None, n_layer: int = 0,
                   out: str | Path = "") -> TrainConfig:
        """The training settings of arm ``name`` at ``seed`` (its potential width ``v_hidden``, or the GPT's depth
        ``n_layer``, as sized; ``out``: its run folder)."""
        s = self.size
        overrides = {k: (v(self.n_steps) if callable(v) else v) for k, v in ARMS[name].items()}
        try:
            return TrainConfig(corpus=self.corpus, tokenizer=self.tokenizer, val_fraction=self.val_fraction,
                               block_size=s.block_size, batch_size=s.batch_size, d_model=s.d_model,
                               n_steps=self.n_steps, v_hidden=v_hidden or s.v_hidden or 1, n_layer=n_layer,
                               max_steps=s.steps, lr=s.lr, min_lr=s.min_lr, warmup_steps=s.warmup_steps,
                               eval_every=s.eval_every, eval_batches=self.eval_batches,
                               checkpoint_every=EVALS_PER_CHECKPOINT * s.eval_every, seed=seed, device=self.device,
                               out=str(out or Path(self.out) / "runs" / f"{name}-s{seed}"), **overrides)
        except ConfigError as exc:
            own = exc.field in {f.name for f in dataclasses.fields(self)}
            raise ConfigError(exc.field if own else "arms", f"arm {name!r}: {str(exc)}") from None


@dataclass(frozen=True)
class ArmPlan:
    """One arm sized to the budget: its training settings (seed and folder aside) and its parameter count."""

    name: str
    config: TrainConfig  # at the first seed, in its default folder; ``run_config`` gives each run's own
    params: int  # its parameter count
    budget: int  # the ladder's parameter budget

    def __post_init__(self):
        check_range("budget", self.budget, low=1)

    @property
    def mismatch(self) -> float:
        """(params − budget) / budget."""
        return (self.params - self.budget) / self.budget

    def run_config(self, seed: int, out: Path) -> TrainConfig:
        return dataclasses.replace(self.config, seed=seed, out=str(out))

    def record(self) -> dict:
        c = self.config
        return {"arm": self.name, "arch": c.arch, "params": self.params, "budget": self.budget,
                "mismatch": self.mismatch, "v_hidden": c.v_hidden if c.arch == "splm" else None,
                "n_layer": c.n_layer if c.arch == "gpt" else None, "xi": c.xi, "ln_after_step": c.ln_after_step,
                "pair_force": c.pair_force, "layers": c.layers}


def count_params(tc: TrainConfig, vocab: int) -> int:
    """Parameters of the model ``tc`` describes at vocabulary ``vocab`` (built on the meta device: no memory)."""
    arch_config = (tc.splm_config if tc.arch == "splm" else tc.gpt_config)(vocab)
    with torch.device("meta"):
        return n_params(build_model(tc.arch, dataclasses.asdict(arch_config)))


def closest_v_hidden(tc: TrainConfig, vocab: int, target: int, arm: str) -> int:
    """The potential width whose model count is closest to ``target`` (the count grows with it: bisection).

    Only the potential V_θ depends on v_hidden, so a width's count is the rest of the model (counted once) plus
    the potential alone, built on the meta device: a whole model per probe would take seconds per arm.
    """
    def potential(h: int) -> int:
        with torch.device("meta"):
            return n_params(ScalarPotential(tc.d_model, h, tc.v_depth, 1.0))

    rest = count_params(tc, vocab) - potential(tc.v_hidden)

    def count(h: int) -> int:
        return rest + potential(h)

    if (floor := count(1)) > target:
        raise ConfigError("budget", f"arm {arm!r} holds {floor:,} parameters at v_hidden 1, over the budget of "
                                    f"{target:,}; raise v_hidden, the budget or d_model, or drop the arm")
    lo, hi = 1, max(2, tc.v_hidden)
    while count(hi) < target:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # count(lo) < target <= count(hi)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if count(mid) >= target else (mid, hi)
    return min((lo, hi), key=lambda h: abs(count(h) - target))


def matched_depth(tc: TrainConfig, vocab: int, target: int) -> int:
    """The GPT depth whose count is closest to ``target`` (``matched_gpt_config``, searched up to the depth
    where the blocks alone exceed the target: each depth it tries builds a whole model)."""
    with torch.device("meta"):
        block = n_params(Block(GPTConfig(vocab_size=vocab, block_size=tc.block_size, d_model=tc.d_model,
                                         n_head=tc.n_head)))
    return matched_gpt_config(target, vocab_size=vocab, block_size=tc.block_size, d_model=tc.d_model,
                              n_head=tc.n_head, max_layers=min(48, target // block + 2)).n_layer


def size_arms(cfg: LadderConfig, vocab: int) -> dict[str, ArmPlan]:
    """Every arm of ``cfg`` sized to the budget: the reference SPLM's count (or ``cfg.size.budget``)."""
    first = cfg.seeds[0]
    reference = cfg.arm_config(REFERENCE, seed=first)
    budget = cfg.size.budget
    if budget is None:
        budget = count_params(reference, vocab)
    plans = {}
    for name in cfg.arms:
        tc = cfg.arm_config(name, seed=first)
        if tc.arch == "gpt":
            tc = cfg.arm_config(name, seed=first, n_layer=matched_depth(tc, vocab, budget))
        else:
            tc = cfg.arm_config(name, seed=first, v_hidden=closest_v_hidden(tc, vocab, budget, name))
        plans[name] = ArmPlan(name, tc, count_params(tc, vocab), budget)
    return plans
