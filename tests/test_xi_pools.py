"""The SPLM's context pools ξ: parallel forms against their recurrences, kernels against the state recurrence,
causality, the documented states at T = 1, spec parsing, and known answers (means, windows, constants)."""
import copy
import math

import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.errors import ConfigError
from lagrangian_lens.models.own.xi import (
    ACCEPTED,
    LEGT_WINDOW,
    XI_KINDS,
    ContextPool,
    bilinear,
    kema_timescales,
    legt_matrices,
    make_pool,
    parse_xi,
)

SPECS = ["mean", "kema:4", "legt:16", "legt-dt:16", "s4d:16"]
D = 8


def pool_for(spec: str, perturb: bool = True, dtype=torch.float32, seed: int = 0) -> ContextPool:
    """A pool of width D; with ``perturb``, every learnable parameter moved off its initial value."""
    torch.manual_seed(seed)
    pool = make_pool(spec, D).to(dtype)
    if perturb:
        with torch.no_grad():
            for p in pool.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return pool


def inputs(T: int, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- spec parsing ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, parsed", [("mean", ("mean", None)), ("kema:4", ("kema", 4)), ("legt:16", ("legt", 16)),
                                          ("legt-dt:16", ("legt-dt", 16)), ("s4d:1", ("s4d", 1))])
def test_parse_xi_accepts_the_five_forms(spec, parsed):
    assert parse_xi(spec) == parsed


@pytest.mark.parametrize("spec", ["kema", "kema:0", "foo:3", "legt:x", "mean:2", "s4d:", "legt:-1", "KEMA:4", ""])
def test_parse_xi_rejects_bad_specs_in_one_line_naming_the_spec(spec):
    with pytest.raises(ValueError) as caught:
        parse_xi(spec)
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError) and caught.value.field == "xi"
    assert "\n" not in message and repr(spec) in message and message.endswith(f"accepted: {ACCEPTED}")


def test_parse_xi_message_for_a_missing_order():
    with pytest.raises(ValueError) as caught:
        parse_xi("kema")
    assert str(caught.value) == ("xi: 'kema' needs an order: kema:K (K >= 1); "
                                 "accepted: mean, kema:K, legt:N, legt-dt:N, s4d:N")


@pytest.mark.parametrize("spec", SPECS)
def test_make_pool_keeps_its_spec_and_maps_width_d_to_width_d(spec):
    pool = make_pool(spec, D)
    assert parse_xi(spec)[0] in XI_KINDS
    assert isinstance(pool, ContextPool) and pool.spec == spec
    assert pool(inputs(5)).shape == (2, 5, D)


def test_make_pool_checks_its_settings_and_the_input_width():
    with pytest.raises(ConfigError, match="d_model"):
        make_pool("kema:2", 0)
    with pytest.raises(ConfigError, match=r"d_model: .*\(B, T >= 1, 8\).*\(2, 5, 3\)"):
        make_pool("legt:4", D)(torch.zeros(2, 5, 3))


# --- the parallel forms equal their recurrences --------------------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("perturb", [False, True], ids=["init", "perturbed"])
@pytest.mark.parametrize("spec", SPECS)
def test_forward_matches_the_reference_recurrence(spec, perturb, dtype, tol):
    pool, x = pool_for(spec, perturb, dtype), inputs(37, dtype)
    with torch.no_grad():
        assert_close(pool(x), pool.reference(x), atol=tol, rtol=tol)


@pytest.mark.parametrize("spec", SPECS)
def test_forward_at_the_longest_context_in_float32_matches_a_float64_recurrence(spec):
    """T = 512, the ladder's longest context: the float32 FFT form against the recurrence run in float64."""
    pool, x = pool_for(spec), inputs(512)
    with torch.no_grad():
        exact = copy.deepcopy(pool).double().reference(x.double())
        assert_close(pool(x), exact.float(), atol=1e-4, rtol=1e-4)


# --- the kernels equal the state recurrence -------------------------------------------------------------------------

def test_legt_matrices_follow_the_lmu_formula():
    A, B = legt_matrices(3)
    assert torch.equal(A, torch.tensor([[-1., -1., -1.], [3., -3., -3.], [-5., 5., -5.]], dtype=torch.float64))
    assert torch.equal(B, torch.tensor([1., -3., 5.], dtype=torch.float64))
    A, B = legt_matrices(9)
    assert_close(A[:, 0], -B)  # the constant input's fixed point is e_0
    assert torch.linalg.eigvals(A).real.max() < 0  # stable


