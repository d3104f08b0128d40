"""Exception types. Every message names the offending input, what was expected, and how to fix it."""


class LensError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ModelSpecError(LensError, ValueError):
    """A model spec that cannot be resolved or loaded."""


class UnsupportedArchitectureError(LensError, ValueError):
    """A model whose layer layout is not in the architecture table."""


class DataError(LensError, ValueError):
    """Prompts or corpora that are missing, empty or unreadable."""


class TrajectoryError(LensError, ValueError):
    """A trajectory whose shapes or values cannot be analysed."""
