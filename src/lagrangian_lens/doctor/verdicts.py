"""What the doctor says of one reading of one model: a verdict, the largest error, the tolerance it was held to.

Verdicts, best first:

* ``SUPPORTED``: the reading equals the model's own output within the stated tolerance;
* ``DEGRADED``: it works, with a stated limit (e.g. attention read from log-probabilities, so U and F are not
  identified);
* ``SILENTLY_WRONG``: it runs but disagrees with the model's own output: the worst, since nothing else says so;
* ``ERROR``: the toolkit refused the model cleanly; the note holds its message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError

SUPPORTED, DEGRADED, SILENTLY_WRONG, ERROR = "SUPPORTED", "DEGRADED", "SILENTLY_WRONG", "ERROR"
VERDICTS = (SUPPORTED, DEGRADED, SILENTLY_WRONG, ERROR)
# How bad each verdict is, for a model's overall verdict (an ERROR is honest, a silent disagreement is not).
_SEVERITY = {SUPPORTED: 0, DEGRADED: 1, ERROR: 2, SILENTLY_WRONG: 3}
# A float comparison passes when max |reading − reference| <= RELATIVE_EPS · eps(dtype) · max(1, max |reference|):
# 1e-5 relative in float32 (what batching, padding and the KV cache move by), scaled to the model's precision.
RELATIVE_EPS = 84


def tolerance(reference: torch.Tensor) -> float:
    """The largest error a reading of ``reference`` may have: float rounding of its dtype, scaled by its size."""
    finite = reference[torch.isfinite(reference)]
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    return RELATIVE_EPS * torch.finfo(reference.dtype).eps * max(1.0, scale)


@dataclass(frozen=True)
class Cell:
    """One reading of one model, checked against the model's own output."""

    reading: str  # the reading's name, a key of readings.READINGS
    verdict: str  # one of VERDICTS
    max_error: float | None = None  # the largest |reading − reference| seen (None: nothing compared)
    tolerance: float | None = None  # the largest error allowed where max_error was seen (0: bit for bit)
    note: str = ""  # the limit (DEGRADED), the disagreement (SILENTLY_WRONG) or the refusal (ERROR)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ConfigError("verdict", f"{self.verdict!r} is not one of {VERDICTS}")
        if self.verdict == SUPPORTED and self.max_error is not None and self.max_error > (self.tolerance or 0):
            raise ConfigError("verdict", f"SUPPORTED with error {self.max_error:.3g} above tolerance {self.tolerance}")

    def as_json(self) -> dict:
        number = lambda x: None if x is None or not math.isfinite(x) else x  # noqa: E731
        return {"verdict": self.verdict, "max_error": number(self.max_error), "tolerance": self.tolerance,
                "note": self.note}


@dataclass
class Comparison:
    """Accumulates comparisons of one reading: the worst error relative to its tolerance, and what disagreed."""

    worst: tuple[float, float] | None = None  # (max_error, tolerance) of the worst ratio so far
    ratio: float = -1.0  # the worst max_error / tolerance so far
    failures: list[str] = field(default_factory=list)  # "what: error > tolerance" for each disagreement

    def add(self, what: str, reading: torch.Tensor, reference: torch.Tensor, tol: float | None = None) -> None:
        """Compare one tensor with its reference (same shape); ``tol`` 0 asks for equality bit for bit."""
        if reading.shape != reference.shape:
            self.failures.append(f"{what}: shape {tuple(reading.shape)} against {tuple(reference.shape)}")
            return
        tol = tolerance(reference) if tol is None else tol
        diff = (reading.double() - reference.double()).abs()
        same_inf = (reading == reference) & ~torch.isfinite(reference)  # −inf = −inf is no error
        err = float(torch.where(same_inf, 0.0, diff).nan_to_num(math.inf).max()) if diff.numel() else 0.0
        self.record(what, err, tol)

    def record(self, what: str, err: float, tol: float) -> None:
        ratio = err / tol if tol > 0 else (0.0 if err == 0 else math.inf)
        if ratio > self.ratio:
            self.ratio, self.worst = ratio, (err, tol)
        if ratio > 1:
            self.failures.append(f"{what}: error {err:.3g} > tolerance {tol:.3g}")

    def cell(self, reading: str, *, limit: str = "") -> Cell:
        """SILENTLY_WRONG on any failure, else DEGRADED when ``limit`` states one, else SUPPORTED."""
        err, tol = self.worst if self.worst is not None else (None, None)
        if self.failures:
            more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            return Cell(reading, SILENTLY_WRONG, err, tol, self.failures[0] + more)
        return Cell(reading, DEGRADED if limit else SUPPORTED, err, tol, limit)


def worst(verdicts) -> str:
    """The worst of some verdicts (SUPPORTED for none)."""
    return max(verdicts, key=_SEVERITY.__getitem__, default=SUPPORTED)
