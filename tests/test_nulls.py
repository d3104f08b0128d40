"""Vectorised permutation nulls: the same shuffles as a plain loop, Gram-matrix kinematics equal to the direct
ones, p at its floor for a straight path, and no significance for a path that is already shuffled."""
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lagrangian_lens.analysis.sphere import NULL_STATS, null_statistic
from lagrangian_lens.analysis.stp import NULL_STATISTIC as STP_NULL
from lagrangian_lens.mechanics.gram import centred_gram, cosine_gram, sphere_steps, triplet_norms
from lagrangian_lens.mechanics.kinematics import triplet_kinematics
from lagrangian_lens.mechanics.nulls import (
    draw_orders,
    group_paths,
    permutation_test,
    reorder,
)
from lagrangian_lens.mechanics.sphere import path_excess, sphere_kinematics

SPHERE_NULL = null_statistic(window=4)


def random_walks(n=6, T=20, d=16, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t, d, generator=g, dtype=torch.float64).cumsum(0) + 3 for t in (lengths or [T] * n)]


def test_gram_kinematics_equal_the_direct_kinematics_of_the_reordered_states():
    (group,) = group_paths(random_walks())
    order = torch.rand(3, *group.shape[:2], generator=torch.Generator().manual_seed(1)).argsort(-1)  # (3, n, T)
    states = reorder(group, order)  # (3, n, T, d)
    direct, gram = triplet_kinematics(states), triplet_norms(centred_gram(group), order)
    assert torch.equal(direct["valid"], gram["valid"])
    for name in ("a_parallel_norm", "a_perp_norm"):
        assert_close(gram[name], direct[name], rtol=1e-9, atol=1e-9)
    direct, gram = sphere_kinematics(states), sphere_steps(cosine_gram(group), order, window=4)
    for name in ("step_angle", "covariant_acceleration", "geodesic_curvature", "el_residual"):
        assert_close(gram[name], direct[name], rtol=1e-9, atol=1e-12)
    assert_close(gram["path_excess"], path_excess(states, 4), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_vectorised_null_equals_a_plain_loop_over_the_same_shuffles(chunk):
    groups = group_paths(random_walks(lengths=[12, 12, 12, 9, 9, 15]))  # three groups of different lengths
    tests = permutation_test(STP_NULL, groups, n_permutations=25, seed=3, chunk=chunk)
    loop = {"tangential": [], "normal": []}
    for orders in draw_orders(groups, 25, seed=3):  # the straightforward loop: one shuffle at a time
        k = [triplet_kinematics(reorder(g, o)) for g, o in zip(groups, orders)]
        valid = torch.cat([x["valid"].reshape(-1) for x in k])
        loop["tangential"].append(torch.cat([x["a_parallel_norm"].reshape(-1) for x in k])[valid].mean().item())
        loop["normal"].append(torch.cat([x["a_perp_norm"].reshape(-1) for x in k])[valid].mean().item())
    for name, values in loop.items():
        np.testing.assert_allclose(tests[name].null, values, rtol=1e-10)
        assert tests[name].p_smaller == (1 + (tests[name].null <= tests[name].real).sum()) / 26


def test_the_null_does_not_depend_on_the_chunk_size():
    groups = group_paths(random_walks(lengths=[10, 10, 14]))
    one = permutation_test(SPHERE_NULL, groups, n_permutations=30, seed=5, chunk=1)
    many = permutation_test(SPHERE_NULL, groups, n_permutations=30, seed=5, chunk=30)
    for name in NULL_STATS:
        np.testing.assert_allclose(one[name].null, many[name].null, rtol=1e-13)
        assert one[name].real == pytest.approx(many[name].real, rel=1e-13)


def test_a_straight_path_has_p_at_the_floor():
    t = torch.linspace(0, 1, 30, dtype=torch.float64)[:, None]
    line = [t * torch.tensor([3.0, -1.0, 2.0, 0.5], dtype=torch.float64) + 0.1 * i for i in range(4)]
    tests = permutation_test(STP_NULL, line, n_permutations=200, seed=0)
    # constant speed: no tangential acceleration, which every shuffle has; a shuffle stays on the line, so
    # the normal part is 0 (to the Gram matrix's ~1e-8) in both and says nothing
    assert tests["tangential"].real < 1e-9 and tests["tangential"].p_smaller == pytest.approx(1 / 201)
    assert tests["normal"].real < 1e-6 and tests["normal"].null.max() < 1e-6
    q, _ = torch.linalg.qr(torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    angle = 0.05 * torch.arange(30, dtype=torch.float64)[:, None]
    circle = [2.0 * (torch.cos(angle + i) * q[:, 0] + torch.sin(angle + i) * q[:, 1]) for i in range(4)]
    tests = permutation_test(SPHERE_NULL, circle, n_permutations=200, seed=0)  # a great circle at constant speed
    for name in ("step_angle", "covariant_acceleration", "el_residual", "path_excess"):
        assert tests[name].p_smaller == pytest.approx(1 / 201), name
        assert tests[name].z < -5


def test_a_shuffled_path_is_not_significant():
    g = torch.Generator().manual_seed(11)
    walks = random_walks(n=8, T=40, d=12, seed=2)
    for statistic in (STP_NULL, SPHERE_NULL):
        zs, ps = [], []
        for seed in range(8):  # eight shuffles as 'real' orders: each z is one draw from the null itself
            shuffled = [w[torch.randperm(w.shape[0], generator=g)] for w in walks]
            for test in permutation_test(statistic, shuffled, n_permutations=200, seed=seed).values():
                zs.append(test.z)
                ps.append(test.p_smaller)
        assert abs(np.mean(zs)) < 1 and np.median(ps) > 0.2 and min(ps) > 0.005
    # the same walks in their real order are far smoother than their shuffles
    assert permutation_test(STP_NULL, walks, n_permutations=200)["normal"].p_smaller == pytest.approx(1 / 201)


def test_the_old_interface_is_refused_with_a_pointer_to_the_new_one():
    with pytest.raises(TypeError, match="OrderStatistic.on_states"):
        permutation_test(lambda paths: {"x": 0.0}, random_walks(n=2))
    assert not math.isnan(permutation_test(STP_NULL, random_walks(n=2), n_permutations=3)["normal"].null_mean)


def test_the_shuffles_are_those_of_the_loop_they_replace_and_of_the_figures():
    from lagrangian_lens.analysis import sphere as sphere_mod
    from lagrangian_lens.analysis import stp as stp_mod
    from lagrangian_lens.mechanics.nulls import permuted

    groups = group_paths(random_walks(lengths=[12, 12, 15]))
    gen = torch.Generator().manual_seed(4)
    for orders in draw_orders(groups, 3, seed=4):  # shuffle k is the k-th call of permuted on one generator
        for g, order, old in zip(groups, orders, permuted(groups, gen)):
            assert torch.equal(reorder(g, order), old)
    shuffled = permuted(groups, torch.Generator().manual_seed(9))
    ks = [triplet_kinematics(g) for g in shuffled]
    valid = torch.cat([k["valid"].reshape(-1) for k in ks])
    figure = stp_mod._one_shuffle(groups, 9)
    for name in ("a_parallel_norm", "a_perp_norm"):
        assert_close(torch.from_numpy(figure[name]), torch.cat([k[name].reshape(-1) for k in ks])[valid],
                     rtol=1e-9, atol=1e-9)
    figure = sphere_mod._one_shuffle(groups, 4, 9)
    direct = torch.cat([sphere_kinematics(g)["el_residual"].reshape(-1) for g in shuffled])
    assert_close(torch.from_numpy(figure["el_residual"]), direct, rtol=1e-9, atol=1e-12)
