"""Exact binomial statistics, shared by the evaluation report and certification.

Quantiles come from tensorflow-probability (no SciPy at run time); it is imported on first use
because it is slow to import.
"""

import numpy as np
from numpy.typing import ArrayLike

from manidefense.validation import check_fraction


def clopper_pearson(
    successes: ArrayLike, trials: ArrayLike, alpha: float = 0.05
) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
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
    k, n = _counts(successes, trials)
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


def lower_confidence_bound(
    successes: ArrayLike, trials: ArrayLike, alpha: float = 0.001
) -> float | np.ndarray:
    """One-sided Clopper–Pearson lower bound: `P(p >= lower) >= 1 - alpha`.

    It is `Beta(k, n - k + 1).quantile(alpha)` (0 when `k = 0`), the lower end of a two-sided
    interval at level `2 * alpha`; with `k = n` it is `alpha ** (1 / n)`. Cohen et al.'s
    CERTIFY bounds the top class's probability with it.

    Args:
        successes: number of successes `k` (an int or an array of ints).
        trials: number of trials `n` (same shape as `successes`, or a scalar).
        alpha: probability that the true proportion lies below the bound.

    Returns:
        The bound as a Python float (a float64 array for array inputs).

    Example:
    >>> lower_confidence_bound(100, 100, alpha=0.001)  # 0.001 ** (1 / 100)
    0.9332...
    """
    alpha = check_fraction("alpha", alpha, 0.0, 1.0)
    k, n = _counts(successes, trials)
    import tensorflow_probability as tfp  # noqa: PLC0415 - slow import, only when needed

    kf, nf = k.astype(np.float64), n.astype(np.float64)
    lower = tfp.distributions.Beta(np.maximum(kf, 1.0), nf - kf + 1.0).quantile(alpha)
    lower = np.where(k == 0, 0.0, np.asarray(lower, dtype=np.float64))
    return float(lower) if lower.ndim == 0 else lower


def binomial_test(successes: ArrayLike, trials: ArrayLike) -> float | np.ndarray:
    """Two-sided exact binomial test of `p = 1/2`: the p-value of `k` successes in `n` trials.

    For `p = 1/2` the distribution is symmetric, so the p-value is
    `min(1, 2 P(X >= max(k, n - k)))` with `X ~ Binomial(n, 1/2)`, and the tail is the
    regularised incomplete beta function `P(X >= m) = I_{1/2}(m, n - m + 1)`. Cohen et al.'s
    PREDICT abstains when the top two classes' counts fail this test.

    Args:
        successes: number of successes `k` (an int or an array of ints).
        trials: number of trials `n >= 1`.

    Returns:
        The p-value as a Python float (a float64 array for array inputs).

    Example:
    >>> binomial_test(9, 10)  # 2 * (10 + 1) / 1024
    0.0214...
    """
    k, n = _counts(successes, trials)
    import tensorflow as tf  # noqa: PLC0415 - keeps `import manidefense.stats` light

    m = np.maximum(k, n - k).astype(np.float64)
    nf = n.astype(np.float64)
    # m >= n / 2 > 0, so both Beta parameters are positive.
    tail = tf.math.betainc(m, nf - m + 1.0, np.full_like(m, 0.5)).numpy()
    p_value = np.minimum(1.0, 2.0 * tail)
    return float(p_value) if p_value.ndim == 0 else p_value


def _counts(successes, trials):
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
    return k, n
