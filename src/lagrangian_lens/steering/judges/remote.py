"""The openai judge: any OpenAI-compatible chat-completions endpoint asked the rating question (needs a network)."""
from __future__ import annotations

import http.client
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np

from ...checks import check_range
from ...errors import ConfigError
from .base import RATING_PROMPT, Judge, JudgeError, JudgeItem, check_items, rating_message

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"


def openai_endpoint() -> str:
    """The chat-completions URL under ``$OPENAI_BASE_URL`` (default https://api.openai.com/v1)."""
    base = (os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL).strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError("judges", f"OPENAI_BASE_URL {base!r} is not an http(s) URL; e.g. {DEFAULT_OPENAI_URL}")
    return f"{base}/chat/completions"


def parse_rating(reply: str) -> int | None:
    """The first integer from 1 to 10 in ``reply`` ("Rating: 7" -> 7), or None when it holds none."""
    for match in re.finditer(r"\d+", reply):
        if 1 <= int(match.group()) <= 10:
            return int(match.group())
    return None


class OpenAIJudge(Judge):
    """Any OpenAI-compatible chat-completions endpoint asked the rating question, as the paper asked GPT-4.1.

    ``OPENAI_BASE_URL`` (default https://api.openai.com/v1) and ``OPENAI_API_KEY`` are read at construction.
    Temperature 0; a reply without an integer 1..10 scores NaN and is counted in ``n_unparsed``. HTTP 429 and
    5xx answers are retried ``retries`` times with doubling waits.
    """

    scale = "1-10, the first integer from 1 to 10 in the reply (NaN when there is none)"
    prompt = RATING_PROMPT

    def __init__(self, model: str, *, timeout: float = 60.0, max_tokens: int = 16, retries: int = 2,
                 backoff_s: float = 2.0):
        if not isinstance(model, str) or not model.strip() or model != model.strip():
            raise ConfigError("judges", f"openai judge model {model!r} is blank or padded; write e.g. openai:gpt-4.1")
        check_range("timeout", timeout, low=0, low_open=True)
        key = os.environ.get("OPENAI_API_KEY", "").strip()
        if not key:
            raise ConfigError("judges", f"openai:{model} needs OPENAI_API_KEY set in the environment (and "
                                        "OPENAI_BASE_URL for an endpoint other than OpenAI's); set it, or drop the judge")
        self.model, self.name, self.url = model, f"openai:{model}", openai_endpoint()
        self.timeout, self.max_tokens, self.retries, self.backoff_s = timeout, max_tokens, retries, backoff_s
        self._key = key  # never part of describe()
        self.n_requests = self.n_unparsed = 0

    def score(self, items: Sequence[JudgeItem]) -> np.ndarray:
        ratings = [parse_rating(self.complete(rating_message(item))) for item in check_items(items)]
        self.n_unparsed += sum(r is None for r in ratings)
        return np.array([math.nan if r is None else float(r) for r in ratings], dtype=np.float64)

    def complete(self, message: str) -> str:
        """The reply text to one user message."""
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": message}],
                           "temperature": 0, "max_tokens": self.max_tokens}).encode()
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"}
        for attempt in range(self.retries + 1):
            self.n_requests += 1
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                break
            except urllib.error.HTTPError as exc:
                if (exc.code == 429 or exc.code >= 500) and attempt < self.retries:
                    time.sleep(self.backoff_s * 2 ** attempt)
                    continue
                detail = exc.read()[:300].decode("utf-8", "replace")
                raise JudgeError(f"{self.name}: {self.url} answered HTTP {exc.code}: {detail}. Fix: check "
                                 "OPENAI_API_KEY, the model name and OPENAI_BASE_URL.") from exc
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, timed out, cut
                reason = getattr(exc, "reason", exc)
                raise JudgeError(f"{self.name}: could not reach {self.url}: {reason}. Fix: check OPENAI_BASE_URL "
                                 "and the network, or drop this judge.") from exc
            except ValueError as exc:  # not JSON, not UTF-8
                raise JudgeError(f"{self.name}: {self.url} did not answer JSON ({exc}); is OPENAI_BASE_URL an "
                                 "OpenAI-compatible endpoint?") from exc
        try:
            return payload["choices"][0]["message"]["content"] or ""  # content is null on a refusal
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"{self.name}: {self.url} answered without choices[0].message.content: "
                             f"{str(payload)[:200]}") from exc

    def _provenance(self) -> dict:
        return {"model": {"endpoint": self.url, "model": self.model, "temperature": 0, "max_tokens": self.max_tokens},
                "requests": self.n_requests, "unparsed_replies": self.n_unparsed}
