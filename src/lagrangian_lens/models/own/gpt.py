"""The matched GPT baseline: a standard pre-LN causal decoder (learned positions, tied embeddings, GELU MLP).

``matched_gpt_config`` picks the depth whose parameter count is closest to a given model's, so SPLM and GPT
are compared at equal scale, width, context and data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int = 65  # tokens in the vocabulary
    block_size: int = 128  # longest context (learned positions)
    d_model: int = 128  # residual width
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads (d_model must divide evenly)
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio · d_model
    dropout: float = 0.0  # dropout on attention and MLP outputs

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.d_model), CausalSelfAttention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.d_model), MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """The baseline; implements :class:`~.protocols.OwnLM`, as the SPLM does."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # tied with the read-out
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        return self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))

    def depth_states(self, idx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The residual stream before block 0 and after every block (L+1 tensors (B, T, d)), and what the
        read-out sees: ln_f of the last one."""
        states = [self.embed(idx)]  # (B, T, d)
        for block in self.blocks:
            states.append(block(states[-1]))
        return states, self.ln_f(states[-1])

    def logits_from_embeddings(self, h0: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        x = h0
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # (B, T, V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.logits_from_embeddings(self.embed(idx))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def config_dict(self) -> dict:
        return asdict(self.config)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_gpt_config(target_params: int, *, vocab_size: int, block_size: int, d_model: int, n_head: int = 4,
                       max_layers: int = 48) -> GPTConfig:
    """The GPT of width ``d_model`` whose depth gives the parameter count closest to ``target_params``."""
    base = GPTConfig(vocab_size=vocab_size, block_size=block_size, d_model=d_model, n_layer=1, n_head=n_head)
    with torch.device("meta"):
        counts = {L: n_params(GPT(replace(base, n_layer=L))) for L in range(1, max_layers + 1)}
    best = min(counts, key=lambda L: abs(counts[L] - target_params))
    return replace(base, n_layer=best)
