"""The scalar-potential language model (SPLM) family: inference as a damped Euler–Lagrange flow on one learned potential.

One model class and one checkpoint format hold every member. Reads top to bottom: the settings, the context
pool ξ (``xi.py``), the potential V_θ, the pair force (``pair.py``), the mass, then the model. One shared V_θ(ξ, h)
drives every S-step (weight-tied across depth); an S-step is the semi-implicit damped Euler integrator

    f = -∇_h V_θ(ξ, h)  [+ f_pair, with PARF]
    v ← (v + dt·f/m) / (1 + dt·γ)
    h ← h + dt·v

with h_0 = E[x] + P and v_0 = 0. The members:

* ξ (``xi``): ξ_t pools h_0 over s ≤ t, once, from the embeddings: the causal mean (the vanilla SPLM) or a
  learned causal pool (kema, legt, legt-dt, s4d; see ``xi.py``).
* PARF (``pair_force``): a pair potential over earlier tokens adds its force (see ``pair.py``).
* hybrids (``layers``): a string of S (one integration step) and A (a causal attention block, the GPT's
  ``Block``, its own weights per block), e.g. "AASS", "SSAA" or "SSAAAASS"; "" is the vanilla all-S model.
  An A block updates h only: it is not part of the flow, so the velocity passes through it and the next S-step
  continues from v.
* ``final_norm``: an affine LayerNorm on h_L before the tied read-out (the GPT has one, the vanilla SPLM not).

Causality rests on two detach points, both checked by the causal probe. The *ξ-pool detach point*: the force is
-∇_h V_θ at a fresh node for h (:meth:`ScalarPotential.force_autograd`), so the gradient never flows through ξ; at
step 0, h is the very tensor ξ was pooled from, and ∂ξ_s/∂h_t (s ≥ t) would hand token t a force from later tokens
(the closed-form force writes ∇_h alone and needs no detach). The *pair-source detach point*: PARF's sources
sg(h_s) (:meth:`.pair.PairPotential.source`), lest token s feel ∂V_φ(h_t, h_s)/∂h_s from every later t.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...checks import check_choice, check_range
from ...errors import ConfigError
from ...nn import silu_mlp, silu_mlp_input_grad
from .gpt import GPT, Block, GPTConfig
from .pair import PAIR_FORMS, make_pair
from .xi import make_pool, parse_xi

MASS_MODES = ("global", "token", "logfreq")
FORCE_MODES = ("autograd", "closed_form")
LAYER_TYPES = "SA"  # S: one damped Euler–Lagrange step; A: one causal attention block


def resolve_layers(layers: str, n_steps: int) -> str:
    """The layer-type string: "" is n_steps S-steps (vanilla); otherwise n_steps letters, each S or A."""
    if not layers:
        return "S" * n_steps
    if not isinstance(layers, str) or set(layers) - set(LAYER_TYPES):
        raise ConfigError("layers", f"{layers!r} may hold only S (an integration step) and A (an attention block), "
                                    "e.g. SSAAAASS; or give '' for all S")
    if len(layers) != n_steps:
        raise ConfigError("layers", f"{layers!r} has {len(layers)} blocks but n_steps is {n_steps}; give "
                                    f"n_steps {len(layers)} or a string of {n_steps} letters")
    return layers


@dataclass
class SPLMConfig:
    vocab_size: int = 65  # tokens in the vocabulary
    block_size: int = 128  # longest context (learned positions)
    d_model: int = 128  # width of h, v and the embeddings
    n_steps: int = 8  # blocks L (the model's depth): all S-steps unless ``layers`` says otherwise
    v_hidden: int = 512  # width of the potential MLP
    v_depth: int = 2  # hidden layers of the potential MLP
    dt: float = 1.0  # integration step (fixed)
    mass: str = "global"  # 'global' scalar, 'token' (an embedding head) or 'logfreq' (from token frequency)
    mass_init: float = 1.0  # initial mass
    gamma: float = 0.5  # initial damping γ
    learn_gamma: bool = True  # learn γ, or keep it fixed
    ln_after_step: bool = False  # LayerNorm (no affine) on h after every S-step
    force: str = "autograd"  # 'autograd' (torch.autograd.grad) or 'closed_form' (the MLP's input-gradient by hand)
    v_init_scale: float = 1e-2  # std of the potential's last layer at init: starts near a flat potential
    mass_eps: float = 1e-3  # m = softplus(·) + eps keeps the mass positive
    xi: str = "mean"  # the context pool of ξ over the embeddings: mean, kema:N, legt:N, legt-dt:N or s4d:N
    pair_force: str | None = None  # PARF: None (off), 'structural' or 'mlp' pair potential over earlier tokens
    pair_hidden: int = 64  # width of the pair MLP, or rank of the structural pair's metric
    pair_chunk: int = 64  # query positions per block of the O(T²) pair evaluation (memory O(chunk·T·width))
    pair_init_scale: float = 0.0  # the pair potential's size at init; 0 starts PARF exactly as the vanilla SPLM
    layers: str = ""  # layer types, S (step) and A (attention block), n_steps of them; '' is all S
    attn_heads: int = 4  # heads of each A block (must divide d_model)
    mlp_ratio: int = 4  # each A block's MLP width, as a multiple of d_model
    final_norm: bool = False  # an affine LayerNorm on h_L before the tied read-out

    def __post_init__(self):
        check_choice("mass", self.mass, MASS_MODES)
        check_choice("force", self.force, FORCE_MODES)
        parse_xi(self.xi)  # a ConfigError naming the spec and the accepted forms
        if self.pair_force is not None:
            check_choice("pair_force", self.pair_force, PAIR_FORMS)
        for field in ("n_steps", "pair_hidden", "pair_chunk", "attn_heads", "mlp_ratio"):
            check_range(field, getattr(self, field), low=1)
        check_range("pair_init_scale", self.pair_init_scale, low=0)
        if "A" in resolve_layers(self.layers, self.n_steps) and self.d_model % self.attn_heads:
            raise ConfigError("attn_heads", f"{self.attn_heads} does not divide d_model {self.d_model}; give a "
                                            "head count that divides it")

    @property
    def block_types(self) -> str:
        """The resolved layer string: one S or A per block, n_steps of them."""
        return resolve_layers(self.layers, self.n_steps)

    def attention_config(self) -> GPTConfig:
        """The GPT settings of one A block: the SPLM's width and context, ``attn_heads`` heads."""
        return GPTConfig(vocab_size=self.vocab_size, block_size=self.block_size, d_model=self.d_model,
                         n_layer=self.block_types.count("A"), n_head=self.attn_heads, mlp_ratio=self.mlp_ratio)


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
    """The SPLM family; implements :class:`~.protocols.OwnLM`, as the GPT baseline does."""

    def __init__(self, cfg: SPLMConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # tied with the read-out
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        self.xi_pool = make_pool(cfg.xi, cfg.d_model)  # 'mean' holds no state: vanilla checkpoints keep their keys
        self.potential = ScalarPotential(cfg.d_model, cfg.v_hidden, cfg.v_depth, cfg.v_init_scale)
        self.pair = (None if cfg.pair_force is None else
                     make_pair(cfg.pair_force, cfg.d_model, cfg.pair_hidden, cfg.pair_chunk, cfg.pair_init_scale))
        self.mass = Mass(cfg)
        if cfg.learn_gamma:  # γ = softplus(raw) stays positive while it learns
            self.gamma_raw = nn.Parameter(torch.tensor(inv_softplus(max(cfg.gamma, 1e-6))))
        else:  # a fixed γ is kept exactly, 0 included
            self.register_buffer("gamma_fixed", torch.tensor(float(cfg.gamma)))
        # One Block per A, in order; the S-steps all share V_θ.
        self.blocks = nn.ModuleList(Block(cfg.attention_config()) for _ in range(cfg.block_types.count("A")))
        self.blocks.apply(GPT._init)  # initialised as the GPT's own blocks are
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.final_norm else None

    @property
    def block_types(self) -> str:
        """The resolved layer string, one S or A per block (``SPLMConfig.layers``; '' resolves to all S)."""
        return self.config.block_types

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
        """ξ (B, T, d): the causal pool ``config.xi`` of the embeddings h0 (B, T, d); ξ_t sees h0_{≤t} only."""
        return self.xi_pool(h0)

    def force(self, xi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """f = -∇_h V_θ(ξ, h) [- ∇_h U_pair(h)], (B, T, d)."""
        # Keep the force differentiable whenever gradients are being taken (training, Jacobian probes).
        create_graph = torch.is_grad_enabled()
        if self.config.force == "closed_form":
            f = self.potential.force_closed_form(xi, h)
        else:
            f = self.potential.force_autograd(xi, h, create_graph=create_graph)
        return f if self.pair is None else f + self.pair.force(h, create_graph=create_graph)

    def step(self, xi: torch.Tensor, h: torch.Tensor, v: torch.Tensor, m: torch.Tensor,
             gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One S-block: a damped Euler–Lagrange step of (h, v), each (B, T, d)."""
        v = (v + self.config.dt * self.force(xi, h) / m) / (1 + self.config.dt * gamma)
        h = h + self.config.dt * v
        return (F.layer_norm(h, h.shape[-1:]) if self.config.ln_after_step else h), v

    def integrate(self, h0: torch.Tensor, idx: torch.Tensor, keep_states: bool = False):
        """Run the L blocks from h0; returns h_L and, if asked, (h, v) before the first and after every block."""
        xi, m, gamma = self.context_pool(h0), self.mass(idx), self.gamma  # ξ once, from the embeddings
        h, v = h0, torch.zeros_like(h0)
        states = [(h, v)] if keep_states else None
        attention = iter(self.blocks)
        for kind in self.block_types:
            if kind == "S":
                h, v = self.step(xi, h, v, m, gamma)
            else:  # not part of the flow: h moves, v passes through to the next S-step
                h = next(attention)(h)
            if keep_states:
                states.append((h, v))
        return h, states

    def readout_input(self, h_last: torch.Tensor) -> torch.Tensor:
        """What the tied read-out sees: h_L itself, or its LayerNorm with ``final_norm``."""
        return h_last if self.ln_f is None else self.ln_f(h_last)

    def depth_states(self, idx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """h_0 and h after every block (L+1 tensors (B, T, d)), and what the read-out sees."""
        h_last, states = self.integrate(self.embed(idx), idx, keep_states=True)
        return [h for h, _ in states], self.readout_input(h_last)

    def logits_from_embeddings(self, h0: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h, _ = self.integrate(h0, idx)
        return self.readout_input(h) @ self.wte.weight.T  # (B, T, V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.logits_from_embeddings(self.embed(idx), idx)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def physics(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Positions, velocities, mass, potential and energy before the first and after every block, for analysis.

        h, v: (L+1, B, T, d); potential, kinetic, energy: (L+1, B, T), energy = ½m‖v‖² + V_θ(ξ, h) (+ U_pair with
        PARF: the mean pair potential (1/t)Σ_{s<t} V_φ(h_t, h_s), also as ``pair_potential``). Per S-block i
        (n_S of them; A blocks carry no energy and are skipped): ``energy_before``, ``energy_after`` and
        ``energy_drift_per_block`` = after − before, each (n_S, B, T).
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
        out = {"h": h, "v": v, "mass": m_tok * torch.ones_like(potential[0]), "potential": potential,
               "kinetic": kinetic}
        if self.pair is not None:
            out["pair_potential"] = torch.stack([self.pair.energy(s[0]) for s in states])
            energy = energy + out["pair_potential"]
        s_blocks = [i for i, kind in enumerate(self.block_types) if kind == "S"]  # state i is before block i
        before, after = energy[s_blocks], energy[[i + 1 for i in s_blocks]]
        return {**out, "energy": energy, "energy_drift": energy[-1] - energy[0], "energy_before": before,
                "energy_after": after, "energy_drift_per_block": after - before}

    @torch.no_grad()
    def learned_constants(self) -> dict[str, float]:
        m = self.mass(torch.zeros(1, 1, dtype=torch.long, device=self.wte.weight.device))
        return {"gamma": float(self.gamma), "mass" if self.config.mass == "global" else "mass_token0": float(m.mean()),
                "dt": self.config.dt}

    def config_dict(self) -> dict:
        return asdict(self.config)
