"""Tokenizers for training: character-level, byte-level BPE trained locally, or any pretrained model's.

Spec strings: ``char``, ``bpe:N`` (a byte-level BPE with N tokens, trained on the training text), or a model
spec / tokenizer directory (e.g. ``smollm2-135m-instruct``). Every tokenizer saves itself into a run folder
and loads back from it, so a checkpoint carries the exact vocabulary it was trained with.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError

TOKENIZER_FILE = "tokenizer.json"  # our own format for char; the tokenizers library's for BPE
META_FILE = "tokenizer_meta.json"


class CharTokenizer:
    """One token per character; the vocabulary is every character of the text it is trained on, sorted.

    Training builds it from the whole corpus, train and validation splits both, so that encoding the validation
    split never fails on a character seen only there. This shares the alphabet only (no counts, no order), which
    a character model needs anyway to score the validation text at all.
    """

    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise DataError(f"characters {unknown[:10]} are not in this character vocabulary of {len(self)}")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, directory: Path) -> None:
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps({"chars": self.chars}))
        (Path(directory) / META_FILE).write_text(json.dumps({"kind": self.kind}))


class BPETokenizer:
    """A byte-level BPE from the ``tokenizers`` library, trained on the training split."""

    kind = "bpe"

    def __init__(self, backend):
        self.backend = backend

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        from tokenizers import ByteLevelBPETokenizer

        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator([text], vocab_size=vocab_size, min_frequency=2, show_progress=False)
        return cls(tok)

    def __len__(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids])

    def save(self, directory: Path) -> None:
        self.backend.save(str(Path(directory) / TOKENIZER_FILE))
        (Path(directory) / META_FILE).write_text(json.dumps({"kind": self.kind}))


class PretrainedTokenizer:
    """A pretrained model's tokenizer (transformers), used as it is."""

    kind = "pretrained"

    def __init__(self, tokenizer, source: str):
        self.tokenizer, self.source = tokenizer, source

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def save(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory))
        (Path(directory) / META_FILE).write_text(json.dumps({"kind": self.kind, "source": self.source}))


def build_tokenizer(spec: str, text: str, *, whole_text: str | None = None):
    """A tokenizer from its spec, trained on ``text`` where it needs training.

    ``whole_text`` (the whole corpus, when ``text`` is its train split) is what a char vocabulary covers, so no
    character of the corpus is unknown to it; BPE trains on ``text`` alone (bytes cover everything).
    """
    if spec == "char":
        return CharTokenizer.train(text if whole_text is None else whole_text)
    if spec.startswith("bpe:"):
        try:
            size = int(spec.removeprefix("bpe:"))
        except ValueError:
            raise DataError(f"bad tokenizer spec {spec!r}: use bpe:<vocab size>, e.g. bpe:2048") from None
        if size < 257:
            raise DataError(f"bpe vocab size {size} is too small: byte-level BPE starts from 256 byte tokens")
        return BPETokenizer.train(text, size)
    from ..models.pretrained.loading import tokenizer_for
    from ..models.pretrained.registry import ALIASES
    from ..models.spec import ModelSpec

    base = ModelSpec.parse(spec).base  # a random twin shares its model's tokenizer
    alias = ALIASES.get(base)
    tokenizer, source = tokenizer_for(base, alias.hub_id if alias and alias.hub_id else base)
    if source != base:  # tokenizer_for falls back to the default model's: a vocabulary nobody asked for
        raise DataError(f"the tokenizer of {spec!r} is not available offline; use char, bpe:N, or a model whose "
                        "tokenizer is installed or cached")
    return PretrainedTokenizer(tokenizer, source)


def load_tokenizer(directory: Path):
    """The tokenizer a run saved into ``directory``."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        kind = meta["kind"]
        if kind == "char":
            return CharTokenizer(json.loads((directory / TOKENIZER_FILE).read_text(encoding="utf-8"))["chars"])
        if kind == "bpe":
            from tokenizers import Tokenizer

            try:
                backend = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
            except Exception as exc:  # the tokenizers library raises a bare Exception for a missing or bad file
                raise ValueError(str(exc)) from exc
            return BPETokenizer(backend)
        from transformers import AutoTokenizer

        return PretrainedTokenizer(AutoTokenizer.from_pretrained(str(directory)), meta.get("source", str(directory)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise DataError(f"no readable tokenizer in {str(directory)!r} ({first}); it is saved by training into "
                        "<run>/tokenizer, restore that folder or retrain") from exc
