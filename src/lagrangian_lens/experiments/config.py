"""The parts every model-running experiment composes its config from: which models and prompts (``RunConfig``),
how trajectories are collected (``TrajectoryConfig``) and how intervals are drawn (``BootstrapConfig``).

Each part validates itself in ``__post_init__``, so a bad value fails before any model loads. Each field's
docstring is its command-line help; ``CHOICES`` lists the allowed values of a field, shown in ``--help``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..checks import check_choice, check_device, check_range
from ..errors import ConfigError, LensError
from ..models import DEFAULT_MODEL
from ..models.pretrained.loading import DTYPES
from ..models.pretrained.random_init import INIT_SCHEMES
from ..models.spec import ModelSpec
from ..trajectories.generate import DECODINGS
from ..trajectories.trajectory import MODES
from .presets import PRESETS


@dataclass
class RunConfig:
    """Which models run, on which prompts, on what hardware, into which folder."""

    CHOICES = {"init": INIT_SCHEMES, "dtype": tuple(DTYPES), "preset": tuple(PRESETS)}

    preset: str | None = None
    """A paper's protocol (see README, Presets): its settings apply unless an option overrides them; results record both."""
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    """Model specs: alias, hub id, local directory, .gguf path, or random:<spec> (from Python also loaded models)."""
    random_twins: bool = False
    """Also run a random-weight twin of every pretrained model."""
    init: str = "hf"
    """Random-twin initialisation: hf (the library's _init_weights), torch (reset_parameters) or shuffled."""
    prompts: str = "default"
    """Prompt source: 'default' (shipped set), a corpus (wikitext-2-test, tinystories, tiny-shakespeare) or a file with one prompt per line."""
    n_prompts: int = 0
    """How many prompts to take, in order; 0: every prompt of a file or of the shipped set, 32 of a corpus."""
    batch_size: int = 16
    """Sequences per forward pass."""
    seed: int = 0
    """Seeds random twins, sampling, subsets, nulls and the bootstrap."""
    dtype: str = "float32"
    """Model dtype."""
    device: str = "auto"
    """cpu, cuda, cuda:N, mps, or auto (cuda when available)."""
    device_map: str | None = None
    """'auto' spreads a model too big for one device over all devices."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run."""
    save_trajectories: bool = True
    """Keep the analysed states of every run (safetensors) for later re-analysis."""
    out: str = "runs/experiment"
    """Output folder."""

    def __post_init__(self):
        if not self.models:
            raise ConfigError("models", "give at least one model")
        for m in self.models:
            if isinstance(m, str):
                try:
                    ModelSpec.parse(m)
                except LensError as exc:
                    raise ConfigError("models", str(exc)) from None
        if self.preset is not None:
            check_choice("preset", self.preset, tuple(PRESETS))
        check_choice("init", self.init, INIT_SCHEMES)
        check_choice("dtype", self.dtype, tuple(DTYPES))
        check_device("device", self.device)
        check_range("n_prompts", self.n_prompts, low=0)
        check_range("batch_size", self.batch_size, low=1)
        if self.device_map not in (None, "auto"):
            raise ConfigError("device_map", f"{self.device_map!r}: only 'auto' (or none) is supported")

    def identity(self) -> dict:
        """The settings that change what a model computes (not where or how fast)."""
        return {"dtype": self.dtype, "init": self.init, "seed": self.seed}


@dataclass
class TrajectoryConfig:
    """How the trajectories are made: the model's own continuation or the text's, and how long."""

    CHOICES = {"trajectory": MODES, "decoding": DECODINGS}

    trajectory: str = "generated"
    """generated (the model's own continuation) or teacher-forced (the text's continuation)."""
    decoding: str = "greedy"
    """greedy or sample (generated trajectories)."""
    temperature: float = 1.0
    """Sampling temperature (decoding=sample); > 0."""
    top_k: int = 0
    """Sample among the top-k tokens, 0 for all (decoding=sample); clamped to the vocabulary."""
    context_tokens: int = 50
    """Prompts are cut to their first this-many tokens, which count as context."""
    new_tokens: int = 100
    """Tokens generated after each prompt (teacher-forced: tokens of text analysed after the context)."""
    max_tokens: int = 0
    """Teacher-forced texts are cut to this many tokens; 0: context_tokens + new_tokens."""

    def __post_init__(self):
        check_choice("trajectory", self.trajectory, MODES)
        check_choice("decoding", self.decoding, DECODINGS)
        check_range("temperature", float(self.temperature), low=0, low_open=True)
        if math.isinf(self.temperature):
            raise ConfigError("temperature", "must be finite")
        check_range("top_k", self.top_k, low=0)
        check_range("context_tokens", self.context_tokens, low=1)
        check_range("new_tokens", self.new_tokens, low=1)
        check_range("max_tokens", self.max_tokens, low=0)

    @property
    def text_tokens(self) -> int:
        """Tokens of text kept per teacher-forced prompt."""
        return self.max_tokens or self.context_tokens + self.new_tokens


@dataclass
class BootstrapConfig:
    """Percentile bootstrap over trajectories for every interval."""

    n_bootstrap: int = 1000
    """Bootstrap resamples of trajectories for every confidence interval (0: none)."""
    ci: float = 0.95
    """Confidence level of the intervals, in (0, 1)."""

    def __post_init__(self):
        check_range("n_bootstrap", self.n_bootstrap, low=0)
        check_range("ci", float(self.ci), low=0, high=1, low_open=True, high_open=True)
