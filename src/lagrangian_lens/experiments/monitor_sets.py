"""The texts the monitor experiment scores: WikiText-2 paragraphs split into the fit, threshold and test sets, and
the six kinds of anomaly built from held-out paragraphs and the other corpora (``data.anomalies``), as token ids.

The sets are a pure function of the tokenizer, the corpora and the recipe (``RECIPE``'s settings and the seed), and
are saved once per recipe under ``features/<run>/sets-<key>.json`` with the text of each set's first sequence, so a
resumed run scores exactly the same tokens without loading the model to rebuild them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.anomalies import (
    first_tokens_text,
    other_domain,
    random_characters,
    repeated_phrase,
    shuffled_tokens,
    splice,
    token_at,
)
from ..data.corpora import read_corpus
from ..data.prompts import wikitext_openings
from ..errors import DataError
from ..provenance import read_json, write_json
from .runner import digest

if TYPE_CHECKING:
    from .monitor import MonitorConfig

CALIBRATION, HELDOUT, TEST = "calibration", "heldout", "test"
SPLICED = "spliced"
ANOMALIES = ("shuffled", "random_characters", "repeated_phrase", "tinystories", "tiny_shakespeare", SPLICED)
CORPUS_OF = {"tinystories": "tinystories", "tiny_shakespeare": "tiny-shakespeare"}
WIKITEXT = "wikitext-2-test"
SPLICE_MARK = "⟦splice⟧"  # where the pasted text starts, in the spliced example the report shows
CHARS_PER_TOKEN = 6  # random characters drawn per token asked: random text takes about 1-2 characters per token
# Raised when a set's recipe changes meaning: older set files are then rebuilt, never reused. 2: every
# in-distribution set carries traces (the window monitors are fitted on the calibration set's).
SETS_VERSION = 2
RECIPE = ("tokens", "n_calibration", "n_heldout", "n_test", "n_anomalies", "seed", "splice_cut", "splice_from",
          "phrase_words", "random_chars_per_token")  # the conventions the sets' token ids depend on


@dataclass
class TextSet:
    """One set of sequences the monitor scores: the token ids the model reads, and where each splice is."""

    name: str
    ids: list[list[int]]  # (N,) token ids per sequence, each at most the run's ``tokens`` long
    splice_tokens: list[int] | None = None  # (N,) spliced sets: index of the first token of the pasted text
    prefixes: bool = False  # also compute the token-by-token traces (prefix_features: running and windowed)

    def __post_init__(self):
        if not self.ids:
            raise DataError(f"the {self.name} set is empty; ask for at least 2 sequences")
        short = [i for i, x in enumerate(self.ids) if len(x) < 3]
        if short:
            raise DataError(f"the {self.name} set's sequences {short[:10]} hold fewer than 3 tokens: no energy step")
        if self.splice_tokens is not None and len(self.splice_tokens) != len(self.ids):
            raise DataError(f"the {self.name} set has {len(self.ids)} sequences but {len(self.splice_tokens)} splices")

    def record(self) -> dict:
        return {"ids": self.ids, "splice_tokens": self.splice_tokens, "prefixes": self.prefixes}


def build_sets(cfg: MonitorConfig, tokenizer) -> tuple[dict[str, TextSet], dict[str, str]]:
    """Every set of the run ({name: TextSet}) and the text of each set's first sequence (for the report)."""
    n = cfg.tokens
    n_tokens = lambda text: len(tokenizer(text, add_special_tokens=True)["input_ids"])  # noqa: E731
    encode = lambda text: tokenizer(text, add_special_tokens=True)["input_ids"][:n]  # noqa: E731
    pool = [p for p in wikitext_openings(read_corpus(WIKITEXT)) if n_tokens(p) >= n]
    sizes = (cfg.n_calibration, cfg.n_heldout, cfg.n_test, cfg.n_anomalies)
    if len(pool) < sum(sizes):
        raise DataError(f"{WIKITEXT} has {len(pool)} paragraphs of at least {n} tokens, {sum(sizes)} needed "
                        f"(calibration, held-out, test and anomaly sources {sizes}); ask for fewer or shorter",
                        options=("n_calibration", "n_heldout", "n_test", "n_anomalies", "tokens"))
    order = np.random.default_rng(cfg.seed).permutation(len(pool))  # articles and sections mixed in every part
    ends = np.cumsum(sizes)
    parts = [[pool[i] for i in order[a:b]] for a, b in zip((0, *ends[:-1]), ends)]
    # Every in-distribution set gets traces: the window monitors are fitted on the calibration set's windows.
    sets = {name: TextSet(name, [encode(p) for p in part], prefixes=True)
            for name, part in zip((CALIBRATION, HELDOUT, TEST), parts)}
    sources, seeds = parts[3], [(cfg.seed, i) for i in range(cfg.n_anomalies)]
    sets["shuffled"] = TextSet("shuffled", [shuffled_tokens(p, tokenizer, s, max_tokens=n)
                                            for p, s in zip(sources, seeds)])
    sets["random_characters"] = TextSet("random_characters",
                                        [encode(random_characters(CHARS_PER_TOKEN * n, s)) for s in seeds])
    sets["repeated_phrase"] = TextSet("repeated_phrase", [encode(repeated_phrase(p, s)) for p, s in zip(sources, seeds)])
    for name, corpus in CORPUS_OF.items():
        passages = other_domain(corpus, cfg.n_anomalies, cfg.seed, accept=lambda p: n_tokens(p) >= n)
        sets[name] = TextSet(name, [encode(p) for p in passages])
    spliced, where = [], []
    for i, (a, s) in enumerate(zip(sources, seeds)):
        # a is cut inside the window of its first n tokens; b, another source, fills the rest of the window.
        text, offset = splice(first_tokens_text(tokenizer, a, n), sources[(i + 1) % len(sources)], s)
        spliced.append(encode(text))
        where.append(token_at(tokenizer, text, offset))
    sets[SPLICED] = TextSet(SPLICED, spliced, splice_tokens=where, prefixes=True)
    examples = {name: tokenizer.decode(s.ids[0]) for name, s in sets.items()}
    head, k = spliced[0], where[0]
    examples[SPLICED] = f"{tokenizer.decode(head[:k])} {SPLICE_MARK} {tokenizer.decode(head[k:])}"
    return sets, examples


def cached_sets(folder: Path, recipe: dict, cfg: MonitorConfig, model) -> tuple[dict[str, TextSet], dict, dict]:
    """(sets, examples, model description when the model was loaded for them), built once per recipe."""
    path = folder / f"sets-{digest(recipe)}.json"
    if path.is_file():
        saved = read_json(path)
        return ({k: TextSet(k, v["ids"], v["splice_tokens"], v["prefixes"]) for k, v in saved["sets"].items()},
                saved["examples"], saved["model_description"])
    lm = model()
    sets, examples = build_sets(cfg, lm.tokenizer)
    description = lm.description.to_dict()
    write_json(path, {"recipe": recipe, "sets": {k: s.record() for k, s in sets.items()}, "examples": examples,
                      "model_description": description})
    return sets, examples, description
