"""Argument checks shared by every public entry point.

Each check raises a `ValueError` that names the argument, says what was expected and what was
received, so a user never meets a silent NaN or a shape error deep inside a graph. Checks that
need values (NaN, range) run eagerly on the caller's arrays, once, before any graph is traced.
"""

import numbers
from collections.abc import Collection
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

#: Canonical norm names, in the order error messages list them.
NORMS = ("linf", "l2", "l1")
_NORM_ALIASES = {"inf": "linf", "linf": "linf", "l_inf": "linf", "2": "l2", "l2": "l2",
                 "1": "l1", "l1": "l1"}


def check_norm(norm: str | int | float) -> str:
    """Returns the canonical norm name (`"linf"`, `"l2"` or `"l1"`) or raises.

    Args:
        norm: a norm name or alias: `"linf"`, `"inf"`, `"l_inf"`, `float("inf")`, `"l2"`,
            `2`, `"l1"`, `1` (strings are case-insensitive).

    Returns:
        `"linf"`, `"l2"` or `"l1"`.

    Raises:
        ValueError: `norm` is not one of these.

    Example:
    >>> check_norm("Linf"), check_norm(2), check_norm(float("inf"))
    ('linf', 'l2', 'linf')
    """
    key = str(norm).lower() if isinstance(norm, (str, int, float)) else None
    if key == "inf" or (isinstance(norm, float) and np.isinf(norm)):
        return "linf"
    if key not in _NORM_ALIASES:
        raise ValueError(
            f"Argument `norm` must be one of {NORMS}. Received: norm={norm!r}"
        )
    return _NORM_ALIASES[key]


def check_non_negative(name: str, value: float) -> float:
    """Checks a finite real number >= 0 and returns it as a float.

    Args:
        name: the argument's name, for the error message.
        value: the value to check (a bool is rejected).

    Returns:
        `float(value)`.

    Raises:
        ValueError: `value` is not a finite real number >= 0.

    Example:
    >>> check_non_negative("eps", 0)
    0.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(
            f"Argument `{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    if value < 0:
        raise ValueError(f"Argument `{name}` must be >= 0. Received: {name}={value!r}")
    return float(value)


def check_positive(name: str, value: float) -> float:
    """Checks a finite real number > 0 and returns it as a float.

    Args:
        name: the argument's name, for the error message.
        value: the value to check.

    Returns:
        `float(value)`.

    Raises:
        ValueError: `value` is not a finite real number > 0.

    Example:
    >>> check_positive("sigma", 0.25)
    0.25
    """
    value = check_non_negative(name, value)
    if value == 0:
        raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={value!r}")
    return value


def check_positive_int(name: str, value: int | None, allow_none: bool = False) -> int | None:
    """Checks an integer >= 1 (or None when allowed) and returns it.

    Args:
        name: the argument's name, for the error message.
        value: the value to check (a bool is rejected).
        allow_none: accept (and return) `None`.

    Returns:
        `int(value)`, or `None` when `value` is `None` and `allow_none`.

    Raises:
        ValueError: `value` is not an integer >= 1.

    Example:
    >>> check_positive_int("num_steps", 10), check_positive_int("limit", None, allow_none=True)
    (10, None)
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"Argument `{name}` must be an integer >= 1. Received: {name}={value!r}"
        )
    return int(value)


