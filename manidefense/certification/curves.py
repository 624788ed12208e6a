"""Summaries of a certification: certified accuracy at each radius, and the average radius.

A test point counts as certified at radius r when CERTIFY returned its true class with a
radius of at least r (an abstention never counts). The average certified radius (ACR,
Zhai et al. 2020) is the mean over all test points of the radius, counting 0 for points that
are misclassified or abstained on.
"""

import numpy as np
from numpy.typing import ArrayLike


def _certified(radii, classes, labels):
    radii = np.asarray(radii, dtype=np.float64)
    classes, labels = np.asarray(classes), np.asarray(labels)
    if radii.ndim != 1 or classes.shape != radii.shape or labels.shape != radii.shape:
        raise ValueError(
            "Arguments `radii`, `classes` and `labels` must be 1-D arrays of the same length "
            f"(one entry per test point). Received: radii.shape={radii.shape}, "
            f"classes.shape={classes.shape}, labels.shape={labels.shape}"
        )
    if radii.size == 0:
        raise ValueError("Argument `radii` must hold at least one test point. Received: []")
    if not np.all(np.isfinite(radii)) or np.any(radii < 0):
        raise ValueError("Argument `radii` must be finite and >= 0. Received: values in "
                         f"[{radii.min()}, {radii.max()}]")
    correct = classes == labels
    return np.where(correct, radii, -np.inf), correct


def certified_accuracy(radii: np.ndarray, classes: np.ndarray, labels: np.ndarray,
                       thresholds: ArrayLike) -> np.ndarray:
    """Fraction of test points certified with their true class at each radius threshold.

    Args:
        radii: certified radii from `SmoothedClassifier.certify` (0 where it abstained).
        classes: the classes it returned (`ABSTAIN` = -1 where it abstained).
        labels: the true labels.
        thresholds: a radius or an array of radii r.

    Returns:
        A float (for a scalar threshold) or an array: mean of `(classes == labels) &
        (radii >= r)`. At r = 0 it is the smoothed classifier's accuracy without abstentions.

    Example:
    >>> certified_accuracy(radii, classes, y_test, [0.0, 0.25, 0.5])
    array([0.81, 0.67, 0.42])
    """
    certified, _ = _certified(radii, classes, labels)
    r = np.asarray(thresholds, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"Argument `thresholds` must be finite and >= 0. Received: {thresholds!r}")
    accuracy = np.mean(certified[None, :] >= r.reshape(-1)[:, None], axis=1)
    return float(accuracy[0]) if r.ndim == 0 else accuracy.reshape(r.shape)


def average_certified_radius(radii: np.ndarray, classes: np.ndarray,
                             labels: np.ndarray) -> float:
    """ACR: mean certified radius over all test points, 0 for wrong or abstained ones.

    Example:
    >>> average_certified_radius(radii, classes, y_test)
    0.43...
    """
    certified, correct = _certified(radii, classes, labels)
    return float(np.mean(np.where(correct, certified, 0.0)))
