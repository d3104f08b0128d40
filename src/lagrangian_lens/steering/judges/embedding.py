"""The embedding judge: semantic coherence of a candidate list from all-MiniLM-L6-v2 sentence embeddings."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...checks import check_range
from ...models.pretrained.sentence import SentenceEncoder, load_sentence_encoder
from .base import Judge, JudgeItem, check_items


class EmbeddingJudge(Judge):
    """Semantic coherence of the candidate list: cosine of its MiniLM embedding with the context's, and with the
    true continuation's; the score is the mean of the two.

    A part is NaN when one of its two texts is blank (nothing to embed, e.g. a list of whitespace tokens); the
    score then averages the parts that exist.
    """

    scale = ("cosine in [-1, 1]: mean of cos(list, context) and cos(list, continuation), all-MiniLM-L6-v2 "
             "embeddings of the stripped texts, the list joined with ', '")
    PARTS = ("context", "continuation")

    def __init__(self, encoder: SentenceEncoder | None = None, *, device: str = "cpu", batch_size: int = 64,
                 name: str = "embedding"):
        check_range("batch_size", batch_size, low=1)
        self.encoder = encoder if encoder is not None else load_sentence_encoder(device)
        self.batch_size = batch_size
        self.name = name

    def score_parts(self, items: Sequence[JudgeItem]) -> dict[str, np.ndarray]:
        """{"context": (n,), "continuation": (n,)} float64 cosines of the list with each text."""
        items = check_items(items)
        texts = {"list": [it.candidate_list for it in items],
                 **{part: [getattr(it, part).strip() for it in items] for part in self.PARTS}}
        unique = sorted({t for column in texts.values() for t in column if t})  # each text embedded once
        index = {t: i for i, t in enumerate(unique)}
        emb = self.encoder.encode(unique, batch_size=self.batch_size).double().numpy()  # (u, d), unit rows
        parts = {}
        for part in self.PARTS:
            cos = np.full(len(items), np.nan)
            rows = [i for i in range(len(items)) if texts["list"][i] and texts[part][i]]
            if rows:
                a = emb[[index[texts["list"][i]] for i in rows]]  # (r, d)
                b = emb[[index[texts[part][i]] for i in rows]]  # (r, d)
                cos[rows] = (a * b).sum(1)
            parts[part] = cos
        return parts

    def score(self, items: Sequence[JudgeItem]) -> np.ndarray:
        parts = np.stack(list(self.score_parts(items).values()))  # (2, n)
        present = np.isfinite(parts)
        total = np.where(present, parts, 0.0).sum(0)
        count = present.sum(0)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def _provenance(self) -> dict:
        return {"model": self.encoder.description.to_dict(), "parts": list(self.PARTS)}
