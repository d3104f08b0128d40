"""The SPLM family in one class: ξ pools, the PARF pair force, S/A hybrids and per-S-block physics.

Every member passes the causal probe and each leaky variant fails it; the degenerate members equal the models they
reduce to (all-S: the vanilla SPLM, all-A: the GPT); the pair force against its brute-force definition; the new
settings round-trip through checkpoints, resume exactly and train from the command line; the per-block energy drift
against the semi-implicit Euler step's leading-order error.
"""
import dataclasses

import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.cli import main
from lagrangian_lens.data.corpora import read_corpus
from lagrangian_lens.data.tokenizers import build_tokenizer
from lagrangian_lens.errors import ConfigError
from lagrangian_lens.models.own.causality import probe_model
from lagrangian_lens.models.own.gpt import GPT, GPTConfig, n_params
from lagrangian_lens.models.own.pair import PairPotential, make_pair
from lagrangian_lens.models.own.splm import SPLM, SPLMConfig
from lagrangian_lens.models.own.xi import ContextPool
from lagrangian_lens.training import TrainConfig, load_checkpoint
from lagrangian_lens.training.checkpoint import read_meta, save_checkpoint

from .test_training import straight_and_resumed

# A live pair potential (its default init is flat), so the probe has a pair force to examine.
CFG = dict(vocab_size=40, block_size=32, d_model=16, n_steps=4, v_hidden=32, v_init_scale=0.5, pair_init_scale=0.5)
XI_SPECS = ("mean", "kema:2", "legt:4", "legt-dt:4", "s4d:4")
# The vanilla SPLM's state_dict keys before the family existed: its checkpoints must keep loading.
VANILLA_KEYS = {"wte.weight", "wpe.weight", "potential.hidden.0.weight", "potential.hidden.0.bias",
                "potential.hidden.1.weight", "potential.hidden.1.bias", "potential.out.weight", "mass.raw", "gamma_raw"}


def splm(seed: int = 0, **options) -> SPLM:
    torch.manual_seed(seed)
    return SPLM(SPLMConfig(**{**CFG, **options}))


