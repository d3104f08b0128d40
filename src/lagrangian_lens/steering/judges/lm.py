"""The lm judge: a causal LM asked the rating question, read as its expected rating over the digit tokens."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...checks import check_range
from ...errors import DataError, ModelSpecError
from ...models import DEFAULT_MODEL, LoadedModel, load_model
from ...models.spec import ModelSpec
from ...trajectories.sites import count_hooks
from ...trajectories.tokens import context_limit, left_pad
from .base import PLAIN_SUFFIX, RATING_PROMPT, Judge, JudgeError, JudgeItem, check_items, rating_message


@dataclass(frozen=True)
class DigitTokens:
    """Token ids of "0".."9" and, when the tokenizer has one, of "10" as a single token."""

    digits: tuple[int, ...]  # ids of "0".."9", in that order
    ten: int | None  # id of "10" when it is one token; None: "10" is "1" then "0", read with a second forward


def digit_tokens(tokenizer, what: str = "the judge model") -> DigitTokens:
    """The digit token ids of ``tokenizer``; a ModelSpecError when some digit is not a single token."""
    digits = []
    for d in "0123456789":
        ids = tokenizer.encode(d, add_special_tokens=False)
        if len(ids) != 1 or tokenizer.decode(ids).strip() != d:
            raise ModelSpecError(f"the tokenizer of {what} encodes the digit {d!r} as {len(ids)} tokens {ids}; the lm "
                                 "judge reads ratings from single-token digits. Fix: use another model for the judge.")
        digits.append(ids[0])
    ten = tokenizer.encode("10", add_special_tokens=False)
    if ten == [digits[1], digits[0]]:
        return DigitTokens(tuple(digits), None)
    if len(ten) == 1 and tokenizer.decode(ten).strip() == "10":
        return DigitTokens(tuple(digits), ten[0])
    raise ModelSpecError(f"the tokenizer of {what} encodes '10' as {ten}, neither one token nor '1' then '0'. "
                         "Fix: use another model for the judge.")


class LMJudge(Judge):
    """A causal LM asked the rating question; the score is the expected rating under its next-token distribution.

    P(k) for k = 2..9 are the probabilities of the digit tokens after the prompt. "10" is usually the token "1"
    followed by "0", so one more forward after "1" splits P("1") into P(10) = P("1")·P("0" | …"1") and
    P(1) = P("1")·(1 - P("0" | …"1")) (with a single "10" token, both are read at once). The ten probabilities
    are renormalised and the expectation returned; ``distribution`` gives them, and ``score_parts`` adds the
    mass they had before renormalising (low mass: the model mostly does not answer with a number).
    """

    scale = "1-10, expected score from the digit logits (renormalised over the ratings 1..10)"
    prompt = RATING_PROMPT

    def __init__(self, lm: LoadedModel | str | ModelSpec | None = None, *, device: str = "cpu", batch_size: int = 8,
                 name: str | None = None):
        check_range("batch_size", batch_size, low=1)
        self.lm = lm if isinstance(lm, LoadedModel) else load_model(lm if lm is not None else DEFAULT_MODEL,
                                                                    device=device)
        self.name = name or f"lm:{self.lm.description.spec}"
        self.batch_size = batch_size
        self.chat_template = getattr(self.lm.tokenizer, "chat_template", None) or None
        self.tokens = digit_tokens(self.lm.tokenizer, self.lm.description.spec)

    def render(self, item: JudgeItem) -> str:
        """The full prompt text the model reads for ``item``; its next token is the first of the answer."""
        message = rating_message(item)
        if self.chat_template is None:
            return message + PLAIN_SUFFIX
        return self.lm.tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                     add_generation_prompt=True)

    def encode(self, item: JudgeItem) -> list[int]:
        """Token ids of ``render(item)``: a chat template writes its own special tokens, plain text gets them added."""
        return self.lm.tokenizer(self.render(item), add_special_tokens=self.chat_template is None)["input_ids"]

    def distribution(self, items: Sequence[JudgeItem]) -> np.ndarray:
        """(n, 10) float64: the model's probabilities of the ratings 1..10, renormalised."""
        return self._evaluate(items)[0]

    def score_parts(self, items: Sequence[JudgeItem]) -> dict[str, np.ndarray]:
        """{"expected": (n,) expected rating (the score), "mass": (n,) probability of a rating before renormalising}."""
        probs, mass = self._evaluate(items)
        return {"expected": probs @ np.arange(1.0, 11.0), "mass": mass}

    def score(self, items: Sequence[JudgeItem]) -> np.ndarray:
        return self.distribution(items) @ np.arange(1.0, 11.0)

    @torch.no_grad()
    def _evaluate(self, items: Sequence[JudgeItem]) -> tuple[np.ndarray, np.ndarray]:
        items = check_items(items)
        if hooks := count_hooks(self.lm.model):
            raise JudgeError(f"the judge model {self.lm.description.spec!r} carries {hooks} toolkit hook(s): a "
                             "steering or recording context is still open on it. Fix: score outside that context.")
        ids = [self.encode(item) for item in items]
        limit = context_limit(self.lm.model)
        for i, x in enumerate(ids):
            if limit is not None and len(x) + 1 > limit:
                raise DataError(f"judge item {i}: its rating prompt has {len(x)} tokens, beyond the context of "
                                f"{limit} positions of {self.lm.description.spec!r}. Fix: shorten its context text.")
        probs, mass = np.empty((len(items), 10)), np.empty(len(items))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            rating_logp = self._rating_logprobs([ids[i] for i in rows])  # (B, 10)
            probs[rows] = torch.softmax(rating_logp, -1).numpy()  # in log space: never a sum of underflowed zeros
            mass[rows] = rating_logp.logsumexp(-1).exp().numpy()
        return probs, mass

    def _rating_logprobs(self, batch: list[list[int]]) -> torch.Tensor:
        """(B, 10) float64 log-probabilities of the ratings 1..10 (unnormalised) for a batch of prompts."""
        model, digits, ten = self.lm.model, self.tokens.digits, self.tokens.ten
        device = next(model.parameters()).device
        B = len(batch)
        input_ids, mask, positions = left_pad(batch, self.lm.tokenizer.pad_token_id, device)  # answers in the last column
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=ten is None)
        logp = torch.log_softmax(out.logits[:, -1].float(), -1).double()  # (B, V)
        rating_logp = torch.empty(B, 10, dtype=torch.float64, device=device)  # column k-1: rating k
        rating_logp[:, 1:9] = logp[:, list(digits[2:])]
        if ten is not None:
            rating_logp[:, 0], rating_logp[:, 9] = logp[:, digits[1]], logp[:, ten]
        else:
            one = torch.full((B, 1), digits[1], dtype=torch.long, device=device)
            nxt = model(input_ids=one, attention_mask=torch.cat([mask, mask.new_ones(B, 1)], 1),
                        position_ids=positions[:, -1:] + 1, past_key_values=out.past_key_values, use_cache=True)
            log_zero = torch.log_softmax(nxt.logits[:, -1].float(), -1).double()[:, digits[0]]  # (B,) log P("0"|"1")
            rating_logp[:, 9] = logp[:, digits[1]] + log_zero
            rating_logp[:, 0] = logp[:, digits[1]] + torch.log1p(-log_zero.exp())
        return rating_logp.cpu()

    def _provenance(self) -> dict:
        model = {k: v for k, v in self.lm.description.to_dict().items() if k != "config"}  # the config is bulky
        template = self.chat_template
        return {
            "model": model,
            "format": "chat template (one user message, generation prompt)" if template else "plain text",
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
            "plain_suffix": None if template else PLAIN_SUFFIX,
            "digit_token_ids": dict(zip("0123456789", self.tokens.digits)),
            "ten": "single token" if self.tokens.ten is not None else "'1' then '0' (one more forward)",
        }
