"""The grokking transformer: the small model of the standard modular-addition setup (Power et al. 2022; Nanda et
al. 2023): learned token and position embeddings, causal multi-head attention without biases, a ReLU MLP, no
LayerNorm, and an untied unembedding onto the p answers.

It exposes what its attention softmax reads: ``forward(x, return_scores=True)`` also returns the pre-softmax
scores q·k/√d_head of every layer and head, with the causal mask applied (−inf on hidden keys), so the attention
thermodynamics are computed from exactly the numbers the model uses. ``hook_pattern`` (an identity) carries the
attention probabilities the model multiplies the values by; ``recorded_patterns`` records them.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...checks import check_range
from ...errors import ConfigError


@dataclass
class GrokConfig:
    vocab_size: int = 114  # input tokens: the numbers 0..p-1 and '=' (p + 1)
    n_classes: int = 113  # answers the unembedding scores: the residues 0..p-1 (p)
    n_ctx: int = 3  # longest input (learned positions): a, b, '='
    d_model: int = 128  # residual width
    n_head: int = 4  # attention heads (d_model must divide evenly)
    d_mlp: int = 512  # ReLU MLP hidden width
    n_layer: int = 1  # transformer blocks

    def __post_init__(self):
        for name in ("vocab_size", "n_classes", "n_ctx", "d_model", "n_head", "d_mlp", "n_layer"):
            check_range(name, getattr(self, name), low=1)
        if self.d_model % self.n_head:
            raise ConfigError("n_head", f"d_model {self.d_model} is not divisible by n_head {self.n_head}; choose "
                                        "a head count that divides it")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head


def causal_visible(n: int, device=None) -> torch.Tensor:
    """(n, n) bool: True where query i may see key j (j <= i)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


class Attention(nn.Module):
    def __init__(self, cfg: GrokConfig):
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.hook_pattern = nn.Identity()  # sees the attention probabilities (B, nh, T, T) the values are mixed by

    def forward(self, x: torch.Tensor, last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention output (B, Tq, d) and its masked pre-softmax scores (B, nh, Tq, T): for every position
        (Tq = T), or with ``last_only`` for the last query alone (Tq = 1), which is all the answer needs."""
        B, T, C = x.shape
        q = self._heads(self.q(x[:, -1:] if last_only else x))  # (B, nh, Tq, hs)
        k, v = self._heads(self.k(x)), self._heads(self.v(x))  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)  # (B, nh, Tq, T)
        visible = causal_visible(T, x.device)[T - q.shape[2]:]  # (Tq, T): the rows of the queries computed
        scores = scores.masked_fill(~visible, float("-inf"))
        pattern = self.hook_pattern(scores.softmax(dim=-1))  # (B, nh, Tq, T)
        y = (pattern @ v).transpose(1, 2).reshape(B, q.shape[2], C)
        return self.o(y), scores

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, nh, T, hs)"""
        return t.view(t.shape[0], t.shape[1], self.n_head, self.d_head).transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, cfg: GrokConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.proj = nn.Linear(cfg.d_mlp, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)))


class Block(nn.Module):
    """Attention then MLP, each added to the residual stream; no LayerNorm, as in the grokking setup."""

    def __init__(self, cfg: GrokConfig):
        super().__init__()
        self.attn, self.mlp = Attention(cfg), MLP(cfg)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        a, scores = self.attn(x, last_only)
        x = (x[:, -1:] if last_only else x) + a
        return x + self.mlp(x), scores


class GrokTransformer(nn.Module):
    """Tokens (B, T) -> answer logits at every position (B, T, n_classes); the answer is read at the last one."""

    def __init__(self, cfg: GrokConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.unembed = nn.Linear(cfg.d_model, cfg.n_classes, bias=False)  # untied from wte
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        # N(0, 1/fan_in), as the grokking reference implementation: activations stay O(1) without LayerNorm.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features ** -0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.embedding_dim ** -0.5)

    def forward(self, idx: torch.Tensor, return_scores: bool = False):
        """Logits (B, T, n_classes); with ``return_scores`` also the attention scores (B, n_layer, nh, T, T),
        pre-softmax, −inf on the keys the causal mask hides."""
        x, scores = self.embed(idx), []  # (B, T, d)
        for block in self.blocks:
            x, s = block(x)
            scores.append(s)
        logits = self.unembed(x)  # (B, T, n_classes)
        return (logits, torch.stack(scores, dim=1)) if return_scores else logits

    def answer_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """The logits read at the last position (B, n_classes), equal to ``forward(idx)[:, -1]``: the last block
        computes its last position only (its other positions reach no answer), skipping two thirds of its query,
        output, MLP and unembedding work."""
        x = self.embed(idx)  # (B, T, d)
        for i, block in enumerate(self.blocks):
            x, _ = block(x, last_only=i == len(self.blocks) - 1)
        return self.unembed(x[:, -1])  # (B, n_classes)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.config.n_ctx:
            raise ConfigError("n_ctx", f"an input of {T} tokens exceeds n_ctx {self.config.n_ctx}; give inputs "
                                       f"of at most {self.config.n_ctx} tokens or a larger n_ctx")
        return self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, d)

    def config_dict(self) -> dict:
        return asdict(self.config)


def weight_norm(model: nn.Module) -> float:
    """The L2 norm of all parameters together, sqrt(Σ ‖w‖²): the quantity weight decay shrinks."""
    with torch.no_grad():
        return float(torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters())))


@contextmanager
def recorded_patterns(model: GrokTransformer) -> Iterator[list[torch.Tensor]]:
    """Within the context, every forward appends each layer's attention probabilities (B, nh, Tq, T), the very
    tensors the values are mixed by, to the yielded list (layer order); the hooks go on exit, even on an error."""
    records: list[torch.Tensor] = []

    def hook(module, args, output):
        records.append(output.detach())

    hook.lagrangian_lens = True
    handles = []
    try:
        for block in model.blocks:
            handles.append(block.attn.hook_pattern.register_forward_hook(hook))
        yield records
    finally:
        for handle in handles:
            handle.remove()