def ids(batch: int = 2, T: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(CFG["vocab_size"], (batch, T), generator=torch.Generator().manual_seed(seed))


# --- causality -------------------------------------------------------------------------------------------------------

MEMBERS = [{"xi": spec} for spec in XI_SPECS] + [
    {"pair_force": "structural", "pair_chunk": 5}, {"pair_force": "mlp", "pair_chunk": 5},
    {"layers": "SASA"}, {"layers": "AASS"}, {"layers": "SSAA", "final_norm": True},
    {"layers": "SASA", "ln_after_step": True}, {"xi": "kema:2", "pair_force": "mlp", "ln_after_step": True},
    {"xi": "legt:4", "pair_force": "structural", "force": "closed_form", "layers": "ASSA"},
]


@pytest.mark.parametrize("options", MEMBERS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_member_passes_the_causal_probe(options):
    model = splm(**options)
    result = probe_model(model, 40)
    assert result.passed and set(result.tests) == {"perturbation", "jacobian"}
    # FFT pools are causal up to float32 round-off (~1e-8 here), far under the probe's tolerance.
    assert result.max_violation <= 1e-7
    with torch.no_grad():  # the probe had something to catch: the first token moves the last logits above its tol
        changed = ids()
        changed[:, 0] = (changed[:, 0] + 1) % 40
        assert (model(changed)[0][:, -1] - model(ids())[0][:, -1]).abs().max() > 1e-5


class Reversed(ContextPool):
    """Leak: a pool run backwards in time (flip, pool, flip back), so ξ_t summarises tokens t..T-1."""

    def __init__(self, inner: ContextPool):
        super().__init__(f"reversed {inner.spec}", inner.d_model)
        self.inner = inner

    def parallel(self, x):
        return self.inner(x.flip(1)).flip(1)


class XiFromCurrentH(SPLM):
    """Leak: ξ pooled from the current h inside the force, without the ξ-pool detach point, so ∇_h runs through ξ
    and token t feels ∂V(ξ_s, h_s)/∂ξ_s · ∂ξ_s/∂h_t from every later s."""

    def force(self, xi, h):
        with torch.enable_grad():
            h_var = h.detach().requires_grad_(True) if not h.requires_grad else h.view_as(h)
            grad, = torch.autograd.grad(self.potential(self.context_pool(h_var), h_var).sum(), h_var,
                                        create_graph=torch.is_grad_enabled())
        return -grad


def assert_leaks(result, forward: bool = True):
    assert not result.passed and "sees the future" in str(result)
    t_prime, t = result.worst_pair
    assert t_prime < t
    if forward:  # the leak reaches the logits themselves, not only their gradients
        assert result.tests["perturbation"]["max_violation"] > 1e-4


@pytest.mark.parametrize("spec", ["mean", "kema:4"])
def test_a_reversed_time_pool_fails_the_probe(spec):
    model = splm(xi=spec)
    model.xi_pool = Reversed(model.xi_pool)
    assert_leaks(probe_model(model, 40))


@pytest.mark.parametrize("spec", ["mean", "kema:4"])
def test_xi_pooled_from_the_current_h_without_the_detach_fails_the_probe(spec):
    torch.manual_seed(0)
    assert_leaks(probe_model(XiFromCurrentH(SPLMConfig(**CFG, xi=spec)), 40))


@pytest.mark.parametrize("form", ["structural", "mlp"])
def test_a_pair_source_without_the_detach_fails_the_probe(form):
    # Without sg(h_s) the force -∇_h Σ_t U_t also hands token s the source-side terms Σ_{t>s} ∂V_φ(h_t, h_s)/∂h_s:
    # a force from later tokens, so the earlier logits move in the forward pass (the perturbation test sees it).
    model = splm(pair_force=form, pair_chunk=5)
    model.pair.source = lambda h: h
    # The structural closed form writes the force per query (∇_{h_t} only) and stays causal even so; its
    # autograd form differentiates the whole sum, as the MLP pair does, and leaks.
    model.pair.force = model.pair.force_autograd
    assert_leaks(probe_model(model, 40))


# --- the degenerate members -------------------------------------------------------------------------------------------

def test_all_s_layers_are_the_vanilla_splm_and_mean_pool_keeps_the_old_keys():
    vanilla = splm(n_steps=4, v_depth=2)
    assert set(vanilla.state_dict()) == VANILLA_KEYS
    member = SPLM(SPLMConfig(**CFG, layers="SSSS"))
    member.load_state_dict(vanilla.state_dict())  # strict: the same parameters, nothing more
    assert member.block_types == vanilla.block_types == "SSSS"
    assert_close(member(ids())[0], vanilla(ids())[0])


def test_all_a_layers_with_final_norm_are_the_gpt():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=32, d_model=16, n_layer=4, n_head=2))
    member = splm(layers="AAAA", attn_heads=2, final_norm=True, seed=1)
    for name in ("wte", "wpe", "blocks", "ln_f"):
        getattr(member, name).load_state_dict(getattr(gpt, name).state_dict())
    assert_close(member(ids())[0], gpt(ids())[0])
    (states, final), (gpt_states, gpt_final) = member.depth_states(ids()), gpt.depth_states(ids())
    assert len(states) == 5
    assert_close(torch.stack(states), torch.stack(gpt_states))
    assert_close(final, gpt_final)


def test_an_a_block_moves_h_and_passes_v_through():
    p = splm(layers="SASA").physics(ids())
    assert_close(p["v"][2], p["v"][1])  # block 1 is A
    assert_close(p["v"][4], p["v"][3])  # block 3 is A
    assert (p["h"][2] - p["h"][1]).abs().max() > 1e-3


# --- the pair force ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["structural", "mlp"])
def test_pair_energy_and_force_match_the_brute_force_definition(form):
    torch.manual_seed(0)
    pair, h = make_pair(form, 8, 16, chunk=3, init_scale=0.5), torch.randn(2, 7, 8)
    # U_t = (1/t) Σ_{s<t} V_φ(h_t, h_s), by a loop over pairs; U_0 = 0.
    brute = torch.stack([sum((pair.pair(h[:, t:t + 1], h[:, s:s + 1])[:, 0, 0] for s in range(t)),
                             torch.zeros(2)) / max(t, 1) for t in range(7)], dim=1)
    assert_close(pair.energy(h), brute)
    # f_t = -∇_{h_t} U_t with the sources held fixed, one token at a time.
    expected = torch.zeros_like(h)
    for t in range(1, 7):
        h_t = h[:, t:t + 1].clone().requires_grad_(True)
        grad, = torch.autograd.grad(pair.pair(h_t, h[:, :t]).sum() / t, h_t)
        expected[:, t] = -grad[:, 0]
    assert_close(pair.force(h, create_graph=False), expected)
    assert_close(PairPotential.force_autograd(pair, h, False), expected)  # the autograd form, for structural too
    wide = make_pair(form, 8, 16, chunk=64, init_scale=0.5)
    wide.load_state_dict(pair.state_dict())
    assert_close(wide.force(h, create_graph=False), expected)  # the chunking changes nothing


