"""STP kinematics, hypersphere diagnostics and permutation nulls on paths with known answers."""
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.mechanics.kinematics import (
    random_spans,
    span_stp_loss,
    stp_regulariser,
    triplet_kinematics,
)
from lagrangian_lens.mechanics.nulls import OrderStatistic, permutation_test
from lagrangian_lens.mechanics.sphere import action, path_excess, sphere_kinematics


@pytest.mark.parametrize("d", [2, 3, 16, 257])
def test_stp_identity_holds_to_machine_precision_on_both_branches(d):
    g = torch.Generator().manual_seed(d)
    steps = torch.randn(400, 2, d, generator=g, dtype=torch.float64)  # independent d1, d2: cos symmetric about 0
    h = torch.cat([torch.zeros(400, 1, d, dtype=torch.float64), steps.cumsum(1)], dim=1)
    k = triplet_kinematics(h)
    forward, backward = k["cos"] >= 0, k["cos"] < 0
    assert forward.sum() > 50 and backward.sum() > 50  # both branches are exercised
    err, cos = k["identity_error"], k["cos"].abs()
    for branch in (forward, backward):
        assert err[branch & (cos > 1e-3)].max() <= 1e-12
    # near cos = 0 the right-hand side is ill-conditioned: its error grows like ε/|cos|, never faster
    assert (err <= 1e-12 + 1e-15 / cos).all()


def test_identity_error_is_large_if_the_wrong_branch_is_used():
    h = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.1]], dtype=torch.float64)  # a sharp turn back: cos < 0
    k = triplet_kinematics(h)
    wrong = 1 - torch.sqrt(1 - k["a_perp_norm"] ** 2 / k["d2_norm"] ** 2)
    assert (k["stp_loss"] - wrong).abs().item() > 0.5 and k["identity_error"].item() < 1e-15


def test_straight_line_at_constant_speed_has_no_acceleration_no_loss_no_deceleration():
    h = torch.linspace(0, 1, 12, dtype=torch.float64)[:, None] * torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    k = triplet_kinematics(h)
    zeros = torch.zeros(10, dtype=torch.float64)
    assert_close(k["a_parallel_norm"], zeros, atol=1e-14, rtol=0)
    assert_close(k["a_perp_norm"], zeros, atol=1e-14, rtol=0)
    assert_close(k["stp_loss"], zeros, atol=1e-14, rtol=0)
    assert not (k["a_tangential"] < -1e-14).any()


def test_a_line_that_slows_down_decelerates_and_a_turn_is_not_a_slowdown():
    s = torch.tensor([0.0, 1.0, 1.8, 2.4, 2.8, 3.0], dtype=torch.float64)
    k = triplet_kinematics(s[:, None] * torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert (k["a_tangential"] < 0).all() and k["a_perp_norm"].max() < 1e-14
    # equal step lengths, but turning by 60°: progress along d1 falls short, so it decelerates
    turn = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.5, math.sqrt(3) / 2]], dtype=torch.float64)
    k = triplet_kinematics(turn)
    assert_close(k["d1_norm"], k["d2_norm"])
    assert_close(k["a_tangential"], torch.tensor([-0.5], dtype=torch.float64))


def test_span_stp_is_zero_on_a_line_and_differentiable():
    t = torch.linspace(0, 1, 10, dtype=torch.float64)[:, None]
    line = t * torch.tensor([1.0, 2.0], dtype=torch.float64)
    spans = random_spans(10, 20, generator=torch.Generator().manual_seed(0))
    assert ((spans[:, 0] > 0) & (spans[:, 0] < spans[:, 1]) & (spans[:, 1] < 9)).all()
    assert_close(span_stp_loss(line, spans), torch.zeros(20, dtype=torch.float64), atol=1e-12, rtol=0)
    h = torch.randn(4, 10, 8, requires_grad=True)
    loss = stp_regulariser(h, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert loss.item() > 0 and h.grad.abs().sum() > 0


def great_circle(n=50, step=0.05, d=5):
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))
    t = step * torch.arange(n, dtype=torch.float64)
    return 3.0 * (torch.cos(t)[:, None] * q[:, 0] + torch.sin(t)[:, None] * q[:, 1])  # radius 3: direction only


