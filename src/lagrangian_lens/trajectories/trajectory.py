"""The ``Trajectory`` type: one sequence's hidden states at named sites, with the log-probabilities of its tokens.

Indexing convention. A trajectory of T positions covers T+1 tokens: position t holds the states h_t, computed
from tokens 0..t, and ``token_ids[t+1]`` is the token realised from h_t (generated from it, or the next token
of the text when teacher-forced). ``logprobs[t] = log p(token_ids[t+1] | h_t)`` from the model's raw logits.
The first ``n_context`` tokens are the context; positions ``n_context-1 .. T-1`` emit the continuation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import TrajectoryError

MODES = ("generated", "teacher-forced")


@dataclass
class Trajectory:
    token_ids: torch.Tensor  # (T+1,) int64: the context, then the realised tokens
    states: torch.Tensor  # (S, T, d): hidden states, one row per site
    logprobs: torch.Tensor  # (T,): log p(token_ids[t+1] | h_t)
    max_logprobs: torch.Tensor  # (T,): log max_v p(v | h_t), the point perplexity of the argmax token
    sites: tuple[str, ...]  # (S,) site names, see trajectories.sites
    n_context: int  # tokens given before the analysed continuation (>= 1)
    mode: str = "teacher-forced"  # "generated" or "teacher-forced"
    entropy: torch.Tensor | None = None  # (T,): entropy of p(. | h_t) in nats, when kept
    metadata: dict = field(default_factory=dict)  # model, conventions, seed: anything JSON-serialisable

    def __post_init__(self) -> None:
        self.sites = tuple(self.sites)
        if self.states.ndim != 3:
            raise TrajectoryError(f"states must be (sites, T, d); got shape {tuple(self.states.shape)}")
        S, T, _ = self.states.shape
        if S != len(self.sites):
            raise TrajectoryError(f"states has {S} site rows but {len(self.sites)} site names {self.sites}")
        if self.token_ids.shape != (T + 1,):
            raise TrajectoryError(f"token_ids must be (T+1,) = ({T + 1},) for T={T} positions; got {tuple(self.token_ids.shape)}")
        for name in ("logprobs", "max_logprobs", "entropy"):
            value = getattr(self, name)
            if value is not None and value.shape != (T,):
                raise TrajectoryError(f"{name} must be (T,) = ({T},); got {tuple(value.shape)}")
        if self.mode not in MODES:
            raise TrajectoryError(f"mode must be one of {MODES}; got {self.mode!r}")
        if not 1 <= self.n_context <= T + 1:
            raise TrajectoryError(f"n_context={self.n_context} outside [1, {T + 1}] for {T + 1} tokens")
        bad = ~torch.isfinite(self.states)
        if bad.any():
            s, t, _ = bad.nonzero()[0].tolist()
            raise TrajectoryError(
                f"non-finite hidden state at site {self.sites[s]!r}, position {t} (token id "
                f"{int(self.token_ids[t])}); {int(bad.any(-1).sum())} (site, position) pairs are NaN/inf. "
                "Fix: load the model in float32 (dtype float32) or check the weights."
            )
        if not torch.isfinite(self.logprobs).all():
            t = int((~torch.isfinite(self.logprobs)).nonzero()[0])
            raise TrajectoryError(f"log-probability at position {t} is {float(self.logprobs[t])}: the logits overflow")

    @property
    def n_positions(self) -> int:
        return self.states.shape[1]

    @property
    def d_model(self) -> int:
        return self.states.shape[2]

    @property
    def targets(self) -> torch.Tensor:
        """(T,) the token realised from each position."""
        return self.token_ids[1:]

    @property
    def continuation(self) -> slice:
        """Positions that emit the continuation (the generated tokens, when generated)."""
        return slice(self.n_context - 1, self.n_positions)

    def at(self, site: str) -> torch.Tensor:
        """(T, d) the states at one site."""
        if site not in self.sites:
            raise TrajectoryError(f"site {site!r} not in this trajectory; it holds {self.sites}. Resolve a negative "
                                  "block index against the model first (Site.parse(site, n_blocks))")
        return self.states[self.sites.index(site)]

    def depth(self) -> torch.Tensor:
        """(S, T, d) the states as a depth trajectory: embed, block.0, ..., in the order extracted."""
        return self.states


def save_trajectories(trajectories: list[Trajectory], path: str | Path) -> Path:
    """Write ``path.safetensors`` (tensors) and ``path.json`` (everything else); returns the tensor file."""
    path = Path(path).with_suffix("")
    tensors, meta = {}, []
    for i, tr in enumerate(trajectories):
        for name in ("token_ids", "states", "logprobs", "max_logprobs", "entropy"):
            if (value := getattr(tr, name)) is not None:
                tensors[f"{i}.{name}"] = value.detach().cpu().contiguous()
        meta.append({"sites": list(tr.sites), "n_context": tr.n_context, "mode": tr.mode, "metadata": tr.metadata})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, f"{path}.safetensors")
    Path(f"{path}.json").write_text(json.dumps({"format": "lagrangian-lens-trajectories/1", "trajectories": meta}, indent=1))
    return Path(f"{path}.safetensors")


def load_trajectories(path: str | Path) -> list[Trajectory]:
    path = Path(path).with_suffix("")
    tensors = load_file(f"{path}.safetensors")
    meta = json.loads(Path(f"{path}.json").read_text())["trajectories"]
    return [
        Trajectory(
            token_ids=tensors[f"{i}.token_ids"], states=tensors[f"{i}.states"], logprobs=tensors[f"{i}.logprobs"],
            max_logprobs=tensors[f"{i}.max_logprobs"], entropy=tensors.get(f"{i}.entropy"), sites=tuple(m["sites"]),
            n_context=m["n_context"], mode=m["mode"], metadata=m["metadata"],
        )
        for i, m in enumerate(meta)
    ]
