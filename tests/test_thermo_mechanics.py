"""Attention thermodynamics with known answers: the canonical-ensemble identities, limits, the variational
principle, masks, the Schottky two-level system, reductions and the bootstrap (the analysis: test_thermo_analysis)."""
import math

import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.errors import ConfigError, TrajectoryError
from lagrangian_lens.mechanics import thermo
from lagrangian_lens.mechanics.stats import bootstrap_many, pad_rows, pooled_mean
from lagrangian_lens.mechanics.thermo import (
    PooledMeans,
    attention_thermo,
    boltzmann_weights,
    bootstrap_pooled_means,
    by_key_distance,
    by_query_position,
    effective_temperature,
    free_energy,
    peak_temperature,
    reduce_rows,
    specific_heat_curve,
)

F64 = dict(dtype=torch.float64)


def random_case(seed=0, shape=(2, 3), T=7):
    """float32 scores (*shape, T, T) and a causal mask with random left padding per leading row; the padded
    queries see no key at all."""
    g = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(*shape, T, T, generator=g)
    pad = torch.randint(0, 3, shape, generator=g)  # (*shape,) padded leading tokens
    idx = torch.arange(T)
    real = idx >= pad[..., None]  # (*shape, T)
    mask = (idx[:, None] >= idx[None, :]) & real[..., None, :] & real[..., :, None]
    return scores, mask


def schottky(t, gap):
    """The two-level system's specific heat, E = (0, Δ): (Δ/T)² e^{Δ/T} / (1 + e^{Δ/T})²."""
    x = gap / t
    return x**2 * torch.exp(-x) / (1 + torch.exp(-x)) ** 2


def schottky_peak(gap):
    """T* = Δ/x with x·tanh(x/2) = 2, by bisection."""
    lo, hi = 1.0, 4.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid * math.tanh(mid / 2) < 2 else (lo, mid)
    return gap / lo


# --- the ensemble ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_free_energy_is_u_minus_ts_and_empty_rows_are_nan(temperature):
    scores, mask = random_case()
    th = attention_thermo(scores, mask, temperature)
    empty = ~mask.any(-1)
    assert empty.any() and (~empty).any()
    for name in ("log_z", "U", "S", "F", "C"):
        assert_close(torch.isnan(getattr(th, name)), empty)
    ok = ~empty
    assert_close(th.F[ok], (th.U - temperature * th.S)[ok], rtol=0, atol=1e-12)
    assert_close(th.F[ok], -temperature * th.log_z[ok], rtol=0, atol=0)
    assert_close(th.n_visible, mask.sum(-1))
    assert th.U.dtype == torch.float64 and th.temperature.ndim == 0


def test_a_temperature_tensor_adds_a_leading_axis_equal_to_separate_calls(monkeypatch):
    scores, mask = random_case(seed=1)
    temps = torch.tensor([0.2, 1.0, 3.0])
    swept = attention_thermo(scores, mask, temps)
    assert swept.U.shape == (3, *scores.shape[:-1]) and swept.swept
    monkeypatch.setattr(thermo, "THERMO_CHUNK_ELEMENTS", scores.numel())  # one temperature per chunk
    chunked = attention_thermo(scores, mask, temps)
    for i, t in enumerate(temps.tolist()):
        single = attention_thermo(scores, mask, t)
        for name in ("log_z", "U", "S", "F", "C"):
            assert_close(getattr(swept, name)[i], getattr(single, name), equal_nan=True)
            assert_close(getattr(chunked, name)[i], getattr(single, name), equal_nan=True)
    assert_close(specific_heat_curve(scores, mask, temps), swept.C, equal_nan=True)


def test_specific_heat_is_du_dt_and_ds_dt_is_c_over_t():
    scores, mask = random_case(seed=2)
    ok = mask.any(-1)
    for t in (0.5, 1.0, 2.5):
        h = 1e-4 * t
        th, up, down = (attention_thermo(scores, mask, x) for x in (t, t + h, t - h))
        assert_close(th.C[ok], ((up.U - down.U) / (2 * h))[ok], rtol=1e-6, atol=1e-9)
        assert_close((th.C / t)[ok], ((up.S - down.S) / (2 * h))[ok], rtol=1e-6, atol=1e-9)
        assert bool((th.C[ok] >= 0).all())


