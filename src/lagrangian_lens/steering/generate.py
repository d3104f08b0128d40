"""Steered generation: decode while steering the state at a site toward target tokens, step by step.

At each steered step the state h0 at the site of the position about to emit the next token is moved by
``jacobian_steer`` (read out through the remaining blocks, with the running KV cache), and the step's forward
then runs with δh added there (``inject.edit_site``). At ``embed``/``block.<l>`` the edit goes through the later
blocks and, through the cache, into every later position; at ``final`` it changes only that step's next-token
distribution. The token is chosen from the steered logits, and the recorded log-probabilities are those of the
distribution actually used, so the energy of the steered trajectories describes what the steered model did.

The loop is ``trajectories.generate``'s own, reached through its ``step_hook``: steered and natural runs share
padding, positions, caching and decoding.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..checks import check_range
from ..errors import ConfigError, DataError, TrajectoryError
from ..models.pretrained.architectures import unembedding
from ..trajectories.generate import Decoding, StepInputs, generate
from ..trajectories.sites import FINAL
from ..trajectories.trajectory import Trajectory
from .inject import add_to_last, edit_site, position_readout, resolve_site
from .jacobian import SteeringResult, check_count, jacobian_steer

# (step, tokens generated so far (B, step)) -> ids (B,) (-1: leave the row unsteered) or a (B, V) bool mask
TargetFn = Callable[[int, torch.Tensor], torch.Tensor]
Targets = torch.Tensor | Sequence[Sequence[int]] | Sequence[int] | set | frozenset | TargetFn
NO_TARGET = -1  # a target id meaning "leave this row unsteered at this step"


def concept_targets(tokenizer, words: Iterable[str]) -> tuple[int, ...]:
    """A concept as a token set: the first token of each word, with and without a leading space, deduplicated
    (first-seen order). Pass it as ``targets`` to steer every step toward the concept."""
    ids: dict[int, None] = {}
    for word in words:
        word = word.strip()
        if not word:
            raise ConfigError("words", "an empty word has no token; give non-empty words")
        for text in (word, " " + word):
            # A SentencePiece tokenizer may give a bare space piece first: the word starts at the first token
            # with visible text.
            pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids[next((t for t in pieces if tokenizer.decode([t]).strip()), pieces[0])] = None
    if not ids:
        raise ConfigError("words", "no words given; give at least one word of the concept")
    return tuple(ids)


@dataclass(frozen=True)
class SteeringStep:
    """The steering of one step in one batch: row i of ``result`` belongs to prompt ``rows[i]``."""

    step: int  # the generation step: step s emits the s-th new token (0-based)
    rows: tuple[int, ...]  # (N,) indices into the prompt list
    result: SteeringResult  # N pairs

    def __post_init__(self):
        if len(self.rows) != len(self.result.h0):
            raise TrajectoryError(f"steering step {self.step}: {len(self.rows)} rows for {len(self.result.h0)} pairs")

    def records(self) -> list[dict]:
        """One JSON-able dict per steered row, with its step and prompt row."""
        return [{"step": self.step, "row": row, **rec} for row, rec in zip(self.rows, self.result.records())]


@dataclass
class SteeredGeneration:
    """The steered trajectories (site ``final``), the natural ones with the same settings, and every step's steering.

    ``steered[i]``/``natural[i]`` continue prompt i; position ``n_context - 1 + s`` emits the token of step s.
    """

    steered: list[Trajectory]
    natural: list[Trajectory] | None  # None unless record_natural
    steps: list[SteeringStep]  # in generation order: batch by batch, step by step
    site: str  # the canonical steering site
    eta: float

    def __post_init__(self):
        n = len(self.steered)
        if self.natural is not None and len(self.natural) != n:
            raise TrajectoryError(f"{len(self.natural)} natural trajectories for {n} steered ones")
        bad = [s.step for s in self.steps if not all(0 <= r < n for r in s.rows)]
        if bad:
            raise TrajectoryError(f"steering steps {bad[:5]} name rows outside the {n} prompts")

    def records(self) -> list[dict]:
        """One dict per steered (step, row) pair, ordered by row then step."""
        return sorted((r for s in self.steps for r in s.records()), key=lambda r: (r["row"], r["step"]))

    @property
    def success_rate(self) -> float:
        """The fraction of steered (step, row) pairs that reached η (NaN when none was steered)."""
        hits = [bool(x) for s in self.steps for x in s.result.success]
        return sum(hits) / len(hits) if hits else float("nan")


def steer_generate(model, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]], *, targets: Targets,
                   site: str = "final", new_tokens: int = 20, context_tokens: int | None = 50, eta: float = 0.5,
                   max_steps: int = 20, steer_steps: Iterable[int] | None = None, record_natural: bool = True,
                   batch_size: int = 16, decoding: Decoding = Decoding(), progress: bool = False) -> SteeredGeneration:
    """Generate ``new_tokens`` after each prompt, steering the state at ``site`` toward ``targets`` at every step
    in ``steer_steps`` (default: all) with ``jacobian_steer(eta, max_steps)``; the token is chosen from the
    steered logits by ``decoding``.

    ``targets``: a token per step, as a (B, M) id tensor or one id list per prompt (step s uses column s; id -1
    leaves the row unsteered at that step, a shorter row from its end on); a token set for every step (a set, a
    flat id list or a 1-D tensor, e.g. ``concept_targets(tokenizer, words)``); or a callable (step, generated ids
    (B, step)) -> ids (B,) (-1: unsteered) or a (B, V) bool mask, called per batch.
    """
    if not prompts:
        raise DataError("no prompts given: the prompt list is empty. Fix: give at least one prompt.")
    check_count("new_tokens", new_tokens)
    check_count("max_steps", max_steps)
    check_count("batch_size", batch_size)
    if context_tokens is not None:
        check_count("context_tokens", context_tokens)
    check_range("eta", eta, low=0.0, high=1.0, low_open=True, high_open=True)
    try:
        site = str(resolve_site(model, site))
    except TrajectoryError as exc:
        raise ConfigError("site", str(exc)) from None
    steps = _steer_steps(steer_steps, new_tokens)
    rule = _target_rule(targets, len(prompts), _vocab_size(model))

    steerer = _Steerer(model, site, rule, steps, eta, max_steps)
    metadata = {"steering": {"site": site, "eta": eta, "max_steps": max_steps, "steps": sorted(steps)}}
    common = dict(new_tokens=new_tokens, context_tokens=context_tokens, sites=FINAL, decoding=decoding,
                  batch_size=batch_size, progress=progress)
    steered = generate(model, tokenizer, prompts, **common, metadata=metadata, step_hook=steerer)
    natural = generate(model, tokenizer, prompts, **common) if record_natural else None
    return SteeredGeneration(steered=steered, natural=natural, steps=steerer.steps, site=site, eta=eta)


class _Steerer:
    """The step hook: steers the active rows of a step and returns the edit that puts δh into its forward."""

    def __init__(self, model, site: str, rule, steps: frozenset[int], eta: float, max_steps: int):
        self.model, self.site, self.rule, self.steer_steps = model, site, rule, steps
        self.eta, self.max_steps = eta, max_steps
        self.steps: list[SteeringStep] = []

    def __call__(self, inputs: StepInputs):
        if inputs.step not in self.steer_steps:
            return None
        target = self.rule(inputs.step, inputs.rows, inputs.generated)  # (B,) ids or (B, V) mask
        active = target >= 0 if target.ndim == 1 else target.any(-1)  # (B,)
        if not active.any():
            return None
        h0, read = position_readout(self.model, self.site, inputs.input_ids, attention_mask=inputs.attention_mask,
                                    position_ids=inputs.position_ids, cache=inputs.past_key_values)
        idx = active.nonzero()[:, 0]  # (N,)
        if self.site != FINAL and len(idx) < len(h0):
            # A read-out through later blocks runs the whole batch: the unsteered rows keep their natural state.
            full = read

            def read(h: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, V)
                return full(h0.index_copy(0, idx, h.to(h0.dtype)))[idx]

        result = jacobian_steer(h0[idx], target[idx], read, eta=self.eta, max_steps=self.max_steps)
        self.steps.append(SteeringStep(inputs.step, tuple(inputs.rows[i] for i in idx.tolist()), result))
        delta = torch.zeros_like(h0).index_copy(0, idx, result.delta.to(h0.dtype))  # (B, d), 0 on unsteered rows
        return edit_site(self.model, self.site, add_to_last(delta))


def _vocab_size(model) -> int:
    head = unembedding(model)
    return getattr(head, "out_features", None) or head.weight.shape[0]


def _steer_steps(steer_steps: Iterable[int] | None, new_tokens: int) -> frozenset[int]:
    if steer_steps is None:
        return frozenset(range(new_tokens))
    steps = list(steer_steps)
    bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < new_tokens]
    if bad:
        raise ConfigError("steer_steps", f"step(s) {bad[:5]} outside 0..{new_tokens - 1} (new_tokens = {new_tokens})")
    return frozenset(steps)


def _check_ids(ids: torch.Tensor, vocab: int, what: str) -> None:
    bad = (ids < NO_TARGET) | (ids >= vocab)
    if bad.any():
        raise ConfigError("targets", f"{what}: token id {int(ids[bad][0])} is outside the vocabulary [0, {vocab}) "
                                     f"(-1 leaves a row unsteered); use ids of the model's tokenizer")


def _target_rule(targets: Targets, n_prompts: int, vocab: int):
    """``targets`` checked, as a rule (step, rows, generated (B, s)) -> (B,) ids (-1: none) or (B, V) bool mask."""
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return _callable_rule(targets, vocab)
    if isinstance(targets, (set, frozenset)) or (isinstance(targets, torch.Tensor) and targets.ndim == 1) or (
            isinstance(targets, Sequence) and len(targets) > 0 and all(isinstance(t, int) for t in targets)):
        ids = torch.as_tensor(sorted(targets) if isinstance(targets, (set, frozenset)) else targets)
        if ids.numel() == 0 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ConfigError("targets", f"a token set must hold integer ids; got {ids.numel()} of dtype {ids.dtype}")
        _check_ids(ids, vocab, "token set")
        if (ids < 0).any():
            raise ConfigError("targets", "a token set cannot hold -1; list only the tokens of the concept")
        mask = torch.zeros(vocab, dtype=torch.bool).index_fill(0, ids.long(), True)  # (V,)
        return lambda step, rows, generated: mask.to(generated.device).expand(len(rows), vocab)
    if isinstance(targets, torch.Tensor):
        if targets.ndim != 2 or targets.is_floating_point() or targets.dtype == torch.bool:
            raise ConfigError("targets", f"a token per step must be a (prompts, steps) integer tensor; got shape "
                                         f"{tuple(targets.shape)}, dtype {targets.dtype}")
        rows = [row.tolist() for row in targets]
    elif isinstance(targets, Sequence) and not isinstance(targets, str):
        rows = [list(row) if isinstance(row, Sequence) and not isinstance(row, str) else None for row in targets]
        if any(row is None or not all(isinstance(t, int) for t in row) for row in rows):
            raise ConfigError("targets", "give one list of token ids per prompt, a flat id list (a token set), a "
                                         "tensor or a callable; got a list mixing other types")
    else:
        raise ConfigError("targets", f"{type(targets).__name__} is not a target: give ids per step (tensor or "
                                     "lists), a token set (e.g. concept_targets(tokenizer, words)) or a callable")
    if len(rows) != n_prompts:
        raise ConfigError("targets", f"{len(rows)} target rows for {n_prompts} prompts; give one row per prompt")
    width = max(map(len, rows), default=0)
    table = torch.tensor([row + [NO_TARGET] * (width - len(row)) for row in rows], dtype=torch.long)  # (P, M)
    if width:
        _check_ids(table, vocab, "targets per step")

    def rule(step: int, batch_rows: range, generated: torch.Tensor) -> torch.Tensor:
        if step >= width:
            return torch.full((len(batch_rows),), NO_TARGET, dtype=torch.long, device=generated.device)
        return table[list(batch_rows), step].to(generated.device)

    return rule


def _callable_rule(fn: TargetFn, vocab: int):
    def rule(step: int, rows: range, generated: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(fn(step, generated), device=generated.device)
        B = len(rows)
        if out.dtype == torch.bool:
            if out.shape != (B, vocab):
                raise ConfigError("targets", f"the target callable's mask at step {step} must be (B, V) = ({B}, "
                                             f"{vocab}); got {tuple(out.shape)}")
            return out
        if out.is_floating_point() or out.shape != (B,):
            raise ConfigError("targets", f"the target callable must return ids (B,) = ({B},) or a (B, V) bool mask "
                                         f"at step {step}; got shape {tuple(out.shape)}, dtype {out.dtype}")
        _check_ids(out, vocab, f"the target callable at step {step}")
        return out.long()

    return rule
