"""Clopper–Pearson intervals against values known in closed form or from tables."""

import numpy as np
import pytest

from manidefense.stats import clopper_pearson


def test_matches_tabulated_interval():
    # 5 of 10 at 95%: the textbook exact interval (e.g. R's binom.test) is [0.1871, 0.8129].
    low, high = clopper_pearson(5, 10, alpha=0.05)
    assert low == pytest.approx(0.187086, abs=1e-5) and high == pytest.approx(0.812914, abs=1e-5)


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
def test_edges_have_closed_forms(n):
    # With k = 0 the upper bound solves (1 - p)^n = alpha / 2; k = n mirrors it.
    alpha = 0.05
    low, high = clopper_pearson(0, n, alpha)
    assert low == 0.0 and high == pytest.approx(1 - (alpha / 2) ** (1 / n), rel=1e-6)
    low, high = clopper_pearson(n, n, alpha)
    assert high == 1.0 and low == pytest.approx((alpha / 2) ** (1 / n), rel=1e-6)


def test_arrays_are_symmetric_and_nested():
    k = np.arange(0, 21)
    low, high = clopper_pearson(k, 20)
    np.testing.assert_allclose(low, 1 - high[::-1], atol=1e-9)
    assert np.all(low <= k / 20) and np.all(k / 20 <= high)
    wide = clopper_pearson(k, 20, alpha=0.01)
    assert np.all(wide[0] <= low) and np.all(wide[1] >= high)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`successes`"):
        clopper_pearson(11, 10)
    with pytest.raises(ValueError, match="integers"):
        clopper_pearson(0.5, 10)
    with pytest.raises(ValueError, match="`alpha`"):
        clopper_pearson(1, 10, alpha=1.5)