def test_high_temperature_is_uniform_and_low_temperature_is_the_ground_state():
    scores, mask = random_case(seed=3)
    ok = mask.any(-1)
    hot = attention_thermo(scores, mask, 1e6)
    assert_close(hot.S[ok], hot.n_visible[ok].double().log(), rtol=0, atol=1e-9)
    assert_close(hot.C[ok], torch.zeros_like(hot.C[ok]), rtol=0, atol=1e-9)
    several = hot.n_visible > 1
    assert_close(hot.normalized_entropy[several], torch.ones_like(hot.S[several]), atol=1e-9, rtol=0)
    assert bool(torch.isnan(hot.normalized_entropy[~several]).all())  # one key or none: no choice to normalise
    # a unique ground state: one visible key per row lifted 2 above every other visible score (all in [0, 1))
    g = torch.Generator().manual_seed(4)
    uniform = torch.rand(scores.shape, generator=g)
    pick = torch.multinomial(mask.flatten(0, -2).float() + (~ok.flatten())[:, None].float(), 1, generator=g)
    lifted = uniform + 2 * torch.zeros_like(uniform).flatten(0, -2).scatter_(1, pick, 1.0).reshape(uniform.shape)
    cold = attention_thermo(lifted, mask, 1e-3)
    assert_close(cold.S[ok], torch.zeros_like(cold.S[ok]), rtol=0, atol=1e-12)
    assert_close(cold.C[ok], torch.zeros_like(cold.C[ok]), rtol=0, atol=1e-12)
    ground = lifted.double().masked_fill(~mask, -math.inf).amax(-1)
    assert_close(cold.U[ok], -ground[ok])


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_the_boltzmann_weights_minimise_the_free_energy(temperature):
    scores, mask = random_case(seed=5, shape=(6,))
    rows = mask.any(-1)
    scores, mask = scores[rows], mask[rows]  # (R, T, T) rows with a visible key
    energies = -scores
    p = boltzmann_weights(scores, mask, temperature)
    th = attention_thermo(scores, mask, temperature)
    at_p = free_energy(p, energies, temperature, mask)
    assert_close(at_p, th.F, rtol=0, atol=1e-12)
    torch.manual_seed(0)
    for alpha in (0.3, 1.0, 5.0):  # sparse to spread-out distributions over the visible keys
        q = torch.distributions.Dirichlet(torch.full(mask.shape, alpha)).sample((50,)).double() * mask
        q = q / q.sum(-1, keepdim=True)  # (50, R, T, T)
        gap = free_energy(q, energies, temperature, mask) - at_p
        kl = torch.where(mask, torch.special.xlogy(q, q) - q * torch.where(mask, p, 1.0).log(), 0.0).sum(-1)
        assert_close(gap, temperature * kl, rtol=1e-9, atol=1e-12)  # F[q] − F[p] = T·KL(q‖p) exactly
        assert bool((gap >= -1e-12).all())
    # q = p·(1 + ε y) with ⟨y⟩_p = 0: a small move within the simplex; T·KL(q‖p) ≈ T ε²/2 · Var_p(y) > 0
    g = torch.Generator().manual_seed(1)
    z = torch.randn(p.shape, generator=g, **F64)
    y = torch.where(mask, z - (p * z).sum(-1, keepdim=True), 0.0)
    choice = mask.sum(-1) > 1  # rows with a single visible key cannot move
    for eps in (1e-2, 1e-3):
        gap = free_energy(p * (1 + eps * y), energies, temperature, mask) - at_p
        expected = temperature * eps**2 / 2 * (p * y**2).sum(-1)
        assert bool((gap[choice] > 0).all())
        assert_close(gap[choice], expected[choice], rtol=0.05, atol=0)
        assert_close(gap[~choice], torch.zeros_like(gap[~choice]), rtol=0, atol=1e-15)


def test_masked_keys_are_as_if_dropped_whatever_they_hold():
    scores, mask = random_case(seed=6, shape=(3,))
    noisy = scores.masked_fill(~mask, math.nan)
    noisy[..., 0, -1] = math.inf  # masked (causal): ignored
    th = attention_thermo(noisy, mask, 0.7)
    for b in range(scores.shape[0]):
        for q in range(scores.shape[1]):
            keys = mask[b, q]
            if not keys.any():
                continue
            alone = attention_thermo(scores[b, q, keys][None], None, 0.7)
            for name in ("log_z", "U", "S", "F", "C"):
                assert_close(getattr(th, name)[b, q], getattr(alone, name)[0], rtol=1e-12, atol=1e-12)


def test_weights_at_t1_are_the_softmax_on_visible_keys():
    scores, mask = random_case(seed=7)
    p = boltzmann_weights(scores, mask)
    ok = mask.any(-1)
    expected = torch.softmax(scores.double().masked_fill(~mask, -math.inf), -1)
    assert_close(p[ok], expected[ok])
    assert_close(p[ok].masked_select(~mask[ok]), torch.zeros((~mask[ok]).sum(), **F64), rtol=0, atol=0)
    assert bool(torch.isnan(p[~ok]).all())
    assert_close(p.float()[ok], torch.softmax(scores.masked_fill(~mask, -math.inf), -1)[ok])  # float32 agrees