def check_fraction(name: str, value: float, low: float = 0.0, high: float = 1.0) -> float:
    """Checks a number in the open interval (low, high) and returns it as a float.

    Args:
        name: the argument's name, for the error message.
        value: the value to check.
        low: exclusive lower end.
        high: exclusive upper end.

    Returns:
        `float(value)`.

    Raises:
        ValueError: `value` is not a real number with `low < value < high`.

    Example:
    >>> check_fraction("alpha", 0.001)
    0.001
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low < value < high:
        raise ValueError(
            f"Argument `{name}` must be a number in ({low}, {high}). Received: {name}={value!r}"
        )
    return float(value)


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """Checks that `value` is one of `choices` and returns it.

    Args:
        name: the argument's name, for the error message.
        value: the value to check.
        choices: the accepted values.

    Returns:
        `value`, unchanged.

    Raises:
        ValueError: `value` is not in `choices`.

    Example:
    >>> check_choice("loss", "dlr", ("ce", "margin", "dlr"))
    'dlr'
    """
    if value not in choices:
        raise ValueError(
            f"Argument `{name}` must be one of {tuple(choices)}. Received: {name}={value!r}"
        )
    return value


def check_bounds(bounds: tuple[float, float], name: str = "bounds") -> tuple[float, float]:
    """Checks `bounds=(low, high)` with finite low < high; returns a tuple of floats.

    Args:
        bounds: a pair `(low, high)` of numbers.
        name: the argument's name, for the error message.

    Returns:
        `(float(low), float(high))`.

    Raises:
        ValueError: `bounds` is not a pair of finite numbers with `low < high`.

    Example:
    >>> check_bounds([0, 255])
    (0.0, 255.0)
    """
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"Argument `{name}` must be a pair (low, high) of numbers. Received: {name}={bounds!r}"
        ) from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(
            f"Argument `{name}` must be finite with low < high. "
            f"Received: {name}={bounds!r}"
        )
    return (low, high)


def check_images(x: ArrayLike, bounds: tuple[float, float], name: str = "x") -> np.ndarray:
    """Checks a batch of inputs: float dtype, rank >= 2, finite, within `bounds`.

    Args:
        x: a batch of inputs `(batch, ...features)`.
        bounds: the valid range `(low, high)` (already checked by `check_bounds`).
        name: the argument's name, for the error message.

    Returns:
        The input as a float numpy array (its dtype unchanged).

    Raises:
        ValueError: `x` is not floating point, has rank < 2, is empty, holds NaN or Inf, or
            has values outside `bounds`.

    Example:
    >>> check_images(np.zeros((2, 28, 28, 1), "float32"), (0.0, 1.0)).shape
    (2, 28, 28, 1)
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"Argument `{name}` must be a floating-point array of inputs scaled to `bounds`. "
            f"Received: {name}.dtype={x.dtype}"
        )
    if x.ndim < 2:
        raise ValueError(
            f"Argument `{name}` must be a batch with rank >= 2 (batch, ...features). "
            f"Received: {name}.shape={x.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"Argument `{name}` must hold at least one example. Received: "
                         f"{name}.shape={x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x)))
        raise ValueError(
            f"Argument `{name}` must be finite. Received: {bad} NaN or Inf values in {name}"
        )
    low, high = bounds
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < low or x_max > high:
        raise ValueError(
            f"Argument `{name}` must lie within bounds={bounds}. "
            f"Received: values in [{x_min:.6g}, {x_max:.6g}]"
        )
    return x


def check_labels(
    y: ArrayLike, num_examples: int, name: str = "y", num_classes: int | None = None
) -> np.ndarray:
    """Checks integer class labels of shape (num_examples,), within [0, num_classes).

    Args:
        y: integer class labels, one per example (not one-hot).
        num_examples: the expected number of labels.
        name: the argument's name, for the error message.
        num_classes: if given, labels must lie in `[0, num_classes)`.

    Returns:
        The labels as an int64 numpy array.

    Raises:
        ValueError: `y` is not integer, has the wrong shape or holds an out-of-range label.

    Example:
    >>> check_labels([3, 1], num_examples=2, num_classes=10)
    array([3, 1])
    """
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"Argument `{name}` must hold integer class labels of shape ({num_examples},) "
            f"(not one-hot, not floats). Received: {name}.dtype={y.dtype}, "
            f"{name}.shape={y.shape}"
        )
    if y.shape != (num_examples,):
        raise ValueError(
            f"Argument `{name}` must have shape ({num_examples},), one label per example of "
            f"`x`. Received: {name}.shape={y.shape}"
        )
    if num_classes is not None and y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"Argument `{name}` must hold labels in [0, {num_classes}) for a model with "
            f"{num_classes} outputs. Received: labels in [{y.min()}, {y.max()}]"
        )
    return y.astype(np.int64)
