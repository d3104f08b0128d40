"""The SPLM integrator against known answers, its two force implementations, and the matched GPT."""
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lagrangian_lens.models.own.gpt import GPT, matched_gpt_config, n_params
from lagrangian_lens.models.own.splm import SPLM, ScalarPotential, SPLMConfig


class Harmonic(nn.Module):
    """V = ½k‖h‖², whatever the context: the integrator's textbook case."""

    force_autograd = ScalarPotential.force_autograd

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, xi, h):
        return 0.5 * self.k * (h * h).sum(-1)


def harmonic_splm(dt, gamma, n_steps, k=1.0, mass=1.0):
    cfg = SPLMConfig(vocab_size=11, block_size=8, d_model=4, n_steps=n_steps, dt=dt, gamma=gamma, learn_gamma=False,
                     mass_init=mass)
    model = SPLM(cfg).double()
    model.potential = Harmonic(k)
    return model


def test_one_step_matches_the_closed_form_update():
    model = harmonic_splm(dt=0.3, gamma=0.7, n_steps=1, k=2.0, mass=1.5)
    ids = torch.tensor([[1, 2, 3]])
    h0 = model.embed(ids)
    v1 = 0.3 * (-2.0 * h0) / 1.5 / (1 + 0.3 * 0.7)
    h1, _ = model.integrate(h0, ids)
    assert_close(h1, h0 + 0.3 * v1)


def test_undamped_energy_is_conserved_to_first_order_in_dt():
    errors = []
    for dt in (0.02, 0.01, 0.005):
        model = harmonic_splm(dt=dt, gamma=0.0, n_steps=int(round(10 / dt)))
        energy = model.physics(torch.tensor([[1, 4, 7, 2]]))["energy"]  # (L+1, B, T)
        errors.append(float(((energy - energy[0]).abs() / energy[0]).max()))
    assert errors[0] < 0.02
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.05)  # semi-implicit Euler is first order
    assert errors[1] / errors[2] == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("gamma", [0.2, 1.0, 3.0])
def test_damped_energy_decreases_monotonically(gamma):
    model = harmonic_splm(dt=0.05, gamma=gamma, n_steps=300)
    energy = model.physics(torch.tensor([[3, 1, 4, 1, 5]]))["energy"]
    assert (energy[1:] - energy[:-1] <= 1e-12).all()
    assert (energy[-1] < 0.9 * energy[0]).all()


