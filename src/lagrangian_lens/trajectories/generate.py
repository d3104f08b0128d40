"""Generated trajectories: batched greedy or sampled decoding with the KV cache, recording sites as it goes.

Prompts are left-padded so every sequence emits its next token from the last column; position ids follow
the attention mask, so padding never shifts a real position. Each step feeds one token per sequence and
reads its states from the hooks: no position is ever recomputed. Probabilities come from the raw logits,
before temperature or top-k, so the energy sees the model's own distribution.

A ``step_hook`` lets a caller act on each step's forward without copying this loop: it sees the step's inputs
(:class:`StepInputs`) before the forward and may return a context manager the forward then runs inside (steering
uses one that edits a site's state); the states, probabilities and chosen token then come from that forward.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from .sites import expand_sites, record_sites
from .tokens import left_pad, token_stats, tokenize
from .trajectory import Trajectory

DECODINGS = ("greedy", "sample")


@dataclass(frozen=True)
class Decoding:
    """How the next token is chosen; the recorded probabilities never depend on it."""

    strategy: str = "greedy"  # "greedy" (argmax) or "sample"
    temperature: float = 1.0  # sampling temperature
    top_k: int = 0  # sample among the k most probable tokens (0: all)
    seed: int = 0  # seeds the sampler

    def __post_init__(self):
        if self.strategy not in DECODINGS:
            raise ConfigError("decoding", f"strategy {self.strategy!r} not in {DECODINGS}")
        if self.temperature <= 0:
            raise ConfigError("temperature", f"must be > 0, got {self.temperature}; use strategy='greedy' for argmax")

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, V) raw logits -> (B,) token ids."""
        if self.strategy == "greedy":
            return logits.argmax(-1)
        z = logits.float() / self.temperature
        if self.top_k > 0:
            kth = z.topk(self.top_k, dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        return torch.multinomial(torch.softmax(z, -1), 1, generator=generator).squeeze(-1)


@dataclass(frozen=True)
class StepInputs:
    """One decoding step's forward inputs, as a ``step_hook`` sees them before the forward runs."""

    step: int  # 0: the prompts' forward; s >= 1: the forward of the s-th generated token
    rows: range  # the prompts of this batch, as indices into the prompt list
    input_ids: torch.Tensor  # (B, t): the left-padded prompts at step 0 (t = P), else the last token (t = 1)
    attention_mask: torch.Tensor  # (B, P + step): 1 on real tokens, 0 on padding
    position_ids: torch.Tensor  # (B, t)
    past_key_values: object  # the KV cache of the earlier positions (None at step 0); a hook must leave it as is
    generated: torch.Tensor  # (B, step): the tokens chosen so far


StepHook = Callable[[StepInputs], contextlib.AbstractContextManager | None]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    new_tokens: int = 100,
    context_tokens: int | None = 50,
    sites: str | Sequence[str] = "final",
    decoding: Decoding = Decoding(),
    batch_size: int = 16,
    stop_at_eos: bool = False,
    keep_entropy: bool = True,
    progress: bool = False,
    metadata: dict | None = None,
    step_hook: StepHook | None = None,
) -> list[Trajectory]:
    """Generate ``new_tokens`` after each prompt (a string, or token ids used as given; cut to its first
    ``context_tokens`` tokens).

    Each result has ``n_context`` = prompt length and ``prompt + new_tokens - 1`` positions: the prompt's
    positions (teacher-forced) then those of the generated tokens, each emitting the next one. With
    ``stop_at_eos`` a trajectory ends at its first end-of-sequence token. ``step_hook`` (see
    :class:`StepInputs`) is called before every step's forward, which runs inside the context it returns.
    """
    if new_tokens < 1:
        raise ConfigError("new_tokens", f"must be >= 1, got {new_tokens}")
    sites = expand_sites(model, sites)
    if prompts and not isinstance(prompts[0], str):
        ids = [list(map(int, x))[:context_tokens] for x in prompts]
        if not all(ids):
            raise DataError(f"prompt(s) at index {[i for i, x in enumerate(ids) if not x][:10]} hold no token ids")
    else:
        ids = tokenize(tokenizer, list(prompts), max_tokens=context_tokens, reserve=new_tokens, model=model)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(decoding.seed) if decoding.strategy == "sample" else None
    out: list[Trajectory] = []
    bar = tqdm(total=len(ids) * new_tokens, desc="generating", unit="tok", disable=not progress, leave=False)
    for start in range(0, len(ids), batch_size):
        rows = range(start, min(start + batch_size, len(ids)))
        out += _generate_batch(model, tokenizer, ids[start:start + batch_size], new_tokens, sites, decoding,
                               generator, device, stop_at_eos, keep_entropy, metadata or {}, bar, rows, step_hook)
    bar.close()
    return out


def _generate_batch(model, tokenizer, batch, new_tokens, sites, decoding, generator, device, stop_at_eos,
                    keep_entropy, metadata, bar, rows, step_hook) -> list[Trajectory]:
    B, P = len(batch), max(map(len, batch))
    input_ids, mask, positions = left_pad(batch, tokenizer.pad_token_id, device)  # every prompt ends in column P-1

    states = {s: [] for s in sites}  # per site: (B, t, d) chunks along positions
    logp, maxlogp, ent, emitted = [], [], [], []
    with record_sites(model, sites) as rec:
        step_ids, step_pos, cache = input_ids, positions, None
        for step in range(new_tokens):
            context = None
            if step_hook is not None:
                generated = torch.stack(emitted, 1) if emitted else step_ids.new_zeros(B, 0)
                context = step_hook(StepInputs(step, rows, step_ids, mask, step_pos, cache, generated))
            with context or contextlib.nullcontext():
                out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                            past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            for s, h in rec.pop().items():
                states[s].append(h)
            logits = out.logits  # (B, t, V) raw
            nxt = decoding.choose(logits[:, -1], generator)  # (B,)
            # Realised tokens: the prompt's own next tokens, then the chosen one.
            targets = torch.cat([step_ids[:, 1:], nxt[:, None]], dim=1)
            for acc, val in zip((logp, maxlogp, ent), token_stats(logits, targets)):
                acc.append(val)
            emitted.append(nxt)
            bar.update(B)
            step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
    return _split(batch, P, states, logp, maxlogp, ent, torch.stack(emitted, 1), sites, tokenizer, stop_at_eos,
                  keep_entropy, metadata)


def _split(batch, P, states, logp, maxlogp, ent, emitted, sites, tokenizer, stop_at_eos, keep_entropy, metadata):
    states = {s: torch.cat(v, dim=1).cpu() for s, v in states.items()}  # (B, P + M - 1, d)
    logp, maxlogp, ent = (torch.cat(v, dim=1).cpu() for v in (logp, maxlogp, ent))
    emitted = emitted.cpu()
    eos = tokenizer.eos_token_id
    result = []
    for b, prompt in enumerate(batch):
        first = P - len(prompt)  # first real column
        gen = emitted[b]
        if stop_at_eos and eos is not None and (gen == eos).any():
            gen = gen[: int((gen == eos).nonzero()[0]) + 1]
        T = len(prompt) + len(gen) - 1
        cols = slice(first, first + T)
        result.append(Trajectory(
            token_ids=torch.cat([torch.tensor(prompt), gen]),
            states=torch.stack([states[s][b, cols] for s in sites]),
            logprobs=logp[b, cols], max_logprobs=maxlogp[b, cols], entropy=ent[b, cols] if keep_entropy else None,
            sites=sites, n_context=len(prompt), mode="generated", metadata=dict(metadata),
        ))
    return result
