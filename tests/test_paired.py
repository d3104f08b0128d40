"""Paired statistics of Table 3: Student's t p-values, d_z, the sign test, against closed forms."""
import math

import numpy as np
import pytest

from lagrangian_lens.errors import TrajectoryError
from lagrangian_lens.mechanics.paired import betainc, paired_comparison, sign_test, student_t_two_sided


def test_student_t_matches_closed_forms():
    # df = 1 is Cauchy: P(|T| > 1) = 1/2; df = 2: P(|T| > t) = 1 − t/√(t² + 2).
    np.testing.assert_allclose(student_t_two_sided(1.0, 1), 0.5, rtol=1e-12)
    for t in (0.3, 2.0, 7.5):
        np.testing.assert_allclose(student_t_two_sided(t, 2), 1 - t / math.sqrt(t * t + 2), rtol=1e-10)
    # The tabulated 97.5 % quantile of t with 10 df is 2.228139: two-sided p = 0.05.
    np.testing.assert_allclose(student_t_two_sided(2.228139, 10), 0.05, rtol=1e-5)
    # Large df tends to the normal: z = 1.959964 gives 0.05.
    np.testing.assert_allclose(student_t_two_sided(1.959964, 1e7), 0.05, rtol=1e-5)
    assert student_t_two_sided(0.0, 5) == 1.0 and student_t_two_sided(math.inf, 5) == 0.0


def test_betainc_symmetry_and_a_polynomial_case():
    # I_x(1, b) = 1 − (1 − x)^b, and I_x(a, b) = 1 − I_{1−x}(b, a).
    for x in (0.1, 0.5, 0.93):
        np.testing.assert_allclose(betainc(1.0, 3.0, x), 1 - (1 - x) ** 3, rtol=1e-12)
        np.testing.assert_allclose(betainc(2.5, 0.5, x), 1 - betainc(0.5, 2.5, 1 - x), rtol=1e-12)


def test_sign_test_is_exact():
    pos, neg, p = sign_test(np.array([1.0] * 9 + [-1.0] + [0.0] * 3))  # zeros are dropped
    assert (pos, neg) == (9, 1)
    np.testing.assert_allclose(p, 2 * (1 + 10) / 2**10)
    assert sign_test(np.array([1.0, -1.0]))[2] == 1.0


def test_paired_comparison_reads_like_table_3():
    natural = np.array([4.0, 5.0, 6.0, 5.5])
    steered = natural + np.array([1.0, 2.0, 3.0, 2.0])
    out = paired_comparison(natural, steered, n_boot=500, seed=0)
    diff = steered - natural
    np.testing.assert_allclose(out.cohens_dz, diff.mean() / diff.std(ddof=1))
    np.testing.assert_allclose(out.t, diff.mean() / (diff.std(ddof=1) / 2))
    np.testing.assert_allclose(out.p_value, student_t_two_sided(out.t, 3))
    assert (out.n, out.n_positive, out.n_negative) == (4, 4, 0)
    np.testing.assert_allclose([out.mean_a, out.mean_b], [natural.mean(), steered.mean()])
    assert out.dz_ci_low <= out.cohens_dz <= out.dz_ci_high


def test_paired_comparison_drops_unpaired_units_and_needs_two():
    out = paired_comparison([1.0, np.nan, 2.0, 4.0], [2.0, 3.0, 2.5, 4.0], n_boot=0)
    assert out.n == 3 and out.dz_ci_low is None
    with pytest.raises(TrajectoryError, match="at least 2"):
        paired_comparison([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(TrajectoryError, match="shapes"):
        paired_comparison([1.0, 2.0], [1.0, 2.0, 3.0])