def test_structural_closed_form_trains_as_its_autograd_form():
    closed = splm(pair_force="structural", pair_chunk=5)
    auto = splm(pair_force="structural", pair_chunk=5)
    auto.pair.force = auto.pair.force_autograd
    la, lc = auto(ids(), ids())[1], closed(ids(), ids())[1]
    assert_close(la, lc)
    for a, c in zip(torch.autograd.grad(la, list(auto.parameters())), torch.autograd.grad(lc, list(closed.parameters()))):
        assert_close(a, c, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("form", ["structural", "mlp"])
def test_parf_starts_as_the_vanilla_splm_and_its_force_is_live(form):
    vanilla = splm()
    for scale, same in ((0.0, True), (0.5, False)):  # the default flat init, then a live pair potential
        parf = splm(pair_force=form, pair_init_scale=scale)
        parf.load_state_dict(vanilla.state_dict(), strict=False)
        gap = (parf(ids())[0] - vanilla(ids())[0]).abs().max()
        assert (gap == 0) if same else (gap > 1e-3)
    assert parf.pair.force(torch.randn(2, 5, 16), create_graph=False)[:, 0].abs().max() == 0  # t = 0: none


# --- physics ----------------------------------------------------------------------------------------------------------

def conservative(dt: float) -> SPLM:
    return splm(n_steps=6, dt=dt, gamma=0.0, learn_gamma=False)


def test_per_block_energy_drift_is_the_euler_steps_second_order_error():
    drifts = {}
    for dt in (0.2, 0.1, 0.05):
        model, x = conservative(dt), ids(T=10)
        p = model.physics(x)
        assert p["energy_drift_per_block"].shape == (6, 2, 10)
        assert_close(p["energy_drift_per_block"], p["energy"][1:] - p["energy"][:-1])
        # From v = 0, one step gives ½dt²‖f‖²/m of kinetic energy and lowers V by dt²‖f‖²/m + O(dt⁴): the first
        # block's drift is -dt²‖f_0‖²/(2m) to relative O(dt²) (measured ≤ 1e-3 here, float32 round-off included).
        h0 = model.embed(x)
        f0 = model.force(model.context_pool(h0), h0).detach()
        assert_close(p["energy_drift_per_block"][0], -dt ** 2 * (f0 * f0).sum(-1) / (2 * p["mass"]), rtol=1e-2,
                     atol=0)
        drifts[dt] = float(p["energy_drift_per_block"].abs().max())
        # Semi-implicit Euler makes an O(dt²) energy error per step: tiny against E here (|E| ≈ 0.1).
        assert drifts[dt] < 0.02 * float(p["energy"].abs().min())
    assert drifts[0.2] / drifts[0.1] == pytest.approx(4.0, rel=0.05)  # second order: halving dt quarters it
    assert drifts[0.1] / drifts[0.05] == pytest.approx(4.0, rel=0.05)


def test_hybrid_physics_reports_every_s_block_and_skips_the_a_blocks():
    model = splm(layers="SASAS", n_steps=5, pair_force="mlp")
    p = model.physics(ids(batch=3, T=9))
    assert model.block_types == "SASAS"
    for key in ("energy_before", "energy_after", "energy_drift_per_block"):
        assert p[key].shape == (3, 3, 9)
    assert_close(p["energy_before"], p["energy"][[0, 2, 4]])  # the state before S-blocks 0, 2 and 4
    assert_close(p["energy_after"], p["energy"][[1, 3, 5]])
    assert_close(p["energy"], p["kinetic"] + p["potential"] + p["pair_potential"])
    assert_close(p["pair_potential"][:, :, 0], torch.zeros(6, 3))  # the first token has no earlier one
    assert p["h"].shape == (6, 3, 9, 16)
    assert "pair_potential" not in splm().physics(ids())
    assert splm(layers="AAAA").physics(ids())["energy_drift_per_block"].shape == (0, 2, 12)  # no S-block, no drift


# --- settings, checkpoints, training ----------------------------------------------------------------------------------

@pytest.mark.parametrize("options, field, message", [
    ({"layers": "SSXA"}, "layers", "may hold only S"),
    ({"layers": "SSA"}, "layers", "has 3 blocks but n_steps is 4"),
    ({"xi": "kema"}, "xi", "needs an order"),
    ({"pair_force": "coulomb"}, "pair_force", "'coulomb' is not one of"),
    ({"layers": "SSAA", "attn_heads": 3}, "attn_heads", "3 does not divide d_model 16"),
    ({"pair_chunk": 0}, "pair_chunk", "must be >= 1"),
])
def test_bad_settings_are_one_line_config_errors(options, field, message):
    with pytest.raises(ConfigError, match=f"^{field}: .*{message}") as info:
        SPLMConfig(**{**CFG, **options})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("options, field", [({"layers": "SSAS"}, "layers"), ({"xi": "s4d:0"}, "xi"),
                                            ({"pair_force": "yes"}, "pair_force"),
                                            ({"layers": "SA", "n_steps": 2, "n_head": 5}, "n_head")])
def test_train_config_checks_the_family_settings_before_any_work(options, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        TrainConfig(**{"n_steps": 3, **options})


def test_train_config_passes_the_family_settings_and_the_matched_gpt_counts_them():
    cfg = TrainConfig(d_model=16, n_steps=8, v_hidden=1, v_depth=1, xi="kema:8", pair_force="none",
                      layers="AAAAAAAA", final_norm=True, n_head=2, block_size=32)
    splm_cfg = cfg.splm_config(40)
    assert (splm_cfg.xi, splm_cfg.pair_force, splm_cfg.layers, splm_cfg.attn_heads, splm_cfg.final_norm) == (
        "kema:8", None, "AAAAAAAA", 2, True)
    assert TrainConfig(pair_force="mlp").splm_config(40).pair_force == "mlp"
    # Eight GPT blocks (3280 parameters each at width 16), a one-unit potential (36 with mass and γ) and the pool:
    # kema:8's 2072 parameters are 0.63 of a block, so the closest GPT has nine blocks; with the mean pool, eight.
    assert n_params(SPLM(splm_cfg).xi_pool) == 2072 and n_params(SPLM(splm_cfg).blocks[0]) == 3280
    assert dataclasses.replace(cfg, arch="gpt").gpt_config(40).n_layer == 9
    assert dataclasses.replace(cfg, arch="gpt", xi="mean").gpt_config(40).n_layer == 8


def test_the_layer_string_pool_and_pair_round_trip_through_a_checkpoint(tmp_path):
    model = splm(xi="kema:4", pair_force="mlp", layers="SAAS", final_norm=True)
    with torch.no_grad():  # weights away from their init, so a part that failed to load would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    (tmp_path / "tokenizer").mkdir()
    build_tokenizer("char", "abcdefghij").save(tmp_path / "tokenizer")
    meta = {"arch": "splm", "model_config": dataclasses.asdict(model.config), "train_config": {}, "step": 1,
            "tokenizer": "../tokenizer"}
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, model, optimizer, {"torch": torch.get_rng_state()}, meta)
    loaded, _, _ = load_checkpoint(tmp_path, "cpu")
    assert loaded.config == model.config and loaded.block_types == "SAAS"
    assert loaded.config.xi == "kema:4" and loaded.config.pair_force == "mlp"
    assert_close(loaded(ids())[0], model.eval()(ids())[0], rtol=0, atol=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(read_corpus("tiny-shakespeare")[:20_000])
    return str(path)


TINY = dict(d_model=16, v_hidden=32, block_size=16, batch_size=8, eval_batches=2, warmup_steps=5, device="cpu",
            lr=3e-3, n_steps=3, layers="SAS", xi="kema:4", pair_force="mlp")


def test_a_hybrid_kema_parf_member_resumes_exactly_after_an_interrupt(corpus, tmp_path, monkeypatch):
    base = dict(corpus=corpus, max_steps=12, eval_every=6, checkpoint_every=6, **TINY)
    straight, resumed = straight_and_resumed(base, tmp_path, monkeypatch, interrupt_at=9, checkpoint=6)
    assert [resumed[s] for s in range(7, 13)] == [straight[s] for s in range(7, 13)]
    model, _, meta = load_checkpoint(tmp_path / "resumed", "cpu")
    assert model.block_types == "SAS" and meta["model_config"]["xi"] == "kema:4"


def test_the_train_command_builds_a_hybrid_kema_parf_member(corpus, tmp_path):
    out = tmp_path / "cli"
    args = ["train", "--arch", "splm", "--xi", "kema:4", "--pair-force", "mlp", "--layers", "SSAAAASS",
            "--corpus", corpus, "--d-model", "16", "--v-hidden", "16", "--block-size", "16", "--batch-size", "4",
            "--max-steps", "2", "--eval-every", "2", "--eval-batches", "1", "--device", "cpu", "--out", str(out),
            "--quiet"]
    assert main(args) == 0
    config = read_meta(out)["model_config"]
    assert (config["xi"], config["pair_force"], config["layers"], config["n_steps"]) == ("kema:4", "mlp",
                                                                                         "SSAAAASS", 8)
