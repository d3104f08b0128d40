"""Every exception the toolkit raises on purpose, under one base, ``LensError``.

Messages name the offending input, what was expected and how to fix it, in terms of the Python API
(setting names, not command-line flags): the command line adds its flag hints at the boundary, from
``LensError.options``, and catches ``LensError`` only, so a real bug keeps its traceback.
"""
from __future__ import annotations


class LensError(Exception):
    """Base class of every error the toolkit raises on purpose.

    ``options`` names the settings (config field names) the fix involves; the CLI shows them as flags.
    """

    def __init__(self, message: str = "", *, options: tuple[str, ...] = ()):
        super().__init__(message)
        self.options = tuple(options)


class ConfigError(LensError, ValueError):
    """A setting with a value outside its allowed set or range, found before any work starts."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}", options=(field,))
        self.field = field


class ModelSpecError(LensError, ValueError):
    """A model spec that cannot be resolved or loaded."""


class UnsupportedArchitectureError(LensError, ValueError):
    """A model whose layer layout is neither in the architecture table nor found by the fallback."""


class DataError(LensError, ValueError):
    """Prompts or corpora that are missing, empty or unreadable."""


class TrajectoryError(LensError, ValueError):
    """A trajectory whose shapes or values cannot be analysed."""


class RunFolderError(LensError, ValueError):
    """An output folder that belongs to another experiment, is not writable, or holds tampered results."""


class CheckpointError(LensError, ValueError):
    """A checkpoint that is missing, damaged, non-finite, of another architecture, or made with other settings."""


class CausalityError(LensError, RuntimeError):
    """A model failed the causal-violation probe."""


class TrainingError(LensError, RuntimeError):
    """Training stopped: a non-finite loss or weights, or a failed precondition."""