def test_bad_inputs_raise_lens_errors():
    scores, mask = random_case()
    with pytest.raises(TrajectoryError, match="mask"):
        attention_thermo(scores, mask.float())
    with pytest.raises(TrajectoryError, match="broadcast"):
        attention_thermo(scores, mask[..., :3])
    bad = scores.clone()
    bad[tuple(mask.nonzero()[0])] = -math.inf  # a visible key
    with pytest.raises(TrajectoryError, match="inf or NaN"):
        attention_thermo(bad, mask)
    for t in (0.0, -1.0, math.nan, torch.tensor([1.0, 0.0]), torch.ones(2, 2)):
        with pytest.raises(ConfigError, match="temperature"):
            attention_thermo(scores, mask, t)
    with pytest.raises(TrajectoryError, match="float"):
        attention_thermo(torch.ones(3, 3, dtype=torch.long))
    th = attention_thermo(scores, mask)
    with pytest.raises(TrajectoryError, match="AttentionThermo.C"):
        thermo.AttentionThermo(th.log_z, th.U, th.S, th.F, th.C[..., :-1], th.temperature, th.n_visible)


def test_effective_temperature_turns_raw_dot_products_into_the_models_scores():
    g = torch.Generator().manual_seed(8)
    raw = 5 * torch.randn(2, 6, 6, generator=g)  # q·k
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert effective_temperature(64) == pytest.approx(8.0)
    assert effective_temperature(256, scaling=144 ** -0.5) == pytest.approx(12.0)  # Gemma: query_pre_attn_scalar
    assert effective_temperature(64, logit_scale=2.0) == pytest.approx(4.0)
    assert_close(effective_temperature(16, logit_scale=torch.tensor([1.0, 4.0])), torch.tensor([4.0, 1.0]))
    t_eff = effective_temperature(16, logit_scale=1.5)
    model = attention_thermo(raw * 16 ** -0.5 * 1.5, causal)
    as_raw = attention_thermo(raw, causal, t_eff)
    assert_close(model.S, as_raw.S)
    assert_close(model.U * t_eff, as_raw.U)  # E_raw = T_eff·E_model: U scales, S does not
    assert_close(model.C, as_raw.C)
    hotter = attention_thermo(raw, causal, 2 * t_eff)  # larger T_eff: flatter attention
    assert bool((hotter.S[:, 1:] > as_raw.S[:, 1:]).all())
    for kw in ({"head_dim": 0}, {"head_dim": 8, "scaling": 0.0}, {"head_dim": 8, "logit_scale": -1.0}):
        with pytest.raises(ConfigError):
            effective_temperature(**kw)


# --- the two-level system and the peak --------------------------------------------------------------------------

def test_two_level_system_has_the_schottky_specific_heat_and_peak():
    gap = 1.7
    grid = gap * torch.logspace(-1, 1, 25, **F64)
    scores = torch.tensor([[0.0, -gap]])  # one query, E = (0, Δ)
    curve = specific_heat_curve(scores, None, grid)[:, 0]  # (n_T,)
    assert_close(curve, schottky(grid, gap))
    t_star = schottky_peak(gap)
    assert t_star / gap == pytest.approx(0.41678, abs=1e-5)
    peak = peak_temperature(grid, curve)
    assert not bool(peak.at_edge)
    assert float(peak.temperature) == pytest.approx(t_star, rel=0.01)  # grid step is 21%
    assert float(peak.value) == pytest.approx(float(curve.max()))
    coarse = peak_temperature(grid, curve, refine=False)
    below = grid[grid <= t_star].max()
    assert float(coarse.temperature) in (pytest.approx(float(below)), pytest.approx(float(below * grid[1] / grid[0])))
    # (n_T, 2, 3) curves at once: gaps scale the peak, a curve past its peak is flagged, an all-NaN one is NaN
    gaps = torch.tensor([[0.5, 1.0, 2.0], [4.0, 100.0, 1.0]], **F64)
    curves = schottky(grid[:, None, None], gaps)
    curves[:, 1, 2] = math.nan
    many = peak_temperature(grid, curves)
    assert_close(many.at_edge, torch.tensor([[False, False, False], [False, True, False]]))
    assert float(many.temperature[1, 1]) == pytest.approx(float(grid[-1]))  # C still rising at the hot edge
    assert_close(many.temperature[0] / gaps[0], torch.full((3,), t_star / gap, **F64), rtol=0.01, atol=0)
    assert math.isnan(float(many.temperature[1, 2]))


