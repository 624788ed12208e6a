"""Each check names the argument, the expectation and what was received."""

import numpy as np
import pytest

from manidefense import validation as v


def test_norm_aliases():
    assert v.check_norm("Linf") == "linf" and v.check_norm(np.inf) == "linf"
    assert v.check_norm(2) == "l2" and v.check_norm("1") == "l1"
    with pytest.raises(ValueError, match="`norm`.*Received: norm='l0'"):
        v.check_norm("l0")
    with pytest.raises(ValueError, match="`norm`"):
        v.check_norm(None)


@pytest.mark.parametrize("value", [-1, float("inf"), float("nan"), "0.1", True, None])
def test_non_negative_rejects(value):
    with pytest.raises(ValueError, match="`eps`"):
        v.check_non_negative("eps", value)


def test_numbers_accepted():
    assert v.check_non_negative("eps", 0) == 0.0
    assert v.check_positive("step_size", np.float32(0.5)) == 0.5
    assert v.check_positive_int("num_steps", np.int64(3)) == 3
    assert v.check_positive_int("limit", None, allow_none=True) is None
    with pytest.raises(ValueError, match="`num_steps`.*2.5"):
        v.check_positive_int("num_steps", 2.5)
    with pytest.raises(ValueError, match="`step_size` must be > 0"):
        v.check_positive("step_size", 0.0)


def test_bounds():
    assert v.check_bounds([0, 255]) == (0.0, 255.0)
    for bad in [(1, 0), (0, float("inf")), (0,), "ab", None]:
        with pytest.raises(ValueError, match="`bounds`"):
            v.check_bounds(bad)


def test_images_and_labels():
    x = np.zeros((2, 3, 3, 1), np.float32)
    assert v.check_images(x, (0.0, 1.0)) is not None
    with pytest.raises(ValueError, match="at least one example"):
        v.check_images(x[:0], (0.0, 1.0))
    with pytest.raises(ValueError, match=r"Received: values in \[-0.5, -0.5\]"):
        v.check_images(x - 0.5, (0.0, 1.0))
    with pytest.raises(ValueError, match="labels in \\[0, 3\\).*Received: labels in \\[0, 3\\]"):
        v.check_labels(np.array([0, 3]), 2, num_classes=3)
    assert v.check_labels(np.array([0, 2], np.int32), 2, num_classes=3).dtype == np.int64
