"""What every judge shares: the item it rates, the rating question, and the ``Judge`` interface."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import DataError, LensError

# The question every rating judge asks (the lm judge in the model's chat template when it has one).
RATING_PROMPT = (
    "Below is the beginning of a text and a list of candidate next words for it, most likely first.\n\n"
    "Text: {context}\n"
    "Candidate next words: {candidates}\n\n"
    "On a scale from 1 to 10, how well do the candidate next words fit as continuations of the text "
    "(1: unrelated or nonsensical, 10: every candidate fits naturally and coherently)? "
    "Answer with a single integer from 1 to 10."
)
# Without a chat template the answer starts on its own line: a digit after a newline is one token in every
# tokenizer with single-token digits, whereas after a space some tokenizers merge the two.
PLAIN_SUFFIX = "\n\nRating (1-10):\n"


class JudgeError(LensError, RuntimeError):
    """A judge that could not produce a rating: an unreachable endpoint or a malformed reply."""


@dataclass(frozen=True)
class JudgeItem:
    """One next-token list to rate: the prompt text, the true next tokens' text and the top tokens' texts."""

    context: str  # the prompt text the list continues
    continuation: str  # the text of the true next tokens (may be blank at the end of a text)
    candidates: tuple[str, ...]  # the top tokens' texts, most probable first

    def __post_init__(self):
        if not isinstance(self.context, str) or not self.context.strip():
            raise DataError(f"JudgeItem.context must be non-blank text; got {self.context!r}. Fix: give the prompt text.")
        if not isinstance(self.continuation, str):
            raise DataError(f"JudgeItem.continuation must be text; got {type(self.continuation).__name__}.")
        iterable = not isinstance(self.candidates, str) and hasattr(self.candidates, "__iter__")
        candidates = tuple(self.candidates) if iterable else ()
        if not candidates or not all(isinstance(c, str) for c in candidates):
            raise DataError(f"JudgeItem.candidates must be a non-empty sequence of token texts; got "
                            f"{self.candidates!r}. Fix: pass the top tokens' texts, e.g. (' pan', ' pot').")
        object.__setattr__(self, "candidates", candidates)

    @property
    def candidate_list(self) -> str:
        """The candidates stripped and joined with ", " (whitespace-only tokens have no words and are left out)."""
        return ", ".join(c.strip() for c in self.candidates if c.strip())

    @property
    def quoted_candidates(self) -> str:
        """The candidates as quoted strings, so a rater sees punctuation and newline tokens for what they are."""
        return ", ".join(json.dumps(c.strip() or c, ensure_ascii=False) for c in self.candidates)


def rating_message(item: JudgeItem) -> str:
    """The rating question for one item (the user message of the lm and openai judges)."""
    return RATING_PROMPT.format(context=item.context, candidates=item.quoted_candidates)


def check_items(items: Sequence[JudgeItem]) -> list[JudgeItem]:
    items = list(items)
    for i, item in enumerate(items):
        if not isinstance(item, JudgeItem):
            raise DataError(f"judge item {i} is a {type(item).__name__}, not a JudgeItem. "
                            "Fix: wrap it as JudgeItem(context, continuation, candidates).")
    return items


class Judge(ABC):
    """Rates next-token lists: ``score(items)`` gives one float64 per item, higher is better."""

    name: str  # the judge spec it was made from, e.g. "lm:gemma-3-270m"
    scale: str  # what the numbers mean
    prompt: str | None = None  # the question template ({context}, {candidates}), None for a judge without one

    @abstractmethod
    def score(self, items: Sequence[JudgeItem]) -> np.ndarray:
        """(n,) float64 scores, one per item."""

    @abstractmethod
    def _provenance(self) -> dict:
        """The model and its provenance (hashes), JSON-able."""

    def describe(self) -> dict:
        """What this judge is (JSON-able): name, model and provenance, prompt and scale."""
        return {"name": self.name, "scale": self.scale, "prompt": self.prompt, **self._provenance()}
