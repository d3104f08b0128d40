"""Anomalous texts for the energy anomaly monitor, built from held-out paragraphs: seeded, and model-free.

Every builder is a pure function of its inputs and its seed (an int, or a sequence of ints such as
``(run seed, item index)``, as ``numpy.random.default_rng`` takes it), so a set rebuilt with the same seed is the
same set. The kinds of anomaly:

* ``shuffled_tokens``: the paragraph's own tokens in a random order (token ids: the model reads exactly these);
  same tokens, same unigram statistics, no syntax.
* ``random_characters``: printable characters drawn uniformly; no words at all.
* ``repeated_phrase``: a few consecutive words of the paragraph looped to the paragraph's length; fluent locally,
  degenerate globally (a looping generation).
* ``other_domain``: passages of another corpus (TinyStories, Tiny Shakespeare); fluent text of another kind.
* ``splice``: paragraph a cut mid-sentence with paragraph b's middle pasted after the cut; fluent on both sides
  of one incoherent boundary, whose character offset the builder returns (``token_at`` turns it into a token).
"""
from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import DataError
from .corpora import read_corpus
from .prompts import corpus_passages

PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "  # no tabs or newlines: one line of text
SENTENCE_END = ".!?"
OTHER_DOMAINS = ("tinystories", "tiny-shakespeare")
PHRASE_WORDS = (3, 6)  # a repeated phrase holds this many words (inclusive range), drawn per paragraph
SPLICE_CUT = (0.35, 0.65)  # paragraph a is cut at a word boundary in this fraction of its characters
SPLICE_FROM = (0.25, 0.5)  # paragraph b is pasted from a word start in this fraction of its characters

Seed = int | Sequence[int]


def shuffled_tokens(text: str, tokenizer, seed: Seed, *, max_tokens: int | None = None) -> list[int]:
    """The token ids of ``text`` (cut to ``max_tokens``) in a seeded random order.

    Special tokens the tokenizer adds (a BOS) keep their places, so the shuffled sequence starts as a real one
    does. Returned as ids, not text: decoding a permutation and encoding it again would merge tokens differently.
    """
    if not text.strip():
        raise DataError("shuffled_tokens got an empty text; give a paragraph with words")
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens])
    special = set(tokenizer.all_special_ids)
    free = [i for i, t in enumerate(ids) if t not in special]  # positions whose tokens are permuted
    order = np.random.default_rng(seed).permutation(len(free))
    out = list(ids)
    for dst, src in zip(free, order):
        out[dst] = ids[free[src]]
    return out


def random_characters(n_chars: int, seed: Seed) -> str:
    """``n_chars`` printable characters (letters, digits, punctuation, space), each drawn uniformly."""
    if n_chars < 1:
        raise DataError(f"random_characters needs n_chars >= 1, got {n_chars}")
    picks = np.random.default_rng(seed).integers(0, len(PRINTABLE), size=n_chars)
    return "".join(PRINTABLE[i] for i in picks)


def repeated_phrase(text: str, seed: Seed) -> str:
    """A phrase of ``PHRASE_WORDS`` consecutive words of ``text``, looped (space-separated) to exactly ``len(text)``
    characters."""
    words = text.split()
    if not words:
        raise DataError("repeated_phrase got an empty text; give a paragraph with words")
    rng = np.random.default_rng(seed)
    k = min(int(rng.integers(PHRASE_WORDS[0], PHRASE_WORDS[1] + 1)), len(words))
    start = int(rng.integers(0, len(words) - k + 1))
    phrase = " ".join(words[start:start + k]) + " "
    return (phrase * (len(text) // len(phrase) + 1))[:len(text)]


def other_domain(corpus: str, n: int, seed: Seed, *, accept: Callable[[str], bool] | None = None) -> list[str]:
    """``n`` passages of ``corpus`` (tinystories or tiny-shakespeare, cut as ``data.prompts`` cuts them), in a
    seeded random order, keeping only those ``accept`` takes (e.g. long enough in tokens)."""
    if corpus not in OTHER_DOMAINS:
        raise DataError(f"other_domain: unknown corpus {corpus!r}; known: {', '.join(OTHER_DOMAINS)}")
    passages = corpus_passages(corpus, read_corpus(corpus))
    out = []
    for i in np.random.default_rng(seed).permutation(len(passages)):
        if accept is None or accept(passages[i]):
            out.append(passages[i])
            if len(out) == n:
                return out
    raise DataError(f"{corpus} holds only {len(out)} passages the monitor accepts (long enough in tokens), "
                    f"{n} asked; ask for fewer anomalies per type or fewer tokens per sequence",
                    options=("n_anomalies", "tokens"))


def splice(a: str, b: str, seed: Seed) -> tuple[str, int]:
    """(``a`` cut mid-sentence, a space, then ``b`` from a word start in its middle; the offset of b's first character).

    The cut is at a word boundary in ``SPLICE_CUT`` of a's characters whose preceding word does not end a
    sentence; b is pasted from a word start in ``SPLICE_FROM`` of its characters, mid-sentence where b has such a
    start there. So ``text[:offset - 1]`` is a prefix of ``a`` and ``text[offset:]`` a suffix of ``b``.
    """
    rng = np.random.default_rng(seed)
    cuts = [i for i in _word_boundaries(a, SPLICE_CUT) if a[:i].rstrip()[-1:] not in SENTENCE_END]
    if not cuts:
        raise DataError(f"splice: paragraph a ({len(a)} characters, {a[:40]!r}...) has no mid-sentence word "
                        f"boundary in {SPLICE_CUT} of its length; give a longer paragraph")
    starts = [j + 1 for j in _word_boundaries(b, SPLICE_FROM) if j + 1 < len(b) and not b[j + 1].isspace()]
    mid_sentence = [j for j in starts if b[:j].rstrip()[-1:] not in SENTENCE_END]
    starts = mid_sentence or starts
    if not starts:
        raise DataError(f"splice: paragraph b ({len(b)} characters, {b[:40]!r}...) has no word start in "
                        f"{SPLICE_FROM} of its length; give a longer paragraph")
    cut = cuts[int(rng.integers(len(cuts)))]
    start = starts[int(rng.integers(len(starts)))]
    head = a[:cut]
    return f"{head} {b[start:]}", len(head) + 1


def _word_boundaries(text: str, span: tuple[float, float]) -> list[int]:
    """Indices of the spaces of ``text`` that lie in the fraction ``span`` of its length, after some word."""
    low, high = (int(f * len(text)) for f in span)
    return [i for i in range(max(low, 1), min(high, len(text))) if text[i] == " " and not text[i - 1].isspace()]


def token_at(tokenizer, text: str, offset: int) -> int:
    """The index of the first token of ``text`` that holds a character at or after ``offset`` (needs a fast
    tokenizer's offsets). For a splice offset: the first token of the pasted text (its leading space included)."""
    encoding = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    for i, (_, end) in enumerate(encoding["offset_mapping"]):
        if end > offset:
            return i
    raise DataError(f"token_at: offset {offset} lies past the end of a text of {len(text)} characters")


def first_tokens_text(tokenizer, text: str, n_tokens: int) -> str:
    """The characters of ``text`` its first ``n_tokens`` tokens cover (the whole text when it has fewer)."""
    spans = [s for s in tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
             if s[1] > s[0]][:n_tokens]  # special tokens cover no characters
    return text[:spans[-1][1]] if spans else ""