def test_great_circle_at_constant_speed_has_zero_covariant_acceleration_and_el_residual():
    k = sphere_kinematics(great_circle())
    assert_close(k["step_angle"], torch.full((49,), 0.05, dtype=torch.float64))
    assert_close(k["covariant_acceleration"], torch.zeros(48, dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close(k["el_residual"], torch.zeros(48, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_close(path_excess(great_circle(), 5), torch.zeros(45, dtype=torch.float64), atol=1e-12, rtol=0)
    assert action(great_circle()).item() == pytest.approx(0.5 * 49 * 0.05**2)


@pytest.mark.parametrize("colatitude", [0.3, 0.8, 1.2])
def test_small_circle_has_geodesic_curvature_cot_phi(colatitude):
    t = torch.linspace(0, 1.0, 400, dtype=torch.float64)
    phi = torch.tensor(colatitude, dtype=torch.float64)
    path = torch.stack([torch.sin(phi) * torch.cos(t), torch.sin(phi) * torch.sin(t), torch.cos(phi).expand_as(t)], -1)
    k = sphere_kinematics(path)
    assert_close(k["geodesic_curvature"], torch.full((398,), 1 / math.tan(colatitude), dtype=torch.float64),
                 rtol=1e-4, atol=0)
    assert k["el_residual"].min() > 0 and (path_excess(path, 50) > 0).all()


def test_permutation_null_is_strongly_negative_for_smooth_paths_and_near_zero_for_noise():
    g = torch.Generator().manual_seed(0)
    smooth = [torch.cumsum(torch.ones(40, 16, dtype=torch.float64) * 0.1 + 0.01 * torch.randn(40, 16, generator=g,
                                                                                                dtype=torch.float64), 0)
              for _ in range(8)]
    noise = [torch.randn(40, 16, generator=g, dtype=torch.float64) for _ in range(8)]

    def perp(states):  # reordered states (K, n, T, d) -> sum and count (K,) of ‖a⊥‖ over the triplets
        k = triplet_kinematics(states)["a_perp_norm"]
        return {"perp": (k.sum((-2, -1)), torch.full(k.shape[:-2], k.shape[-2] * k.shape[-1]))}

    stat = OrderStatistic.on_states(perp)
    smooth_test = permutation_test(stat, smooth, n_permutations=100, seed=0)["perp"]
    assert smooth_test.z < -10 and smooth_test.p_smaller == pytest.approx(1 / 101)
    zs = [permutation_test(stat, noise, n_permutations=100, seed=s)["perp"].z for s in range(5)]
    assert abs(np.mean(zs)) < 1.5


def test_paper_identity_fails_exactly_where_cos_is_negative():
    from lagrangian_lens.analysis.stp import analyse_stp

    t = torch.arange(12, dtype=torch.float64)
    zigzag = torch.stack([t, (-1.0) ** t, torch.zeros_like(t)], dim=1)  # every turn reverses: cos < 0
    zigzag[:, 0] = 0.1 * t  # a small forward drift keeps the triplets non-degenerate
    arc = torch.stack([torch.cos(0.1 * t), torch.sin(0.1 * t), 0.05 * t], dim=1)  # gentle curve: cos > 0
    m, _ = analyse_stp([zigzag, zigzag.flip(0)], n_permutations=5, n_boot=50)
    assert m["cos_nonnegative_fraction"]["value"] == 0.0
    assert m["paper_identity_failure_fraction"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert m["identity_max_abs_error"] < 1e-12  # the two-branch form holds on every triplet
    m, _ = analyse_stp([arc, 2 * arc], n_permutations=5, n_boot=50)
    assert m["cos_nonnegative_fraction"]["value"] == 1.0
    assert m["paper_identity_failure_fraction"]["value"] == 0.0
    assert m["paper_identity_max_abs_error_cos_nonnegative"] < 1e-12


def test_speed_decreasing_fraction_is_one_on_a_geometric_path():
    from lagrangian_lens.analysis.stp import analyse_stp

    steps = 0.8 ** torch.arange(10, dtype=torch.float64)  # each step 0.8 times the last
    direction = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    bend = torch.tensor([0.0, 0.0, 1e-3], dtype=torch.float64)
    path = torch.cat([torch.zeros(1, 3, dtype=torch.float64),
                      torch.cumsum(steps[:, None] * direction + (-1.0) ** torch.arange(10)[:, None] * bend, 0)])
    m, _ = analyse_stp([path, 3 * path], n_permutations=5, n_boot=50)
    assert m["speed_decreasing_fraction"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert m["decelerating_fraction"]["value"] == 1.0  # on a straight-ish path, the two readings agree
    growing, _ = analyse_stp([path.flip(0), 3 * path.flip(0)], n_permutations=5, n_boot=50)
    assert growing["speed_decreasing_fraction"]["value"] == 0.0


def test_stp_and_sphere_means_keep_their_definitions_and_gain_intervals_over_paths():
    from lagrangian_lens.analysis.sphere import analyse_sphere
    from lagrangian_lens.analysis.stp import analyse_stp

    g = torch.Generator().manual_seed(0)
    paths = [torch.randn(n, 8, generator=g, dtype=torch.float64).cumsum(0) + 4 for n in (12, 15, 12, 20, 9, 15)]
    m, arrays, reps = analyse_sphere(paths, window=4, radius="sqrt_d", n_permutations=10, n_boot=200,
                                     return_replicates=True)
    norms = torch.cat([p.norm(dim=-1) for p in paths])
    moved = sum(float((p[1:] - p[:-1]).norm(dim=-1).sum()) for p in paths)
    radial = sum(float((p[1:].norm(dim=-1) - p[:-1].norm(dim=-1)).abs().sum()) for p in paths)
    expected = {
        "mean_step_angle": arrays["step_angle"].mean(), "mean_el_residual": arrays["el_residual"].mean(),
        "mean_covariant_acceleration": arrays["covariant_acceleration"].mean(),
        "median_geodesic_curvature": np.median(arrays["geodesic_curvature"]),
        "mean_path_excess": arrays["path_excess"].mean(), "action_per_step": 0.5 * 8 * (arrays["step_angle"] ** 2).mean(),
        "mean_norm": norms.mean().item(), "norm_cv": (norms.std() / norms.mean()).item(), "radial_fraction": radial / moved,
    }
    for name, value in expected.items():
        assert m[name]["value"] == pytest.approx(value, rel=1e-12), name
        assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"], name
    assert reps.keys() == expected.keys()
    assert all(r["draws"].shape == (200,) and r["units"].shape == (6,) for r in reps.values())
    m, arrays, reps = analyse_stp(paths, n_permutations=10, n_boot=200, return_replicates=True)
    expected = {"mean_a_parallel": arrays["a_parallel"].mean(), "mean_a_perp": arrays["a_perp"].mean(),
                "mean_stp_loss": arrays["stp_loss"].mean(),
                "tangential_normal_ratio": arrays["a_parallel"].mean() / arrays["a_perp"].mean()}
    for name, value in expected.items():
        assert m[name]["value"] == pytest.approx(value, rel=1e-12), name
        assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"], name
    assert expected.keys() <= reps.keys() and "decelerating_fraction" in reps
    assert len(analyse_stp(paths, n_permutations=10, n_boot=20)) == 2  # without replicates: (metrics, arrays) as before
