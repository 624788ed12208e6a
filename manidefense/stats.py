"""Exact binomial confidence intervals, shared by the evaluation report and certification.

Quantiles come from tensorflow-probability (no SciPy at run time); it is imported on first use
because it is slow to import.
"""

import numpy as np

from manidefense.validation import check_fraction


def clopper_pearson(successes, trials, alpha=0.05):
    """Two-sided Clopper–Pearson interval for a binomial proportion.

    The interval inverts two one-sided binomial tests, each at level `alpha / 2`:
    `lower = Beta(k, n - k + 1).quantile(alpha / 2)` and
    `upper = Beta(k + 1, n - k).quantile(1 - alpha / 2)`, with `lower = 0` when `k = 0` and
    `upper = 1` when `k = n`. It is conservative: its coverage is at least `1 - alpha`.

    Args:
        successes: number of successes `k` (an int or an array of ints).
        trials: number of trials `n` (same shape as `successes`, or a scalar).
        alpha: total error probability, e.g. 0.05 for a 95% interval.

    Returns:
        `(lower, upper)` as Python floats (or float64 arrays for array inputs).

    Example:
    >>> clopper_pearson(5, 10)
    (0.1870..., 0.8129...)
    """
    alpha = check_fraction("alpha", alpha, 0.0, 1.0)
    k = np.asarray(successes)
    n = np.asarray(trials)
    if not (np.issubdtype(k.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)):
        raise ValueError(
            "Arguments `successes` and `trials` must be integers. "
            f"Received: successes={successes!r}, trials={trials!r}"
        )
    k, n = np.broadcast_arrays(k, n)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(
            "Arguments `successes` and `trials` must satisfy 0 <= successes <= trials and "
            f"trials >= 1. Received: successes={successes!r}, trials={trials!r}"
        )
    import tensorflow_probability as tfp  # noqa: PLC0415 - slow import, only when needed

    kf, nf = k.astype(np.float64), n.astype(np.float64)
    # Beta parameters must be positive: substitute 1 where the bound is pinned to 0 or 1.
    lower = tfp.distributions.Beta(np.maximum(kf, 1.0), nf - kf + 1.0).quantile(alpha / 2)
    upper = tfp.distributions.Beta(kf + 1.0, np.maximum(nf - kf, 1.0)).quantile(1 - alpha / 2)
    lower = np.where(k == 0, 0.0, np.asarray(lower, dtype=np.float64))
    upper = np.where(k == n, 1.0, np.asarray(upper, dtype=np.float64))
    if lower.ndim == 0:
        return float(lower), float(upper)
    return lower, upper
