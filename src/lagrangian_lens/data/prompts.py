"""Prompt sets: the shipped default set, a text file with one prompt per line, or passages cut from a corpus.

Corpus passages, in a stated order:

* ``wikitext-2-test``: the opening paragraph of each article (60), then of each section, in document order.
* ``tinystories``: stories in file order.
* ``tiny-shakespeare``: speeches (blocks between blank lines) of at least 200 characters, in order.
"""
from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from ..errors import DataError
from .corpora import CORPORA, read_corpus

DEFAULT_PROMPTS = "default"
_HEADING = re.compile(r"^ (=(?: =)*) (.+) \1 $")  # " = Title = ", " = = Section = = ", ...


def default_prompts() -> list[str]:
    text = files("lagrangian_lens.data").joinpath("prompts/default.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def wikitext_openings(text: str, min_chars: int = 200) -> list[str]:
    """Opening paragraphs of articles (``= T =`` headings) first, then of sections (``= = S = =`` and deeper)."""
    articles, sections = [], []
    pending: list | None = None
    for line in text.split("\n"):
        m = _HEADING.match(line)
        if m:
            pending = articles if m.group(1) == "=" else sections
            continue
        if pending is not None and len(line.strip()) >= min_chars:
            pending.append(line.strip())
            pending = None
    return articles + sections


def corpus_passages(name: str, text: str) -> list[str]:
    if name == "wikitext-2-test":
        return wikitext_openings(text)
    if name == "tinystories":
        sep = "<|endoftext|>" if "<|endoftext|>" in text else "\n\n"
        return [s.strip() for s in text.split(sep) if s.strip()]
    if name == "tiny-shakespeare":
        return [b.strip() for b in text.split("\n\n") if len(b.strip()) >= 200]
    raise DataError(f"no passage rule for corpus {name!r}")


def load_prompts(source: str = DEFAULT_PROMPTS, n: int | None = None) -> list[str]:
    """The first ``n`` prompts of ``source``: 'default', a corpus name, or a file with one prompt per line."""
    if source == DEFAULT_PROMPTS:
        prompts = default_prompts()
    elif source in CORPORA:
        prompts = corpus_passages(source, read_corpus(source))
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(
                f"prompt source {source!r} is neither 'default', a corpus ({', '.join(CORPORA)}) nor a readable file"
            )
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise DataError(f"prompt file {str(path)!r} has no non-empty line; put one prompt per line")
    if n is not None:
        if n < 1:
            raise DataError(f"n_prompts must be >= 1, got {n}")
        if n > len(prompts):
            raise DataError(f"asked for {n} prompts but {source!r} has only {len(prompts)}")
        prompts = prompts[:n]
    return prompts
