"""Argument checks shared by every public entry point.

Each check raises a `ValueError` that names the argument, says what was expected and what was
received, so a user never meets a silent NaN or a shape error deep inside a graph. Checks that
need values (NaN, range) run eagerly on the caller's arrays, once, before any graph is traced.
"""

import numbers

import numpy as np

NORMS = ("linf", "l2", "l1")
_NORM_ALIASES = {"inf": "linf", "linf": "linf", "l_inf": "linf", "2": "l2", "l2": "l2",
                 "1": "l1", "l1": "l1"}


def check_norm(norm):
    """Returns the canonical norm name (`"linf"`, `"l2"` or `"l1"`) or raises."""
    key = str(norm).lower() if isinstance(norm, (str, int, float)) else None
    if key == "inf" or (isinstance(norm, float) and np.isinf(norm)):
        return "linf"
    if key not in _NORM_ALIASES:
        raise ValueError(
            f"Argument `norm` must be one of {NORMS}. Received: norm={norm!r}"
        )
    return _NORM_ALIASES[key]


def check_non_negative(name, value):
    """Checks a finite real number >= 0 and returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(
            f"Argument `{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    if value < 0:
        raise ValueError(f"Argument `{name}` must be >= 0. Received: {name}={value!r}")
    return float(value)


def check_positive(name, value):
    """Checks a finite real number > 0 and returns it as a float."""
    value = check_non_negative(name, value)
    if value == 0:
        raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={value!r}")
    return value


def check_positive_int(name, value, allow_none=False):
    """Checks an integer >= 1 (or None when allowed) and returns it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"Argument `{name}` must be an integer >= 1. Received: {name}={value!r}"
        )
    return int(value)


def check_fraction(name, value, low=0.0, high=1.0):
    """Checks a number in the open interval (low, high) and returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low < value < high:
        raise ValueError(
            f"Argument `{name}` must be a number in ({low}, {high}). Received: {name}={value!r}"
        )
    return float(value)


def check_choice(name, value, choices):
    """Checks that `value` is one of `choices` and returns it."""
    if value not in choices:
        raise ValueError(
            f"Argument `{name}` must be one of {tuple(choices)}. Received: {name}={value!r}"
        )
    return value


def check_bounds(bounds, name="bounds"):
    """Checks `bounds=(low, high)` with finite low < high; returns a tuple of floats."""
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


def check_images(x, bounds, name="x"):
    """Checks a batch of inputs: float dtype, rank >= 2, finite, within `bounds`.

    Returns:
        The input as a float numpy array (its dtype unchanged).
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


def check_labels(y, num_examples, name="y", num_classes=None):
    """Checks integer class labels of shape (num_examples,), within [0, num_classes).

    Returns:
        The labels as an int64 numpy array.
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