def test_peak_temperature_rejects_a_bad_grid():
    with pytest.raises(ConfigError, match="increasing"):
        peak_temperature(torch.tensor([1.0, 0.5, 2.0]), torch.zeros(3))
    with pytest.raises(TrajectoryError, match="lead"):
        peak_temperature(torch.tensor([0.5, 1.0, 2.0]), torch.zeros(4))


# --- reductions ---------------------------------------------------------------------------------------------------

def test_reductions_exclude_masked_and_skipped_rows():
    # (L, B, H, Q) = (2, 2, 2, 3) values, NaN for rows without keys; keep drops query 0
    values = torch.arange(24, **F64).reshape(2, 2, 2, 3)
    values[0, 1, :, 2] = math.nan
    keep = torch.tensor([False, True, True])
    red = reduce_rows(values, keep)
    assert_close(red.counts, torch.tensor([[3, 3], [4, 4]]))
    head00 = torch.tensor([1.0, 2.0, 7.0], **F64).mean()  # layer 0, head 0: (b0: q1, q2), (b1: q1)
    assert_close(red.per_head[0, 0], head00)
    layer0 = torch.tensor([1.0, 2.0, 7.0, 4.0, 5.0, 10.0], **F64).mean()
    assert_close(red.per_layer[0], layer0)
    assert_close(red.model, torch.tensor([1.0, 2.0, 7.0, 4.0, 5.0, 10.0, 13, 14, 16, 17, 19, 20, 22, 23], **F64).mean())
    both = red + red
    assert_close(both.per_head, red.per_head)
    assert_close(both.counts, 2 * red.counts)
    swept = reduce_rows(torch.stack([values, 2 * values]), keep)  # a leading temperature axis passes through
    assert_close(swept.per_head[1], 2 * red.per_head)


def test_positional_views_have_known_values():
    # uniform attention under a causal mask: row q gives each of its q + 1 keys 1/(q + 1)
    T = 5
    scores = torch.zeros(2, 3, 1, T, T)  # (L, B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    th = attention_thermo(scores, causal)
    prof = by_query_position(th.S)
    assert prof.per_head.shape == (2, 1, T)
    assert_close(prof.per_head[0, 0], torch.arange(1, T + 1, **F64).log())
    assert_close(prof.counts[0, 0], torch.full((T,), 3))
    shifted = by_query_position(th.S, positions=torch.arange(T) + 2)  # positions 2..6: P = 7
    assert_close(shifted.per_head[1, 0, 2:], prof.per_head[1, 0])
    assert bool(torch.isnan(shifted.per_head[..., :2]).all())
    padded = prof + shifted  # profiles of different lengths pool after zero-padding
    assert padded.per_head.shape == (2, 1, T + 2)
    p = boltzmann_weights(scores, causal)
    mass = by_key_distance(p, causal)
    expected = torch.tensor([sum(1 / (q + 1) for q in range(d, T)) / (T - d) for d in range(T)], **F64)
    assert_close(mass.per_head[0, 0], expected)
    assert_close(mass.counts[0, 0], 3 * torch.arange(T, 0, -1))
    energy = by_key_distance(-torch.arange(T, dtype=torch.float32).expand(2, 3, 1, T, T), causal)  # E = −k
    assert_close(energy.per_head[0, 0], torch.tensor([-(T - 1 - d) / 2 for d in range(T)], **F64))
    assert_close(energy.model, energy.per_head[0, 0])
    with pytest.raises(TrajectoryError):
        PooledMeans(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long))


def test_bootstrap_matches_the_toolkits_bootstrap_and_contains_the_value():
    g = torch.Generator().manual_seed(9)
    rows = [torch.randn(n, generator=g, **F64) + 0.1 * n for n in (3, 8, 5, 12, 1, 7)]
    table = pad_rows(rows)
    sums = torch.nansum(table, -1)[:, None]
    counts = (~torch.isnan(table)).sum(-1)[:, None]
    value, low, high = bootstrap_pooled_means(torch.cat([sums, 2 * sums], 1), torch.cat([counts, counts], 1),
                                              n_boot=300, ci=0.9, seed=4)
    ref = bootstrap_many({"m": lambda t: pooled_mean(t["x"])}, {"x": table}, n_boot=300, ci=0.9, seed=4)["m"]
    assert_close(value, torch.tensor([ref.value, 2 * ref.value], **F64))
    assert_close(low, torch.tensor([ref.low, 2 * ref.low], **F64))
    assert_close(high, torch.tensor([ref.high, 2 * ref.high], **F64))
    assert bool(((low <= value) & (value <= high)).all()) and bool((low < high).all())
    alone = bootstrap_pooled_means(sums, counts, n_boot=0)
    assert_close(alone[1], alone[0])