@pytest.mark.parametrize("ln_after_step", [False, True])
def test_closed_form_force_equals_autograd_force_and_its_gradients(ln_after_step):
    torch.manual_seed(0)
    cfg = SPLMConfig(vocab_size=50, block_size=16, d_model=16, n_steps=3, v_hidden=32, v_depth=2,
                     v_init_scale=0.5, ln_after_step=ln_after_step)
    auto, closed = SPLM(cfg), SPLM(SPLMConfig(**{**cfg.__dict__, "force": "closed_form"}))
    closed.load_state_dict(auto.state_dict())
    ids = torch.randint(50, (2, 12))
    h0 = auto.embed(ids)
    xi = auto.context_pool(h0)
    assert_close(auto.potential.force_closed_form(xi, h0), auto.potential.force_autograd(xi, h0, False))
    la, lc = auto(ids, ids)[1], closed(ids, ids)[1]
    assert_close(la, lc)
    ga = torch.autograd.grad(la, list(auto.parameters()), allow_unused=True)
    gc = torch.autograd.grad(lc, list(closed.parameters()), allow_unused=True)
    for a, c in zip(ga, gc):
        if a is not None or c is not None:
            assert_close(a, c, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mass", ["global", "token", "logfreq"])
def test_physics_exposes_states_mass_and_energy(mass):
    torch.manual_seed(0)
    model = SPLM(SPLMConfig(vocab_size=30, block_size=16, d_model=8, n_steps=4, v_hidden=16, mass=mass))
    if mass == "logfreq":
        model.mass.set_token_frequencies(torch.arange(30.0))
    p = model.physics(torch.randint(30, (2, 6)))
    assert p["h"].shape == (5, 2, 6, 8) and p["v"].shape == (5, 2, 6, 8)
    assert (p["mass"] > 0).all() and p["mass"].shape == (2, 6)
    assert_close(p["energy"], p["kinetic"] + p["potential"])
    assert_close(p["v"][0], torch.zeros_like(p["v"][0]))
    const = model.learned_constants()
    assert const["gamma"] == pytest.approx(0.5, rel=1e-5) and const["dt"] == 1.0


def test_matched_gpt_is_the_closest_parameter_count():
    splm = SPLM(SPLMConfig(vocab_size=65, block_size=128, d_model=128, n_steps=8, v_hidden=512))
    cfg = matched_gpt_config(n_params(splm), vocab_size=65, block_size=128, d_model=128)
    counts = {L: n_params(GPT(type(cfg)(**{**cfg.__dict__, "n_layer": L}))) for L in (cfg.n_layer - 1, cfg.n_layer,
                                                                                      cfg.n_layer + 1) if L > 0}
    best = min(counts, key=lambda L: abs(counts[L] - n_params(splm)))
    assert best == cfg.n_layer
    assert abs(counts[best] - n_params(splm)) / n_params(splm) < 0.25


def test_sequence_longer_than_the_block_is_refused():
    model = SPLM(SPLMConfig(vocab_size=10, block_size=4, d_model=4, n_steps=1, v_hidden=4))
    with pytest.raises(ValueError, match="exceeds block_size 4"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_inverse_softplus_roundtrip():
    from lagrangian_lens.models.own.splm import inv_softplus

    for y in (1e-3, 0.5, 3.0):
        assert math.log1p(math.exp(inv_softplus(y))) == pytest.approx(y)


@pytest.mark.parametrize("arch", ["splm", "gpt"])
def test_own_models_give_depth_trajectories_that_the_mechanics_accept(arch):
    from lagrangian_lens.analysis.geometry import paths_from_trajectories
    from lagrangian_lens.analysis.stp import analyse_stp
    from lagrangian_lens.models.own.gpt import GPTConfig
    from lagrangian_lens.trajectories.own import own_model_trajectories

    torch.manual_seed(0)
    model = (SPLM(SPLMConfig(vocab_size=30, block_size=16, d_model=8, n_steps=4, v_hidden=16, v_init_scale=0.5))
             if arch == "splm" else GPT(GPTConfig(vocab_size=30, block_size=16, d_model=8, n_layer=3, n_head=2)))
    seqs = [[1, 5, 7, 2, 9, 3], [4, 4, 8, 1, 2, 6, 7]]
    trs = own_model_trajectories(model, seqs)
    n_blocks = 4 if arch == "splm" else 3
    assert trs[0].sites == ("embed", *(f"block.{l}" for l in range(n_blocks)), "final")
    logits = model(torch.tensor([seqs[1]]))[0][0, :-1]
    assert_close(trs[1].logprobs, torch.log_softmax(logits, -1).gather(-1, torch.tensor(seqs[1][1:])[:, None])[:, 0])
    if arch == "splm":  # the read-out sees h_L directly
        assert_close(trs[0].at("final"), trs[0].at(f"block.{n_blocks - 1}"))
    paths = paths_from_trajectories(trs, "depth", None, skip=0)
    metrics, _ = analyse_stp(paths, n_permutations=10)
    assert metrics["n_triplets"] == (5 + 6) * (n_blocks + 1 - 2)  # embed + blocks per token, final left out


def test_splm_and_gpt_implement_the_own_lm_protocol_and_other_models_are_refused():
    from lagrangian_lens.models.own.gpt import GPTConfig
    from lagrangian_lens.models.own.protocols import OwnLM
    from lagrangian_lens.trajectories.own import own_model_trajectories

    from .conftest import tiny_model

    torch.manual_seed(0)
    splm = SPLM(SPLMConfig(vocab_size=30, block_size=16, d_model=8, n_steps=3, v_hidden=16, v_init_scale=0.5))
    gpt = GPT(GPTConfig(vocab_size=30, block_size=16, d_model=8, n_layer=2, n_head=2))
    ids = torch.tensor([[1, 5, 7, 2]])
    for model in (splm, gpt):
        assert isinstance(model, OwnLM)
        states, final = model.depth_states(ids)
        assert len(states) == (4 if model is splm else 3)  # L+1: embed, then every step or block
        assert_close(states[0], model.embed(ids))
        assert_close(final @ model.wte.weight.T, model(ids)[0])  # the final state is what the read-out sees
    h_last, kept = splm.integrate(splm.embed(ids), ids, keep_states=True)
    assert_close(splm.depth_states(ids)[0][2], kept[2][0])
    with pytest.raises(TypeError, match="lacks embed, logits_from_embeddings, depth_states"):
        own_model_trajectories(tiny_model("llama"), [[1, 2, 3]])
