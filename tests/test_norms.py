"""Property tests of the Lp geometry against independent numpy oracles."""

import keras
import numpy as np
import pytest
from conftest import lp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from manidefense.attacks import norms

NORMS = ("linf", "l2", "l1")
settings.register_profile("manidefense", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("manidefense")

batches = arrays(
    np.float32,
    st.tuples(st.integers(1, 4), st.integers(1, 9)),
    elements=st.floats(-3, 3, width=32, allow_subnormal=False),
)
radii = st.floats(0.0, 5.0, allow_subnormal=False)


def np_(t):
    return keras.ops.convert_to_numpy(t)


def l1_projection_oracle(v, eps):
    """Projection onto the L1 ball by bisection on the soft threshold, in float64."""
    v = np.asarray(v, np.float64)
    if np.abs(v).sum() <= eps:
        return v
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        theta = 0.5 * (lo + hi)
        if np.maximum(np.abs(v) - theta, 0).sum() > eps:
            lo = theta
        else:
            hi = theta
    return np.sign(v) * np.maximum(np.abs(v) - hi, 0)


@given(batches, st.sampled_from(NORMS))
def test_distance_matches_numpy(v, norm):
    np.testing.assert_allclose(np_(norms.lp_norm(v, norm)), lp(v, norm), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(norms.distance(np.zeros_like(v), v, norm)), lp(v, norm),
                               rtol=1e-5, atol=1e-5)


@given(batches, radii, st.sampled_from(NORMS))
def test_projection_lands_in_ball_and_is_idempotent(v, eps, norm):
    p = np_(norms.project(v, eps, norm))
    assert np.all(lp(p, norm) <= eps * (1 + 1e-5) + 1e-6)
    np.testing.assert_allclose(np_(norms.project(p, eps, norm)), p, rtol=1e-5, atol=1e-6)


@given(batches, radii, st.sampled_from(NORMS))
def test_projection_keeps_points_inside_the_ball(v, eps, norm):
    inside = lp(v, norm) <= eps
    p = np_(norms.project(v, eps, norm))
    np.testing.assert_array_equal(p[inside], v[inside])
    # Never increases a norm: outside points shrink onto the sphere.
    assert np.all(lp(p, norm) <= lp(v, norm) + 1e-5)


@given(batches, radii)
def test_l1_projection_matches_bisection_oracle(v, eps):
    p = np_(norms.project(v, eps, "l1"))
    for row, out in zip(v, p, strict=True):
        np.testing.assert_allclose(out, l1_projection_oracle(row, eps), atol=2e-5)


@given(batches, radii, st.sampled_from(NORMS))
def test_projection_is_the_nearest_point(v, eps, norm):
    """No point of the ball (sampled) is closer in L2 than the projection (for linf/l2/l1)."""
    p = np_(norms.project(v, eps, norm)).astype(np.float64)
    candidates = np_(norms.random_start((256,) + v.shape[1:], eps, norm, seed=1))
    for row, proj in zip(v, p, strict=True):
        best = np.sqrt(((candidates - row) ** 2).sum(axis=1)).min()
        assert np.sqrt(((proj - row) ** 2).sum()) <= best + 1e-4


def test_per_example_radii():
    v = np.ones((3, 4), np.float32)
    eps = np.array([0.0, 0.5, 10.0], np.float32)
    for norm in NORMS:
        n = lp(np_(norms.project(v, eps, norm)), norm)
        np.testing.assert_allclose(n, np.minimum(eps, lp(v, norm)), rtol=1e-5, atol=1e-6)


@given(batches, st.sampled_from(NORMS))
def test_ascent_direction_is_unit_and_ascending(g, norm):
    d = np_(norms.ascent_direction(g, norm, l1_sparsity=0.5))
    nonzero = np.abs(g).reshape(len(g), -1).max(axis=1) > 0
    np.testing.assert_allclose(lp(d, norm)[nonzero], 1.0, rtol=1e-5)
    inner = (d * g).reshape(len(g), -1).sum(axis=1)
    dual = {"linf": "l1", "l2": "l2", "l1": "linf"}[norm]
    if norm == "l1":
        # The sparse step trades optimality for spread: between the mean of the top half and max.
        assert np.all(inner <= lp(g, dual) + 1e-5)
        assert np.all(inner[nonzero] > 0)
    else:
        np.testing.assert_allclose(inner, lp(g, dual), rtol=1e-4, atol=1e-5)


@given(arrays(np.float32, (2, 12), elements=st.floats(-1, 1, width=32, allow_subnormal=False)),
       arrays(np.float32, (2, 12), elements=st.floats(0, 1, width=32)),
       st.floats(0.01, 6.0))
def test_l1_step_never_leaves_the_box_and_spends_its_size(g, x, size):
    # (Subnormal gradients are excluded: TensorFlow's CPU kernels flush them to zero.)
    step = np_(norms.ascent_step(g, x, size, "l1", (0.0, 1.0), l1_sparsity=0.9))
    moved = x + step
    assert np.all(moved >= -1e-6) and np.all(moved <= 1 + 1e-6)
    room = np.where(g > 0, 1 - x, np.where(g < 0, x, 0)).sum(axis=1)
    np.testing.assert_allclose(lp(step, "l1"), np.minimum(size, room), rtol=1e-4, atol=1e-5)
    assert np.all(np.sign(step)[step != 0] == np.sign(g)[step != 0])


def test_l1_step_with_one_coordinate_is_the_exact_box_maximiser():
    g = np.array([[0.9, -0.5, 0.2, 0.1]], np.float32)
    x = np.array([[0.7, 0.4, 0.0, 0.5]], np.float32)
    step = np_(norms.ascent_step(g, x, 1.0, "l1", (0.0, 1.0), l1_sparsity=0.75))
    # Fill the largest |g| first up to its room (0.3), then the next (0.4), then 0.3 of the third.
    np.testing.assert_allclose(step, [[0.3, -0.4, 0.3, 0.0]], atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_is_inside_and_spread(norm):
    eps, d = 0.7, 50
    r = np_(norms.random_start((2000, d), eps, norm, seed=4))
    n = lp(r, norm)
    assert np.all(n <= eps * (1 + 1e-6))
    if norm == "linf":
        assert abs(r.mean()) < 0.01 and abs(r.std() - eps / np.sqrt(3)) < 0.01
    else:
        # Uniform in a d-ball: the radius follows r^d, mean eps * d / (d + 1).
        assert abs(n.mean() - eps * d / (d + 1)) < 0.01
    assert abs(np.mean(r > 0) - 0.5) < 0.02


def test_random_start_seeds():
    a = np_(norms.random_start((4, 5), 1.0, "l1", seed=3))
    b = np_(norms.random_start((4, 5), 1.0, "l1", seed=3))
    c = np_(norms.random_start((4, 5), 1.0, "l1", seed=4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@given(arrays(np.float32, (3, 40), elements=st.floats(0, 1, width=32, allow_subnormal=False)),
       arrays(np.float32, (3, 40), elements=st.floats(-2, 2, width=32)),
       st.floats(0.0, 3.0), st.sampled_from(NORMS))
def test_constrain_is_exact_in_float32(x, delta, eps, norm):
    # (Subnormal inputs are excluded: TensorFlow's CPU kernels flush them to zero.)
    out = np_(norms.constrain(x, x + delta, eps, norm, (0.0, 1.0)))
    assert out.dtype == np.float32
    assert np.all(lp(out.astype(np.float64) - x.astype(np.float64), norm) <= eps)
    assert out.min() >= 0 and out.max() <= 1


def test_constrain_reverts_nan_rows_to_clean():
    x = np.full((2, 3), 0.5, np.float32)
    bad = x.copy()
    bad[0, 1] = np.nan
    out = np_(norms.constrain(x, bad, 0.1, "l2", (0.0, 1.0)))
    np.testing.assert_array_equal(out[0], x[0])


def test_unknown_norm_raises():
    with pytest.raises(ValueError, match="`norm`.*'l0'"):
        norms.project(np.zeros((1, 2), np.float32), 1.0, "l0")