@pytest.mark.parametrize("spec", ["legt:5", "legt-dt:5"])
def test_legt_discretisation_and_kernel_match_the_state_recurrence(spec):
    pool, T = pool_for(spec, dtype=torch.float64), 300
    A, B = legt_matrices(5)
    dt = torch.exp(pool.log_dt) if spec == "legt-dt:5" else torch.tensor([1 / LEGT_WINDOW], dtype=torch.float64)
    Abar, Bbar = pool.discretised()
    eye = torch.eye(5, dtype=torch.float64)
    for i, step in enumerate(dt):  # Tustin, written out with an explicit inverse
        inverse = torch.linalg.inv(eye - step / 2 * A)
        assert_close(Abar[i], inverse @ (eye + step / 2 * A))
        assert_close(Bbar[i], inverse @ (step * B))
    with torch.no_grad():
        kernel = pool.kernel(T)  # (d or 1, T, N)
    state, rows = torch.zeros_like(Bbar), []
    for t in range(T):  # the state's response to a unit impulse at t = 0
        state = (Abar @ state[..., None])[..., 0] + (Bbar if t == 0 else 0)
        rows.append(state)
    assert_close(kernel, torch.stack(rows, dim=-2), atol=1e-12, rtol=1e-10)


def test_s4d_kernel_matches_the_state_recurrence():
    pool, T = pool_for("s4d:6", dtype=torch.float64), 300
    A = torch.complex(-pool.log_neg_re.exp(), pool.imag).detach()  # (d, N)
    Abar = torch.exp(pool.log_dt.exp().detach()[:, None] * A)
    Bbar, C = (Abar - 1) / A, torch.view_as_complex(pool.C.detach())
    state, rows = torch.zeros_like(A), []
    for t in range(T):
        state = Abar * state + (Bbar if t == 0 else 0)
        rows.append(2 * (C * state).sum(-1).real)
    with torch.no_grad():
        assert_close(pool.kernel(T), torch.stack(rows), atol=1e-12, rtol=1e-10)


def test_s4d_starts_from_s4d_lin():
    pool = make_pool("s4d:4", D)
    assert_close(pool.A, torch.complex(torch.full((D, 4), -0.5), math.pi * torch.arange(4.0).repeat(D, 1)))
    dt = pool.log_dt.exp()
    assert ((dt >= 1e-3) & (dt <= 1e-1)).all()


# --- causality -------------------------------------------------------------------------------------------------------

# FFT round-off in float32 is ~1e-7 of the signal, amplified up to θ = 128 times at the first positions by LegT's
# normaliser (n_0 = B̄_0 ≈ 1/θ); a causal leak would move the outputs by O(1).
CAUSAL_TOL = [(torch.float32, 1e-5), (torch.float64, 1e-12)]


@pytest.mark.parametrize("dtype, tol", CAUSAL_TOL)
@pytest.mark.parametrize("spec", SPECS)
def test_changing_a_later_token_leaves_earlier_outputs_unchanged(spec, dtype, tol):
    pool, x, t0 = pool_for(spec, dtype=dtype), inputs(37, dtype), 20
    changed = x.clone()
    changed[:, t0] += 5.0
    with torch.no_grad():
        before, after = pool(x), pool(changed)
    assert_close(after[:, :t0], before[:, :t0], atol=tol, rtol=0)
    assert (after[:, t0] - before[:, t0]).abs().max() > 1e-2  # the change does reach position t0


@pytest.mark.parametrize("dtype, tol", CAUSAL_TOL)
@pytest.mark.parametrize("spec", SPECS)
def test_an_output_has_no_gradient_to_later_tokens(spec, dtype, tol):
    pool, t_out = pool_for(spec, dtype=dtype), 15
    x = inputs(37, dtype).requires_grad_(True)
    pool(x)[:, t_out].sum().backward()
    assert_close(x.grad[:, t_out + 1:], torch.zeros_like(x.grad[:, t_out + 1:]), atol=tol, rtol=0)
    assert x.grad[:, t_out].abs().max() > 1e-3


# --- the documented state at T = 1 ----------------------------------------------------------------------------------

def documented_first_output(pool: ContextPool, x0: torch.Tensor) -> torch.Tensor:
    """ξ_0 for a (B, d) first token, as each pool's docstring states it."""
    kind = parse_xi(pool.spec)[0]
    if kind == "mean":
        return x0
    if kind == "kema":
        blocks = pool.mix.weight.view(D, pool.order, D).sum(1)  # Σ_k W_k
        return x0 @ blocks.T + pool.mix.bias
    if kind == "s4d":
        _, Bbar, C = pool.discretised()
        return pool.mix(2 * (C * Bbar).sum(-1).real * x0)  # K_0 ⊙ x_0
    _, Bbar = pool.discretised()
    return pool.mix((pool.readout * Bbar).sum(-1) / Bbar[:, 0] * x0)


