"""Validation of setting values, shared by every config: each check raises ``ConfigError`` naming the field."""
from __future__ import annotations

import math
import re

import torch

from .errors import ConfigError

DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(name, f"{value!r} is not one of {', '.join(map(str, choices))}")


def check_range(name: str, value, *, low=None, high=None, low_open: bool = False, high_open: bool = False) -> None:
    """``value`` within [low, high] (open ends where asked); NaN always fails."""
    bad = isinstance(value, float) and math.isnan(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ConfigError(name, f"must be {' and '.join(x for x in (lo, hi) if x)}, got {value}")


def check_device(name: str, device: str) -> str:
    """``device`` when it names a device this machine has (auto, cpu, cuda, cuda:N, mps), else a ConfigError."""
    if not isinstance(device, str) or not DEVICE_RE.match(device):
        raise ConfigError(name, f"{device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(name, f"{device} requested but CUDA is not available; use cpu or auto")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(name, f"{device} requested but this machine has {torch.cuda.device_count()} GPU(s); "
                                    "use cuda:0 or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(name, "mps requested but MPS is not available; use cpu or auto")
    return device
