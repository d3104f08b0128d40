"""Token streams for training: a corpus encoded once, split contiguously, sampled by a seeded generator."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.corpora import CORPORA, read_corpus
from ..errors import DataError


def corpus_text(corpus: str) -> str:
    if corpus in CORPORA:
        return read_corpus(corpus)
    path = Path(corpus).expanduser()
    if not path.is_file():
        raise DataError(f"corpus {corpus!r} is neither a known corpus ({', '.join(CORPORA)}) nor a file",
                        options=("corpus",))
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"corpus file {str(path)!r} is unreadable as UTF-8 text ({exc}); give a UTF-8 text file",
                        options=("corpus",)) from None


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """Contiguous split: the first 1 - val_fraction of the characters train, the rest validate."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}", options=("val_fraction",))
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


@dataclass
class TokenSplit:
    tokens: torch.Tensor  # (N,) int64
    block_size: int  # sequences are block_size tokens, targets shifted by one
    name: str = ""  # which split (train, validation), for messages

    def __post_init__(self):
        if len(self.tokens) < self.block_size + 2:
            split = f"the {self.name} split" if self.name else "a split"
            raise DataError(f"{split} of {len(self.tokens)} tokens is shorter than block_size "
                            f"{self.block_size} + 2: use a longer corpus, another val_fraction or a smaller block_size",
                            options=("corpus", "val_fraction", "block_size"))

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (batch_size, block_size), at positions drawn from ``generator``."""
        starts = torch.randint(len(self.tokens) - self.block_size - 1, (batch_size,), generator=generator)
        offsets = torch.arange(self.block_size + 1)
        chunk = self.tokens[starts[:, None] + offsets]  # (B, block + 1)
        return chunk[:, :-1], chunk[:, 1:]