@pytest.mark.parametrize("perturb", [False, True], ids=["init", "perturbed"])
@pytest.mark.parametrize("spec", SPECS)
def test_a_single_token_gives_the_documented_initial_state(spec, perturb):
    pool, x = pool_for(spec, perturb), inputs(1)
    with torch.no_grad():
        assert_close(pool(x)[:, 0], documented_first_output(pool, x[:, 0]))
        if not perturb and parse_xi(spec)[0] != "s4d":  # mean, kema and LegT start as weighted means: ξ_0 = x_0
            assert_close(pool(x), x)


def test_mean_is_the_cumulative_mean_with_an_empty_state_dict():
    pool, x = make_pool("mean", D), inputs(37)
    counts = torch.arange(1, 38, dtype=x.dtype)
    assert torch.equal(pool(x), x.cumsum(1) / counts[:, None])
    assert pool.state_dict() == {} and list(pool.parameters()) == [] and list(pool.buffers()) == []


# --- known answers -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["mean", "kema:3", "legt:16", "legt-dt:16"])
def test_a_constant_input_maps_to_itself(spec):
    """mean, kema and LegT normalise to weighted means: with their read-outs at init, a constant is a fixed point,
    whatever the decays or windows (perturbed here)."""
    pool = make_pool(spec, D).double()
    with torch.no_grad():
        for name, p in pool.named_parameters():
            if name in ("log_rate", "log_dt"):
                p.add_(torch.randn_like(p))
    x = torch.randn(2, 1, D, dtype=torch.float64).expand(2, 300, D)
    with torch.no_grad():
        assert_close(pool(x), x)


def test_kema_starts_with_log_uniform_timescales_and_the_mean_of_its_channels():
    pool = make_pool("kema:4", D)
    tau = 2 * 128 ** ((torch.arange(4) + 0.5) / 4)  # centres of 4 equal log-bins of [2, 256]
    assert_close(kema_timescales(4).float(), tau)
    assert_close(pool.decay, 1 - 1 / tau)
    assert_close(pool.mix.weight, torch.eye(D).repeat(1, 4) / 4)
    x = inputs(50)
    with torch.no_grad():  # the mean of the K normalised EMAs, each by its own recurrence
        expected = torch.zeros_like(x)
        for lam in pool.decay:
            m, n = torch.zeros_like(x[:, 0]), 0.0
            for t in range(50):
                m, n = lam * m + x[:, t], lam * n + 1
                expected[:, t] += m / n / 4
        assert_close(pool(x), expected)


def test_legt_starts_as_the_mean_over_a_sliding_window_of_theta_tokens():
    """A ramp x_t = t: once the window has filled, ξ_t is the mean of the last θ tokens, t - (θ - 1)/2."""
    pool = make_pool("legt:16", 1).double()
    theta, T = int(LEGT_WINDOW), 400
    x = torch.arange(T, dtype=torch.float64)[None, :, None]
    with torch.no_grad():
        xi = pool(x)[0, :, 0]
    t = torch.arange(2 * theta, T, dtype=torch.float64)
    assert_close(xi[2 * theta:], t - (theta - 1) / 2, atol=1e-2, rtol=0)  # 16 Legendre terms: ~1e-3 off


@pytest.mark.parametrize("order", [1, 16, 64])
def test_legt_normaliser_stays_positive_for_any_window(order):
    """n_t, the e_0 coefficient of the step response, divides the state: it must stay > 0 for every Δ."""
    A, B = legt_matrices(order)
    dt = torch.logspace(-3, 3, 13, dtype=torch.float64)
    Abar, Bbar = bilinear(A, B, dt)
    state, smallest = torch.zeros_like(Bbar), torch.full_like(dt, math.inf)
    for _ in range(1000):
        state = (Abar @ state[..., None])[..., 0] + Bbar
        smallest = torch.minimum(smallest, state[:, 0])
    assert (smallest > 0.5 * torch.minimum(dt, 1 / dt)).all()


def test_fixed_legt_matrices_stay_out_of_the_state_dict():
    assert set(make_pool("legt:4", D).state_dict()) == {"readout", "mix.weight", "mix.bias"}
    assert set(make_pool("legt-dt:4", D).state_dict()) == {"log_dt", "readout", "mix.weight", "mix.bias"}


# --- training ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", SPECS[1:])
def test_gradients_reach_every_learnable_parameter(spec):
    pool, x = pool_for(spec, perturb=False), inputs(37)
    (pool(x) ** 2).sum().backward()
    for name, p in pool.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name
