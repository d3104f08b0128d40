"""Each reading the toolkit takes of a Hugging Face causal LM, checked against the model's own outputs.

The references never go through the toolkit's hooks: ``output_hidden_states`` and the logits of one sequence
alone (batch 1, no padding, no KV cache), and eager ``output_attentions``. The readings go through the toolkit's
public paths as a run does: ``extract`` (a right-padded batch), ``generate`` (a left-padded batch with the KV
cache), ``capture_attention`` (a left-padded batch), ``record_attention`` over KV-cache steps, and ``edit_site``.

How transformers lays out ``hidden_states`` is read from the model, not assumed: the last entry is the last
block's output either raw or after the final norm (5.x), and the check accepts whichever the model returns.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
from torch import nn

from ..errors import LensError
from ..models.pretrained.architectures import blocks, final_map
from ..steering.inject import add_to_last, edit_site
from ..trajectories import count_hooks, extract, generate
from ..trajectories.attention import capture_attention, record_attention
from ..trajectories.attention_weights import EAGER, attention_implementation, model_configs
from ..trajectories.tokens import left_pad
from .verdicts import DEGRADED, ERROR, Cell, Comparison, tolerance

NEW_TOKENS = 3  # tokens generated after each prompt
LOG_PROBABILITY_LIMIT = ("log-probability path: the layers compute attention inline, so ln p = s − ln Z is read "
                         "from eager output_attentions; S, C, C(T) and the sink mass are exact, U and F not identified")


def _reference(model: nn.Module, ids: Sequence[int]) -> SimpleNamespace:
    """One sequence alone (batch 1, no padding, no cache): logits (T, V) and hidden_states, each (T, d)."""
    x = torch.tensor([list(ids)], device=next(model.parameters()).device)
    with torch.no_grad():
        out = model(input_ids=x, use_cache=False, output_hidden_states=True)
    return SimpleNamespace(logits=out.logits[0].float(), hidden=[h[0] for h in out.hidden_states])


def _compare_states(cmp: Comparison, model: nn.Module, trajectory, ref: SimpleNamespace, label: str) -> None:
    """Every site of ``trajectory`` against ``output_hidden_states`` of the same tokens."""
    T, n = trajectory.n_positions, len(ref.hidden) - 1  # n: the model's blocks
    for site in trajectory.sites:
        got = trajectory.at(site)
        if site == "final":
            cmp.add(f"{label} final", got, ref.hidden[-1][:T].to(got))
        elif site == "embed":
            cmp.add(f"{label} embed", got, ref.hidden[0][:T].to(got))
        else:
            l = int(site.removeprefix("block."))
            want = ref.hidden[l + 1][:T].to(got)
            if l == n - 1:  # the last entry: raw, or after the final norm (and projection), as the model returns it
                with torch.no_grad():
                    normed = final_map(model)(got.to(next(model.parameters()))).to(want)
                raw_error = (got - want).abs().max() if got.shape == want.shape else math.inf
                if normed.shape == want.shape and (normed - want).abs().max() < raw_error:
                    got = normed
            cmp.add(f"{label} {site}", got, want)


def _compare_token_stats(cmp: Comparison, trajectory, ref: SimpleNamespace, label: str) -> None:
    """logprobs, max_logprobs and entropy against log_softmax of the reference logits, held to the logits' own
    rounding (an error in a logit moves log p by as much)."""
    T = trajectory.n_positions
    logp = torch.log_softmax(ref.logits[:T], -1)  # (T, V)
    targets = trajectory.token_ids[1:T + 1].to(logp.device)
    tol = tolerance(ref.logits[:T])
    cmp.add(f"{label} logprobs", trajectory.logprobs, logp.gather(-1, targets[:, None])[:, 0].cpu(), tol)
    cmp.add(f"{label} max_logprobs", trajectory.max_logprobs, logp.max(-1).values.cpu(), tol)
    if trajectory.entropy is not None:
        cmp.add(f"{label} entropy", trajectory.entropy, -(logp.exp() * logp).sum(-1).cpu(), tol)


def _tokenizer(tokenizer):
    """The tokenizer, or for a model without one the two ids generation reads."""
    return tokenizer if tokenizer is not None else SimpleNamespace(pad_token_id=0, eos_token_id=None)


def trajectories(model, tokenizer, sequences) -> tuple[Cell, Cell, Cell]:
    """(teacher-forced states, generated states, token stats).

    Teacher-forced: ``extract`` on a right-padded batch; generated: ``generate`` on a left-padded batch with the KV
    cache. Each against its tokens alone (batch 1, no padding, no cache): every site against ``output_hidden_states``,
    and logprobs, max_logprobs and entropy against log_softmax of the logits.
    """
    forced, generated, stats = Comparison(), Comparison(), Comparison()
    tok, n = _tokenizer(tokenizer), len(sequences)
    runs = [(forced, "", [extract(model, tok, sequences, sites=sites, batch_size=n) for sites in ("all", "final")]),
            (generated, " generated", [generate(model, tok, sequences, sites=sites, new_tokens=NEW_TOKENS,
                                                context_tokens=None, batch_size=n) for sites in ("all", "final")])]
    for cmp, label, (depth, final) in runs:
        for b in range(n):
            ref = _reference(model, depth[b].token_ids.tolist())
            _compare_states(cmp, model, depth[b], ref, f"sequence {b}{label}")
            if not torch.equal(final[b].token_ids, depth[b].token_ids):  # greedy decoding is deterministic
                ref = _reference(model, final[b].token_ids.tolist())
            _compare_states(cmp, model, final[b], ref, f"sequence {b}{label}")
            _compare_token_stats(stats, final[b], ref, f"sequence {b}{label}")
    return forced.cell("states, teacher-forced"), generated.cell("states, generated"), stats.cell("token stats")


def _eager_attention(model: nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """(L, H, T, T) the model's own eager attention probabilities of one sequence alone."""
    x = torch.tensor([list(ids)], device=next(model.parameters()).device)
    with attention_implementation(model_configs(model), EAGER), torch.no_grad():
        attentions = model(input_ids=x, use_cache=False, output_attentions=True).attentions
    return torch.stack([a[0] for a in attentions]).float().cpu()


