"""The scalar-potential language model (SPLM): inference as a damped Euler–Lagrange flow on one learned potential.

Reads top to bottom: the potential V_θ, the mass, then the model. One shared V_θ(ξ, h) drives every step
(weight-tied across depth); the per-step update is the semi-implicit damped Euler integrator

    f = -∇_h V_θ(ξ, h)
    v ← (v + dt·f/m) / (1 + dt·γ)
    h ← h + dt·v

with h_0 = E[x] + P, v_0 = 0 and ξ_t = mean_{s≤t}(E[x_s] + P_s), the causal cumulative mean of the
embeddings. ξ is computed once from the embeddings, so the force on token t depends on tokens ≤ t only:
causal by construction (the causal probe checks it).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import silu_mlp, silu_mlp_input_grad

MASS_MODES = ("global", "token", "logfreq")
FORCE_MODES = ("autograd", "closed_form")


@dataclass
class SPLMConfig:
    vocab_size: int = 65  # tokens in the vocabulary
    block_size: int = 128  # longest context (learned positions)
    d_model: int = 128  # width of h, v and the embeddings
    n_steps: int = 8  # integration steps L (the model's depth)
    v_hidden: int = 512  # width of the potential MLP
    v_depth: int = 2  # hidden layers of the potential MLP
    dt: float = 1.0  # integration step (fixed)
    mass: str = "global"  # 'global' scalar, 'token' (an embedding head) or 'logfreq' (from token frequency)
    mass_init: float = 1.0  # initial mass
    gamma: float = 0.5  # initial damping γ
    learn_gamma: bool = True  # learn γ, or keep it fixed
    ln_after_step: bool = False  # LayerNorm (no affine) on h after every step
    force: str = "autograd"  # 'autograd' (torch.autograd.grad) or 'closed_form' (the MLP's input-gradient by hand)
    v_init_scale: float = 1e-2  # std of the potential's last layer at init: starts near a flat potential
    mass_eps: float = 1e-3  # m = softplus(·) + eps keeps the mass positive

    def __post_init__(self):
        if self.mass not in MASS_MODES:
            raise ValueError(f"mass must be one of {MASS_MODES}, got {self.mass!r}")
        if self.force not in FORCE_MODES:
            raise ValueError(f"force must be one of {FORCE_MODES}, got {self.force!r}")


def inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class ScalarPotential(nn.Module):
    """V_θ(ξ, h): an MLP on concat(ξ, h) giving one scalar per token, with its exact input-gradient."""

    def __init__(self, d: int, hidden: int, depth: int, init_scale: float):
        super().__init__()
        widths = [2 * d] + [hidden] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.out = nn.Linear(widths[-1], 1, bias=False)  # a constant offset of V exerts no force
        nn.init.normal_(self.out.weight, std=init_scale)
        self.d = d

    def forward(self, xi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return silu_mlp(self.hidden, self.out, torch.cat([xi, h], dim=-1))  # (B, T, 2d) -> (B, T)

    def force_autograd(self, xi: torch.Tensor, h: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """-∇_h V by autograd. Each V_t depends on h_t only, so the gradient of the sum is per token."""
        with torch.enable_grad():
            # A fresh node for h: the gradient must follow h -> V only, never h -> ξ -> V. At step 0, h *is*
            # the tensor ξ was pooled from, and differentiating through ξ would leak future tokens.
            h_var = h.view_as(h) if h.requires_grad else h.detach().requires_grad_(True)
            grad, = torch.autograd.grad(self(xi, h_var).sum(), h_var, create_graph=create_graph)
        return -grad

    def force_closed_form(self, xi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """-∇_h V by the chain rule written out: ordinary differentiable ops, no double backward."""
        g = silu_mlp_input_grad(self.hidden, self.out.weight, torch.cat([xi, h], dim=-1))  # (B, T, 2d)
        return -g[..., self.d:]  # the h half of the input, (B, T, d)


class Mass(nn.Module):
    """m > 0: one global scalar, one per token id, or a learned function of the token's log-frequency."""

    def __init__(self, cfg: SPLMConfig):
        super().__init__()
        self.mode, self.eps = cfg.mass, cfg.mass_eps
        raw = inv_softplus(cfg.mass_init - cfg.mass_eps)
        if self.mode == "global":
            self.raw = nn.Parameter(torch.tensor(raw))
        elif self.mode == "token":
            self.raw = nn.Embedding(cfg.vocab_size, 1)
            nn.init.constant_(self.raw.weight, raw)
        else:
            self.scale = nn.Parameter(torch.zeros(()))
            self.bias = nn.Parameter(torch.tensor(raw))
            self.register_buffer("log_freq", torch.zeros(cfg.vocab_size))  # set from data: set_token_frequencies

    def set_token_frequencies(self, counts: torch.Tensor) -> None:
        p = (counts.double() + 1) / (counts.sum() + counts.numel())  # add-one smoothing: no log(0)
        self.log_freq.copy_(p.log().float())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> mass broadcastable against (B, T, d)."""
        if self.mode == "global":
            return F.softplus(self.raw) + self.eps  # ()
        if self.mode == "token":
            return F.softplus(self.raw(idx)) + self.eps  # (B, T, 1)
        return (F.softplus(self.scale * self.log_freq[idx] + self.bias) + self.eps)[..., None]  # (B, T, 1)


class SPLM(nn.Module):
    """The SPLM; implements :class:`~.protocols.OwnLM`, as the GPT baseline does."""

    def __init__(self, cfg: SPLMConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # tied with the read-out
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        self.potential = ScalarPotential(cfg.d_model, cfg.v_hidden, cfg.v_depth, cfg.v_init_scale)
        self.mass = Mass(cfg)
        if cfg.learn_gamma:  # γ = softplus(raw) stays positive while it learns
            self.gamma_raw = nn.Parameter(torch.tensor(inv_softplus(max(cfg.gamma, 1e-6))))
        else:  # a fixed γ is kept exactly, 0 included
            self.register_buffer("gamma_fixed", torch.tensor(float(cfg.gamma)))

    @property
    def gamma(self) -> torch.Tensor:
        return F.softplus(self.gamma_raw) if self.config.learn_gamma else self.gamma_fixed

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> h_0 = E[x] + P, (B, T, d)."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        return self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))

    def context_pool(self, h0: torch.Tensor) -> torch.Tensor:
        """ξ_t = mean_{s≤t} h0_s, (B, T, d): causal cumulative mean of the embeddings."""
        counts = torch.arange(1, h0.shape[1] + 1, device=h0.device, dtype=h0.dtype)
        return h0.cumsum(dim=1) / counts[:, None]

    def force(self, xi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.config.force == "closed_form":
            return self.potential.force_closed_form(xi, h)
        # Keep the force differentiable whenever gradients are being taken (training, Jacobian probes).
        return self.potential.force_autograd(xi, h, create_graph=torch.is_grad_enabled())

    def integrate(self, h0: torch.Tensor, idx: torch.Tensor, keep_states: bool = False):
        """Run the L damped Euler–Lagrange steps from h0; returns h_L and, if asked, every step's (h, v)."""
        cfg = self.config
        xi, m, gamma = self.context_pool(h0), self.mass(idx), self.gamma
        h, v = h0, torch.zeros_like(h0)
        states = [(h, v)] if keep_states else None
        for _ in range(cfg.n_steps):
            f = self.force(xi, h)  # (B, T, d)
            v = (v + cfg.dt * f / m) / (1 + cfg.dt * gamma)
            h = h + cfg.dt * v
            if cfg.ln_after_step:
                h = F.layer_norm(h, h.shape[-1:])
            if keep_states:
                states.append((h, v))
        return h, states

    def depth_states(self, idx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """h_0 and h after every step (L+1 tensors (B, T, d)), and what the read-out sees: h_L itself."""
        h_last, states = self.integrate(self.embed(idx), idx, keep_states=True)
        return [h for h, _ in states], h_last

    def logits_from_embeddings(self, h0: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h, _ = self.integrate(h0, idx)
        return h @ self.wte.weight.T  # (B, T, V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.logits_from_embeddings(self.embed(idx), idx)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def physics(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Positions, velocities, mass, potential and energy at every step (L+1 of them), for analysis.

        h, v: (L+1, B, T, d); potential, kinetic, energy: (L+1, B, T); energy = ½m‖v‖² + V_θ(ξ, h).
        """
        h0 = self.embed(idx)
        _, states = self.integrate(h0, idx, keep_states=True)
        xi, m = self.context_pool(h0), self.mass(idx)
        h = torch.stack([s[0] for s in states])
        v = torch.stack([s[1] for s in states])
        potential = torch.stack([self.potential(xi, s[0]) for s in states])
        m_tok = m.squeeze(-1) if torch.is_tensor(m) and m.ndim == 3 else m
        kinetic = 0.5 * m_tok * (v * v).sum(-1)
        energy = kinetic + potential
        return {"h": h, "v": v, "mass": m_tok * torch.ones_like(potential[0]), "potential": potential,
                "kinetic": kinetic, "energy": energy, "energy_drift": energy[-1] - energy[0]}

    @torch.no_grad()
    def learned_constants(self) -> dict[str, float]:
        m = self.mass(torch.zeros(1, 1, dtype=torch.long, device=self.wte.weight.device))
        return {"gamma": float(self.gamma), "mass" if self.config.mass == "global" else "mass_token0": float(m.mean()),
                "dt": self.config.dt}

    def config_dict(self) -> dict:
        return asdict(self.config)
