"""The causal-violation probe: does any logit at position t' depend on a token at a later position t > t'?

Works on any callable ids (B, T) -> logits (B, T, V): an SPLM, the GPT baseline, a Hugging Face model, a
user's model. Two tests:

* perturbation: change the token at position t and require max |Δ logits| at every t' < t to stay below
  ``tol``, for several t and seeds;
* gradient–Jacobian (when the model exposes embeddings): ∂ logits_{t'} / ∂ embedding_t ≡ 0 for t' < t.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .protocols import OwnLM, require_own_lm


@dataclass
class ProbeResult:
    passed: bool  # True when no test found a violation above tol
    max_violation: float  # the largest |Δ logits| (perturbation) or |∂ logits / ∂ embedding| (Jacobian) seen
    worst_pair: tuple[int, int] | None  # (t', t): the earlier position that moved, and the later one changed
    worst_test: str | None  # which test found the worst violation
    tol: float  # the threshold used
    tests: dict = field(default_factory=dict)  # per test: max violation and its pair

    def __str__(self) -> str:
        if self.passed:
            return f"causal probe passed: max violation {self.max_violation:.3g} <= tol {self.tol:g}"
        t_prime, t = self.worst_pair
        return (f"causal probe FAILED ({self.worst_test}): logits at position {t_prime} changed by "
                f"{self.max_violation:.3g} (> tol {self.tol:g}) when position {t} changed; the model sees the future")


@torch.no_grad()
def _perturbation(model_fn, vocab_size, seq_len, batch, positions, seeds, device):
    worst, pair = 0.0, None
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(vocab_size, (batch, seq_len), generator=gen).to(device)
        base = model_fn(ids).float()
        for t in positions:
            changed = ids.clone()
            changed[:, t] = (ids[:, t] + 1 + torch.randint(vocab_size - 1, (batch,), generator=gen).to(device)) % vocab_size
            delta = (model_fn(changed).float() - base)[:, :t].abs().amax(dim=(0, 2))  # (t,) per earlier position
            if t > 0 and float(delta.max()) > worst:
                worst, pair = float(delta.max()), (int(delta.argmax()), t)
    return worst, pair


def _jacobian(embed_fn, from_embeddings_fn, vocab_size, seq_len, seeds, device):
    worst, pair = 0.0, None
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(vocab_size, (1, seq_len), generator=gen).to(device)
        emb = embed_fn(ids).detach().float().requires_grad_(True)
        with torch.enable_grad():
            logits = from_embeddings_fn(emb, ids).float()  # (1, T, V)
            for t_prime in range(seq_len - 1):
                grad, = torch.autograd.grad(logits[0, t_prime].sum(), emb, retain_graph=True)
                later = grad[0, t_prime + 1:].abs().amax(dim=-1)  # (T - t' - 1,)
                if later.numel() and float(later.max()) > worst:
                    worst, pair = float(later.max()), (t_prime, t_prime + 1 + int(later.argmax()))
    return worst, pair


def probe_causality(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    vocab_size: int,
    *,
    seq_len: int = 16,
    batch: int = 2,
    positions: list[int] | None = None,
    seeds: tuple[int, ...] = (0, 1),
    tol: float = 1e-6,
    embed_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    from_embeddings_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """Run the perturbation test (and the Jacobian test when ``embed_fn`` and ``from_embeddings_fn`` are given).

    ``positions`` are the t to perturb (default: the first, a middle one and the last).
    """
    positions = positions or sorted({1, seq_len // 2, seq_len - 1})
    tests = {"perturbation": _perturbation(model_fn, vocab_size, seq_len, batch, positions, seeds, device)}
    if embed_fn is not None and from_embeddings_fn is not None:
        tests["jacobian"] = _jacobian(embed_fn, from_embeddings_fn, vocab_size, seq_len, seeds, device)
    name, (worst, pair) = max(tests.items(), key=lambda kv: kv[1][0])
    passed = worst <= tol
    return ProbeResult(passed, worst, None if passed else pair, None if passed else name, tol,
                       {k: {"max_violation": v, "pair": p} for k, (v, p) in tests.items()})


def probe_model(model: OwnLM, vocab_size: int, **kwargs) -> ProbeResult:
    """Probe one of the toolkit's own models (an :class:`~.protocols.OwnLM`) with both tests."""
    require_own_lm(model, "probe_model")
    was_training = model.training
    model.eval()
    try:
        return probe_causality(
            lambda ids: model(ids)[0], vocab_size, embed_fn=model.embed,
            from_embeddings_fn=model.logits_from_embeddings, device=next(model.parameters()).device, **kwargs)
    finally:
        model.train(was_training)
