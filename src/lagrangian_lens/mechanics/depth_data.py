"""Depth trajectories as plain arrays, for the shared-potential diagnostics: (n_sequences, n_layers+1, n_tokens, d)
with a token mask, from any tool or from the toolkit's ``Trajectory`` objects.

The fit reads (x, v, Δx) triples along a *time axis*, and gives each *fit layer* its own α and β:

* ``time_axis="depth"`` (the default): time runs through the layers. For layer l (1 <= l <= L-1 of the kept
  layers) a real token gives x_l, its velocity v_l = x_l − x_{l−1} and its step Δx_l = x_{l+1} − x_l; the fit
  layers are those L − 1 layers, and the samples are the real tokens.
* ``time_axis="tokens"`` (:meth:`DepthData.along_tokens`): time runs through the positions at each fixed layer.
  Position t gives x_{ℓ,t}, v = x_{ℓ,t} − x_{ℓ,t−1} and Δx = x_{ℓ,t+1} − x_{ℓ,t} when positions t−1, t, t+1 are
  all real; the fit layers are the L + 1 kept layers ℓ themselves, and the samples are those positions. So one
  V_ψ is shared by every layer and token, with α_ℓ, β_ℓ per layer, as in the author's token-direction fit.

Either way :meth:`DepthData.samples` hands the fit (S, n_fit_layers, d) arrays, so every estimator runs on both.
Splits are made by sequence, never by token.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import ConfigError, TrajectoryError

CENTERINGS = ("sequence", "sequence-layer", "global", "none")
TIME_AXES = ("depth", "tokens")
# The mean each centring subtracts, as the dims of (N, L+1, T, d) it averages over (real tokens only).
_CENTERING_DIMS = {"sequence": (1, 2), "sequence-layer": (2,), "global": (0, 1, 2)}


@dataclass
class DepthData:
    states: torch.Tensor  # (N, L+1, T, d) hidden states through depth
    mask: torch.Tensor  # (N, T) bool: which tokens are real
    aux: torch.Tensor | None = None  # (N, T, a) per-token side input for a known potential (an SPLM's ξ)
    time_axis: str = "depth"  # which axis plays time: 'depth' (fit layers = layers 1..L-1) or 'tokens' (= every layer)

    def __post_init__(self):
        if self.time_axis not in TIME_AXES:
            raise ConfigError("time_axis", f"must be one of {TIME_AXES}, got {self.time_axis!r}")
        if self.states.ndim != 4:
            raise TrajectoryError(f"depth states must be (n_sequences, n_layers+1, n_tokens, d); got {tuple(self.states.shape)}")
        N, L1, T, _ = self.states.shape
        if self.mask.shape != (N, T):
            raise TrajectoryError(f"mask must be (n_sequences, n_tokens) = ({N}, {T}); got {tuple(self.mask.shape)}")
        if self.time_axis == "depth" and L1 < 3:
            raise TrajectoryError(f"{L1} layers give no (x, v, Δx) triple: at least 3 states through depth are needed")
        if self.time_axis == "tokens" and T < 3:
            raise TrajectoryError(f"{T} positions give no (x, v, Δx) triple along tokens: at least 3 are needed")
        self.mask = self.mask.bool()
        if not torch.isfinite(self.states[self.mask[:, None, :].expand(N, L1, T)]).all():
            raise TrajectoryError("depth states hold NaN or inf at real tokens")

    @property
    def n_sequences(self) -> int:
        return self.states.shape[0]

    @property
    def n_fit_layers(self) -> int:
        """Layers with their own α and β: L − 1 along depth (those with a velocity and a step), L + 1 along tokens."""
        return self.states.shape[1] - 2 if self.time_axis == "depth" else self.states.shape[1]

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

    def along_tokens(self) -> DepthData:
        """The same states with time running along tokens at each layer (see the module docstring)."""
        return dataclasses.replace(self, time_axis="tokens")

    def prepare(self, *, centering: str = "sequence", drop_first_layer: bool = False, drop_last_layer: bool = False,
                skip_positions: int = 1) -> DepthData:
        """Drop layers and leading positions, then centre, subtracting from every state the mean of real tokens:

        * ``sequence``: one mean per sequence, pooled over its layers and tokens. Each layer's mean position
          differs from it, so each layer's mean step stays in Δx.
        * ``sequence-layer``: one mean per sequence and layer, over its tokens (as the paper's author extracts
          states): each layer's mean position is removed, and with it the mean step of each sequence.
        * ``global``: one mean over every sequence, layer and token.
        * ``none``: the states as they are.
        """
        if centering not in CENTERINGS:
            raise ConfigError("centering", f"must be one of {CENTERINGS}, got {centering!r}")
        states = self.states[:, int(drop_first_layer): self.states.shape[1] - int(drop_last_layer)]
        mask = self.mask.clone()
        mask[:, :skip_positions] = False
        if centering != "none":
            dims = _CENTERING_DIMS[centering]
            w = mask[:, None, :, None].expand(*states.shape[:3], 1).to(states.dtype)  # (N, L+1, T, 1)
            count = w.sum(dims, keepdim=True).clamp_min(1)
            states = states - (states * w).sum(dims, keepdim=True) / count
        return DepthData(states, mask, self.aux, self.time_axis)

    def split(self, test_fraction: float, seed: int = 0) -> tuple[DepthData, DepthData]:
        """(train, test) by whole sequences."""
        n_test = max(1, int(round(self.n_sequences * test_fraction)))
        if n_test >= self.n_sequences:
            raise TrajectoryError(f"cannot hold out {n_test} of {self.n_sequences} sequences and keep some for training")
        order = torch.randperm(self.n_sequences, generator=torch.Generator().manual_seed(seed))
        return self.subset(order[n_test:]), self.subset(order[:n_test])

    def subset(self, index: torch.Tensor) -> DepthData:
        return DepthData(self.states[index], self.mask[index], None if self.aux is None else self.aux[index],
                         self.time_axis)

    def samples(self) -> dict[str, torch.Tensor]:
        """Every sample's x, v, dx, each (S, n_fit_layers, d); aux (S, a) when present.

        Along depth a sample is a real token; along tokens it is a position whose neighbours are real too.
        """
        if self.time_axis == "tokens":
            s = self.states.permute(0, 2, 1, 3)  # (N, T, L+1, d)
            triple = self.mask[:, :-2] & self.mask[:, 1:-1] & self.mask[:, 2:]  # (N, T-2): centre t = 1..T-2
            prev, x, nxt = s[:, :-2][triple], s[:, 1:-1][triple], s[:, 2:][triple]  # (S, L+1, d) each
            out = {"x": x, "v": x - prev, "dx": nxt - x}
            if self.aux is not None:
                out["aux"] = self.aux[:, 1:-1][triple]
            return out
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
    return DepthData(states, data.mask, data.aux, data.time_axis)