def _compare_log_probabilities(cmp: Comparison, what: str, logp: torch.Tensor, own: torch.Tensor) -> None:
    """ln p (any gauge's softmax) against eager probabilities: equal logs where both are positive, and the same
    keys at zero (a key the model hides, or whose weight underflowed)."""
    zero_got, zero_own = logp == -math.inf, own == 0
    if not torch.equal(zero_got, zero_own):
        bad = zero_got != zero_own
        cmp.failures.append(f"{what}: {int(bad.sum())} key(s) with weight in one and none in the other "
                            f"(e.g. query, key {tuple(bad.nonzero()[0].tolist()[-2:])}): the mask differs")
        return
    cmp.add(what, torch.where(zero_own, 0.0, logp), torch.where(zero_own, 0.0, own.log()))


def _unchanged(model: nn.Module, implementation: str) -> str:
    """'' when the model is as it was (its attention implementation, no hooks of ours); else what changed."""
    now = model.config._attn_implementation
    if now != implementation:
        return f"the attention implementation was left at {now!r}, not {implementation!r}"
    return f"{count_hooks(model)} hook(s) left on the model" if count_hooks(model) else ""


def attention(model, sequences) -> Cell:
    """``capture_attention`` on a left-padded batch against eager ``output_attentions`` of each sequence alone."""
    cmp, before = Comparison(), model.config._attn_implementation
    ids, mask, _ = left_pad(list(sequences), 0, next(model.parameters()).device)
    captures = capture_attention(model, ids, mask)
    for b, (cap, seq) in enumerate(zip(captures, sequences)):
        masked = cap.scores.masked_fill(~cap.mask, -math.inf)
        _compare_log_probabilities(cmp, f"sequence {b}", torch.log_softmax(masked, -1), _eager_attention(model, seq))
        future = cap.visible & ~torch.ones_like(cap.visible[0]).tril().bool()
        if bool(future.any()):
            cmp.failures.append(f"sequence {b}: a query sees a later key: the capture is not causal")
    if changed := _unchanged(model, before):
        cmp.failures.append(changed)
    gauge = captures[0].gauge
    return cmp.cell("attention", limit=LOG_PROBABILITY_LIMIT if gauge == "log-probabilities" else "")


