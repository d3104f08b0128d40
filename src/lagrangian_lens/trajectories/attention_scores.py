"""``AttentionScores``: one sequence's attention scores (or log-probabilities) at every captured layer and head, and
the keys each query sees. ``trajectories.attention.capture_attention`` fills it; ``analysis.thermo`` reads it."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import TrajectoryError

# What AttentionScores.scores hold: the scores themselves, or ln p = s − ln Z (known up to a constant per row).
GAUGES = ("scores", "log-probabilities")


@dataclass
class AttentionScores:
    """One sequence's pre-softmax attention scores at L layers and H heads, and the keys each query sees.

    Row i is the query at position i, column j the key at position j. ``capture_attention`` fills every field,
    over a sequence's real tokens only (padding removed), so position 0 is its first token (its BOS where the
    tokenizer adds one) and the attention sink stays at key 0; hand-made scores need only ``scores`` and
    ``visible``. ``analysis.thermo.analyse_thermo`` reads this container as it is.

    ``gauge`` says what ``scores`` hold. "scores": the scores as the softmax reads them. "log-probabilities":
    ln p_j = s_j − ln Z, the scores up to one unknown constant per query row (the capture of models whose layers
    bypass the AttentionInterface); −inf marks a visible key whose probability underflowed to 0. Everything the
    softmax alone decides (p, S, C, C(T)) is the same in both gauges; the energies' level (U, F) is not.
    """

    scores: torch.Tensor  # (L, H, T, T) float: as the softmax reads them (scaled; soft-capped where the model caps)
    visible: torch.Tensor  # (L, T, T) bool, True where query i sees key j; (T, T) or (L, 1, T, T) are normalised to it
    token_ids: torch.Tensor | None = None  # (T,) int: the tokens, where known
    positions: torch.Tensor | None = None  # (T,) int >= 0: the tokens' positions (None: their indices)
    layers: tuple[int, ...] | None = None  # (L,) the block index of each row of scores (None: 0..L-1)
    gauge: str = "scores"  # one of GAUGES: what ``scores`` hold

    def __post_init__(self):
        s = self.scores
        if s.ndim != 4 or s.shape[-1] != s.shape[-2] or not s.is_floating_point():
            raise TrajectoryError(f"AttentionScores.scores must be float (L, H, T, T), got {s.dtype} "
                                  f"{tuple(s.shape)}; give one sequence's scores, layers stacked first")
        L, _, T, _ = s.shape
        self.visible = self._normalised_mask(self.visible, L, T).to(s.device)
        for name in ("token_ids", "positions"):
            value = getattr(self, name)
            if value is not None and (tuple(value.shape) != (T,) or value.is_floating_point()):
                raise TrajectoryError(f"AttentionScores.{name} must be ints of shape ({T},), one per token; got "
                                      f"{value.dtype} {tuple(value.shape)}")
        if self.positions is not None and bool((self.positions < 0).any()):
            raise TrajectoryError(f"AttentionScores.positions must be >= 0, got min {int(self.positions.min())}")
        self.layers = tuple(range(L)) if self.layers is None else tuple(int(layer) for layer in self.layers)
        if len(self.layers) != L:
            raise TrajectoryError(f"AttentionScores.layers has {len(self.layers)} block indices for {L} rows of "
                                  "scores; give one per row, or None for 0..L-1")
        if not bool(self.visible.any(-1).all()):
            raise TrajectoryError("AttentionScores.visible: a query sees no key (the sequence still holds padding "
                                  "positions?); every query must see at least one key, e.g. itself")
        if self.gauge not in GAUGES:
            raise TrajectoryError(f"AttentionScores.gauge {self.gauge!r} is not one of {GAUGES}: 'scores' for scores "
                                  "as the softmax reads them, 'log-probabilities' for ln p")
        if not self.scores_known:
            top = float(torch.where(self.mask, s, -math.inf).max())  # ln p <= 0, up to rounding
            if top > 1e-6:
                raise TrajectoryError(f"AttentionScores.scores reach {top:.3g} at a visible key, but log-probabilities "
                                      "are <= 0; pass ln p (gauge='log-probabilities') or the scores (gauge='scores')")

    @staticmethod
    def _normalised_mask(mask: torch.Tensor, L: int, T: int) -> torch.Tensor:
        """(L, T, T) from a (T, T) mask shared by the layers (a view) or an (L, 1, T, T) one."""
        if mask.dtype != torch.bool:
            raise TrajectoryError(f"AttentionScores.visible must be bool (True = visible key), got {mask.dtype}; "
                                  "pass mask.bool()")
        if tuple(mask.shape) == (T, T):
            return mask.expand(L, T, T)
        if tuple(mask.shape) == (L, 1, T, T):
            return mask[:, 0]
        if tuple(mask.shape) != (L, T, T):
            raise TrajectoryError(f"AttentionScores.visible of shape {tuple(mask.shape)}: give one mask per layer, "
                                  f"shared by the heads: (L, T, T) = ({L}, {T}, {T}), (L, 1, T, T) or (T, T)")
        return mask

    @property
    def scores_known(self) -> bool:
        """Whether ``scores`` are the scores themselves, not ln p (known only up to a constant per query row)."""
        return self.gauge == "scores"

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    @property
    def n_tokens(self) -> int:
        return self.scores.shape[2]

    @property
    def layer_names(self) -> tuple[str, ...]:
        """(L,) the rows' site names, 'block.<index>'."""
        return tuple(f"block.{layer}" for layer in self.layers)

    @property
    def mask(self) -> torch.Tensor:
        """(L, H, T, T) bool: the visible mask broadcast over heads (a view, no copy)."""
        return self.visible[:, None].expand_as(self.scores)

    @property
    def token_positions(self) -> torch.Tensor:
        """(T,) int64 positions on the scores' device: ``positions``, or the indices without them."""
        if self.positions is not None:
            return self.positions.to(device=self.scores.device, dtype=torch.long)
        return torch.arange(self.n_tokens, device=self.scores.device)

    def probabilities(self) -> torch.Tensor:
        """(L, H, T, T) the softmax of the scores over each query's visible keys; 0 on hidden keys (either gauge:
        the softmax of ln p is p)."""
        masked = self.scores.masked_fill(~self.mask, float("-inf"))
        return torch.softmax(masked, dim=-1)
