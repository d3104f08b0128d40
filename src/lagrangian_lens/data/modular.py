"""The modular-addition data set of the grokking experiment: every pair (a, b) of residues mod p, as the tokens
``a b =`` with the answer (a + b) mod p read at ``=``, split into a train fraction and a held-out test set.

The split is seeded and stable: each pair's place in the order is a keyed hash of (seed, a, b), not a draw from
a library's random stream, so a given (p, seed) splits the same way on every machine and library version, and a
smaller train fraction is always a subset of a larger one.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import torch

from ..checks import check_range
from ..errors import ConfigError

N_CTX = 3  # tokens per example: a, b, '='


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, math.isqrt(n) + 1))


def check_modulus(p: int, field: str = "p") -> None:
    """``p`` must be an integer >= 2 (a + b mod p is defined for any such p); a composite p is allowed but warned
    about, since the grokking papers (and the Fourier algorithm the model learns) use primes."""
    if isinstance(p, bool) or not isinstance(p, int):
        raise ConfigError(field, f"must be an integer modulus, got {p!r}")
    check_range(field, p, low=2)
    if not is_prime(p):
        warnings.warn(f"{field} = {p} is not prime: modular addition is still defined, but the grokking papers use "
                      "primes (19, 31, 53, 97, 113); results may differ", stacklevel=3)


def check_fraction(fraction: float, p: int, field: str = "fraction") -> None:
    """``fraction`` in (0, 1), leaving at least one pair on each side of the split."""
    check_range(field, float(fraction), low=0, high=1, low_open=True, high_open=True)
    n_train = train_size(p, fraction)
    if not 1 <= n_train < p * p:
        raise ConfigError(field, f"{fraction} of the {p * p} pairs of p = {p} leaves {n_train} for training and "
                                 f"{p * p - n_train} for test; both need at least one, choose a fraction nearer 0.5")


def train_size(p: int, fraction: float) -> int:
    """How many of the p² pairs are training pairs: round(fraction · p²)."""
    return round(fraction * p * p)


def split_order(p: int, seed: int) -> torch.Tensor:
    """The pairs' indices a·p + b in split order (the first ``train_size`` are the training pairs): (p²,) long.

    Sorted by BLAKE2b of (seed, index), which no library update changes.
    """
    key = f"grok-split:{seed}:".encode()
    digests = [hashlib.blake2b(key + str(i).encode(), digest_size=8).digest() for i in range(p * p)]
    return torch.tensor(sorted(range(p * p), key=digests.__getitem__), dtype=torch.long)


@dataclass
class ModularData:
    """Every pair of a + b mod p as model inputs and labels, with its train/test split.

    ``inputs`` (p², 3) long: a, b and the '=' token (id p), in pair order a·p + b; ``labels`` (p²,) long in [0, p);
    ``train_idx`` (n_train,) and ``test_idx`` (n_test,) long: indices into the pairs, disjoint, covering all.
    """

    p: int
    inputs: torch.Tensor  # (p², 3)
    labels: torch.Tensor  # (p²,)
    train_idx: torch.Tensor  # (n_train,)
    test_idx: torch.Tensor  # (n_test,)

    def __post_init__(self):
        n = self.p * self.p
        if self.inputs.shape != (n, N_CTX) or self.labels.shape != (n,):
            raise ConfigError("p", f"inputs {tuple(self.inputs.shape)} and labels {tuple(self.labels.shape)} do not "
                                   f"hold the {n} pairs of p = {self.p}; build the data with modular_addition")
        both = torch.cat([self.train_idx, self.test_idx])
        if both.numel() != n or not torch.equal(both.sort().values, torch.arange(n)):
            raise ConfigError("fraction", f"train ({self.train_idx.numel()}) and test ({self.test_idx.numel()}) "
                                          f"indices do not partition the {n} pairs; build the data with "
                                          "modular_addition")

    @property
    def vocab_size(self) -> int:
        """The numbers 0..p-1 and '='."""
        return self.p + 1

    @property
    def equals_token(self) -> int:
        return self.p

    @property
    def train_x(self) -> torch.Tensor:
        return self.inputs[self.train_idx]  # (n_train, 3)

    @property
    def train_y(self) -> torch.Tensor:
        return self.labels[self.train_idx]  # (n_train,)

    @property
    def test_x(self) -> torch.Tensor:
        return self.inputs[self.test_idx]  # (n_test, 3)

    @property
    def test_y(self) -> torch.Tensor:
        return self.labels[self.test_idx]  # (n_test,)

    def probe_indices(self, k: int, seed: int) -> torch.Tensor:
        """A fixed, seeded batch of ``k`` pairs (train and test alike), for measurements logged during training:
        (min(k, p²),) long, in pair order."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(self.p * self.p, generator=gen)[:k].sort().values


def modular_addition(p: int, fraction: float = 0.3, seed: int = 0, *, shuffle_labels: bool = False) -> ModularData:
    """The data of a + b mod p with a seeded split of ``fraction`` of the pairs for training.

    ``shuffle_labels`` is the control without a rule to learn: the answers are permuted over all pairs (seeded),
    so the training pairs can be memorised but the test pairs cannot be predicted.
    """
    check_modulus(p)
    check_fraction(fraction, p)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()  # (p²,) each, pair index a·p + b
    inputs = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # (p², 3)
    labels = (a + b) % p  # (p²,)
    if shuffle_labels:
        labels = labels[torch.randperm(p * p, generator=torch.Generator().manual_seed(seed + 1))]
    order = split_order(p, seed)
    n_train = train_size(p, fraction)
    return ModularData(p, inputs, labels, order[:n_train].sort().values, order[n_train:].sort().values)