def attention_cached_steps(model, sequences) -> Cell:
    """``record_attention`` over a left-padded prompt forward and KV-cache steps, against eager attention of the
    whole sequence alone: each step's query row over every real key."""
    reading, device = "attention, KV-cache steps", next(model.parameters()).device
    first = torch.tensor(sequences[0], device=device)
    if capture_attention(model, first, layers=[0])[0].gauge != "scores":  # the model's path, found once and kept
        return Cell(reading, DEGRADED, note="no per-step capture on the log-probability path; capture_attention "
                                            "reads whole sequences")
    cmp, before = Comparison(), model.config._attn_implementation
    prompts = [list(s[:-NEW_TOKENS]) for s in sequences]
    ids, mask, positions = left_pad(prompts, 0, device)
    pad = [ids.shape[1] - len(p) for p in prompts]
    steps = []  # per step: {block: AttentionCall}, keys over the padded columns (the last k of them in a window cache)
    with record_attention(model, device="cpu") as recorder, torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        recorder.pop()
        for step in range(NEW_TOKENS):
            nxt = torch.tensor([[s[len(p) + step]] for s, p in zip(sequences, prompts)], device=device)
            mask = torch.cat([mask, mask.new_ones(len(sequences), 1)], dim=1)
            out = model(input_ids=nxt, attention_mask=mask, position_ids=positions[:, -1:] + step + 1,
                        past_key_values=out.past_key_values, use_cache=True)
            steps.append(recorder.pop())
    for b, seq in enumerate(sequences):
        own = _eager_attention(model, seq)  # (L, H, T, T)
        for step, calls in enumerate(steps):
            q, width = len(prompts[b]) + step, ids.shape[1] + step + 1  # the query's position; columns so far
            for l, call in calls.items():
                k = call.scores.shape[-1]  # a sliding-window cache keeps only its last k columns
                first = max(pad[b], width - k)  # the first real column the layer still holds
                s, v = call.scores[b, :, 0, first - width + k:], call.visible[b, 0, first - width + k:]
                logp = torch.log_softmax(s.masked_fill(~v, -math.inf), -1)  # (H, keys held)
                start = first - pad[b]  # that column's position in the sequence
                if bool(own[l, :, q, :start].any()):
                    cmp.failures.append(f"sequence {b} step {step} block {l}: the model attends to keys the "
                                        "cache no longer holds")
                _compare_log_probabilities(cmp, f"sequence {b} step {step} block {l}", logp, own[l, :, q, start:q + 1])
    if changed := _unchanged(model, before):
        cmp.failures.append(changed)
    return cmp.cell(reading)


def steering_zero(model, sequences) -> Cell:
    """``edit_site`` adding δh = 0 at the last position of embed, the first and last blocks and final: the logits
    must equal the natural run's bit for bit."""
    cmp = Comparison()
    device = next(model.parameters()).device
    ids, mask, positions = left_pad(list(sequences), 0, device)
    forward = lambda: model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits  # noqa: E731
    zero = lambda state: add_to_last(state.new_zeros(state.shape[0], state.shape[-1]))(state)  # noqa: E731
    with torch.no_grad():
        natural = forward()
        for site in ("embed", "block.0", f"block.{len(blocks(model)) - 1}", "final"):
            with edit_site(model, site, zero):
                cmp.add(site, forward(), natural, tol=0.0)
    if count_hooks(model):
        cmp.failures.append(f"{count_hooks(model)} hook(s) left on the model")
    return cmp.cell("steering δh = 0")


def refusal(reading: str, exc: Exception) -> Cell:
    """An ERROR cell for a reading that raised: the toolkit's refusal (a LensError's message), or a crash's type."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return Cell(reading, ERROR, note=text if isinstance(exc, LensError) else f"{type(exc).__name__}: {text}")


def guarded(reading: str, check: Callable[[], Cell]) -> Cell:
    """``check()``, or the :func:`refusal` of what it raised."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a reading that fails is reported with the rest, never hidden
        return refusal(reading, exc)
