"""Offline (and one online) judges of next-token lists: how good is a model's top-10 list, given the context?

The energy paper rates natural against steered top-10 lists with GPT-4.1 on a 1-10 scale; that rater is not
reproducible offline, so the judges are pluggable, each recording what it is (``describe()``):

- ``embedding``: semantic coherence from all-MiniLM-L6-v2 sentence embeddings (a cosine, not the 1-10 scale).
- ``lm`` / ``lm:<model spec>``: a causal LM asked the paper's question, read as the expected rating under its
  next-token distribution over the digits (no sampling, so no seed to record).
- ``openai:<model>``: any OpenAI-compatible chat-completions endpoint, as the paper did (needs the network).
"""
from __future__ import annotations

from ...errors import ConfigError, ModelSpecError
from ...models import DEFAULT_MODEL, LoadedModel
from ...models.pretrained.sentence import WHEEL, model_zip
from ...models.spec import ModelSpec, file_sha256
from .base import PLAIN_SUFFIX, RATING_PROMPT, Judge, JudgeError, JudgeItem, check_items, rating_message
from .embedding import EmbeddingJudge
from .lm import DigitTokens, LMJudge, digit_tokens
from .remote import DEFAULT_OPENAI_URL, OpenAIJudge, openai_endpoint, parse_rating

DEFAULT_JUDGES = ("embedding", "lm")
KNOWN_JUDGES = ("embedding", "lm", "lm:<model spec>", "openai:<model>")

__all__ = ["DEFAULT_JUDGES", "DEFAULT_OPENAI_URL", "KNOWN_JUDGES", "PLAIN_SUFFIX", "RATING_PROMPT", "DigitTokens",
           "EmbeddingJudge", "Judge", "JudgeError", "JudgeItem", "LMJudge", "OpenAIJudge", "check_items",
           "check_judge_spec", "digit_tokens", "judge_identity", "make_judge", "openai_endpoint", "parse_rating",
           "rating_message"]


def check_judge_spec(spec: str) -> str:
    """``spec`` when it names a judge (syntax only: nothing loads, no key is read), else a ConfigError."""
    known = f"known judges: {', '.join(KNOWN_JUDGES)}"
    if not isinstance(spec, str):
        raise ConfigError("judges", f"a judge is named by a string; got {type(spec).__name__}; {known}")
    kind, sep, arg = spec.partition(":")
    if spec in ("embedding", "lm"):
        return spec
    if sep and kind in ("lm", "openai") and arg and arg == arg.strip():
        if kind == "lm":
            try:
                ModelSpec.parse(arg)
            except ModelSpecError as exc:
                raise ConfigError("judges", f"{spec!r}: {exc}") from exc
        return spec
    raise ConfigError("judges", f"unknown judge {spec!r}; {known}")


def judge_identity(spec: str) -> dict:
    """What the judge ``spec`` is, by content, without loading it (part of a run's resume key): its question and
    scale, and its model's identity (the sentence model's zip digest, the LM's ``ModelSpec.identity()``, or the
    endpoint and model name; never the API key). Another prompt, weight file or endpoint gives another identity.
    """
    spec = check_judge_spec(spec)
    kind, _, arg = spec.partition(":")
    if kind == "embedding":
        return {"judge": spec, "scale": EmbeddingJudge.scale, "model": {"wheel": WHEEL,
                                                                        "zip_sha256": file_sha256(model_zip())}}
    if kind == "lm":
        return {"judge": spec, "scale": LMJudge.scale, "prompt": RATING_PROMPT, "plain_suffix": PLAIN_SUFFIX,
                "model": ModelSpec.parse(arg or DEFAULT_MODEL).identity()}
    return {"judge": spec, "scale": OpenAIJudge.scale, "prompt": RATING_PROMPT,
            "model": {"endpoint": openai_endpoint(), "model": arg}}


def make_judge(spec: str, *, device: str = "cpu", lm: LoadedModel | None = None) -> Judge:
    """The judge named by ``spec`` (see ``check_judge_spec``), named after it.

    ``lm``: a model already loaded (e.g. the steered one) for the ``lm`` judge to use instead of loading the
    default model; with ``lm:<spec>`` it is reused only when it was loaded from that spec.
    """
    spec = check_judge_spec(spec)
    kind, _, arg = spec.partition(":")
    if kind == "embedding":
        return EmbeddingJudge(device=device)
    if kind == "openai":
        return OpenAIJudge(arg)
    if lm is not None and not isinstance(lm, LoadedModel):
        raise ConfigError("judges", f"lm= takes a LoadedModel (from load_model); got {type(lm).__name__}")
    if arg and (lm is None or lm.description.spec != ModelSpec.parse(arg).label):
        return LMJudge(arg, device=device, name=spec)
    return LMJudge(lm, device=device, name=spec)
