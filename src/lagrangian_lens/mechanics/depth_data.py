"""Depth trajectories as plain arrays, for the shared-potential diagnostics: (n_sequences, n_layers+1, n_tokens, d)
with a token mask, from any tool or from the toolkit's ``Trajectory`` objects.

For layer l (1 <= l <= L-1 of the kept layers) the fit sees x_l, its velocity v_l = x_l - x_{l-1} and its step
Δx_l = x_{l+1} - x_l. Splits are made by sequence, never by token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError, TrajectoryError

CENTERINGS = ("sequence", "global", "none")


@dataclass
class DepthData:
    states: torch.Tensor  # (N, L+1, T, d) hidden states through depth
    mask: torch.Tensor  # (N, T) bool: which tokens are real
    aux: torch.Tensor | None = None  # (N, T, a) per-token side input for a known potential (an SPLM's ξ)

    def __post_init__(self):
        if self.states.ndim != 4:
            raise TrajectoryError(f"depth states must be (n_sequences, n_layers+1, n_tokens, d); got {tuple(self.states.shape)}")
        N, L1, T, _ = self.states.shape
        if self.mask.shape != (N, T):
            raise TrajectoryError(f"mask must be (n_sequences, n_tokens) = ({N}, {T}); got {tuple(self.mask.shape)}")
        if L1 < 3:
            raise TrajectoryError(f"{L1} layers give no (x, v, Δx) triple: at least 3 states through depth are needed")
        self.mask = self.mask.bool()
        if not torch.isfinite(self.states[self.mask[:, None, :].expand(N, L1, T)]).all():
            raise TrajectoryError("depth states hold NaN or inf at real tokens")

    @property
    def n_sequences(self) -> int:
        return self.states.shape[0]

    @property
    def n_fit_layers(self) -> int:
        """Layers with both a velocity and a step: L - 1."""
        return self.states.shape[1] - 2

    @classmethod
    def from_trajectories(cls, trajectories, aux: list[torch.Tensor] | None = None) -> DepthData:
        """Stack the depth sites (embed, block.*) of teacher-forced trajectories, padding tokens."""
        rows = [[i for i, s in enumerate(t.sites) if s == "embed" or s.startswith("block.")] for t in trajectories]
        if len({len(r) for r in rows}) != 1:
            raise TrajectoryError("trajectories have different numbers of depth sites; extract them with sites='all'")
        T = max(t.n_positions for t in trajectories)
        first = trajectories[0].states
        states = first.new_zeros((len(trajectories), len(rows[0]), T, first.shape[-1]))
        mask = torch.zeros(len(trajectories), T, dtype=torch.bool)
        for i, (t, r) in enumerate(zip(trajectories, rows)):
            states[i, :, :t.n_positions] = t.states[r]
            mask[i, :t.n_positions] = True
        aux_t = None
        if aux is not None:
            aux_t = states.new_zeros((len(trajectories), T, aux[0].shape[-1]))
            for i, a in enumerate(aux):
                aux_t[i, :a.shape[0]] = a
        return cls(states, mask, aux_t)

    def prepare(self, *, centering: str = "sequence", drop_first_layer: bool = False, drop_last_layer: bool = False,
                skip_positions: int = 1) -> DepthData:
        """Drop layers and leading positions, then centre (per sequence, globally, or not at all)."""
        if centering not in CENTERINGS:
            raise ConfigError("centering", f"must be one of {CENTERINGS}, got {centering!r}")
        states = self.states[:, int(drop_first_layer): self.states.shape[1] - int(drop_last_layer)]
        mask = self.mask.clone()
        mask[:, :skip_positions] = False
        if centering != "none":
            w = mask[:, None, :, None].to(states.dtype)  # (N, 1, T, 1)
            dims = (1, 2) if centering == "sequence" else (0, 1, 2)
            count = (w.sum(dims, keepdim=True) * states.shape[1]).clamp_min(1)
            states = states - (states * w).sum(dims, keepdim=True) / count
        return DepthData(states, mask, self.aux)

    def split(self, test_fraction: float, seed: int = 0) -> tuple[DepthData, DepthData]:
        """(train, test) by whole sequences."""
        n_test = max(1, int(round(self.n_sequences * test_fraction)))
        if n_test >= self.n_sequences:
            raise TrajectoryError(f"cannot hold out {n_test} of {self.n_sequences} sequences and keep some for training")
        order = torch.randperm(self.n_sequences, generator=torch.Generator().manual_seed(seed))
        return self.subset(order[n_test:]), self.subset(order[:n_test])

    def subset(self, index: torch.Tensor) -> DepthData:
        return DepthData(self.states[index], self.mask[index], None if self.aux is None else self.aux[index])

    def samples(self) -> dict[str, torch.Tensor]:
        """Per real token, every fit layer: x, v, dx each (S, L-1, d); aux (S, a) when present."""
        s = self.states.permute(0, 2, 1, 3)[self.mask]  # (S, L+1, d)
        out = {"x": s[:, 1:-1], "v": s[:, 1:-1] - s[:, :-2], "dx": s[:, 2:] - s[:, 1:-1]}
        if self.aux is not None:
            out["aux"] = self.aux[self.mask]
        return out


def pca_basis(data: DepthData, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (d,), components (d, k)) of the real tokens' states pooled over layers."""
    x = data.states.permute(0, 2, 1, 3)[data.mask].reshape(-1, data.states.shape[-1]).double()
    mean = x.mean(0)
    _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:min(k, vt.shape[0])].T


def project(data: DepthData, mean: torch.Tensor, components: torch.Tensor) -> DepthData:
    """The same trajectories in PCA coordinates (N, L+1, T, k); fit the basis on train, apply it to both."""
    states = ((data.states.double() - mean) @ components).to(data.states.dtype)
    return DepthData(states, data.mask, data.aux)
