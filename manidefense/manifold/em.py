"""The non-parametric hard EM that fits RBF-CNN's patch templates: pure functions.

Each filter j is an isotropic Gaussian with mean `μ_j` (a patch) and variance `v_j`, where
`v_j` is the **trace** of the patch covariance — the mean squared distance of its patches to
`μ_j`, i.e. `σ_j²` of the paper's eq. 3 (the authors' code stores the same number). The match
score of a patch `z` (eq. 2) is its log-likelihood without the constant `-½ log 2π`:

    s(z, g_j) = -||z - μ_j||² / (2 v_j) - ½ log v_j

(the constant shifts every score equally; it is left out, as in the authors' code, because
the birth threshold and β1 defaults were tuned without it).

One EM step (`e_step` over a batch of patches, then `m_step`): each patch goes to the filter
with the highest score, or to a virtual "new filter" bucket when that score is below the
birth threshold; the M-step sets means and variances from the assigned patches (eq. 3),
deletes filters that attracted `count_threshold` patches or fewer, and turns the new bucket
into one new filter when it holds more than `min_birth_share` of the patches. The birth
threshold is `birth_log_likelihood + log α`, where α follows the authors' controller
(`update_alpha`), which slows births down as the number of filters grows past
`target_filters`.

Reference:
    Nandy, Hsu, Lee, "Approximate Manifold Defense Against Multiple Adversarial
    Perturbations", IJCNN 2020, §III-a; the authors' `ConvLayer.py`/`EMSteps.py` for the
    birth rule, the α controller and the safeguards.
"""

import numpy as np
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike


def score_weights(means: ArrayLike | tf.Tensor, variances: ArrayLike | tf.Tensor) -> tf.Tensor:
    """The matrix that turns augmented patches `[z, ||z||², 1]` into eq. 2 scores.

    `s_j = z · μ_j / v_j - ||z||² / (2 v_j) - ||μ_j||² / (2 v_j) - ½ log v_j`, so the scores of
    `N` patches against `K` filters are one `(N, d + 2) @ (d + 2, K)` product.

    Args:
        means: `(K, d)`.
        variances: `(K,)`, > 0.

    Returns:
        `(d + 2, K)`.

    Example:
    >>> weights = score_weights(np.zeros((2, 9), "float32"), np.array([1.0, 0.5], "float32"))
    >>> tuple(weights.shape)
    (11, 2)
    """
    return ops.concatenate([
        ops.transpose(means / variances[:, None]),
        (-0.5 / variances)[None, :],
        (-0.5 * ops.sum(ops.square(means), axis=-1) / variances
         - 0.5 * ops.log(variances))[None, :],
    ], axis=0)


def e_step(patches: ArrayLike | tf.Tensor, means: ArrayLike | tf.Tensor,
           variances: ArrayLike | tf.Tensor, birth_threshold: float,
           active: ArrayLike | tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Hard assignment and the sufficient statistics of every bucket.

    The scores are one matrix product with `score_weights`, so the E-step reads the patches
    once.

    Args:
        patches: `(N, d)` float32.
        means: the K filter means, `(K, d)` (K may be 0).
        variances: their variances, `(K,)`.
        birth_threshold: scalar; a patch whose best score is below it goes to the new bucket
            (index K). `-inf` disables births.
        active: optional `(K,)` bool mask; inactive filters (padding, so that shapes stay
            static) never win a patch.

    Returns:
        `(counts, sums, squared_deviations)` of shapes `(K + 1,)`, `(K + 1, d)`, `(K + 1,)`:
        per bucket, the number of patches, their sum, and the sum of their squared distances
        to the bucket's current mean (the new bucket's "mean" is 0).

    Example:
    >>> patches = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]], "float32")
    >>> means, variances = np.zeros((1, 2), "float32"), np.ones(1, "float32")
    >>> counts, sums, deviations = e_step(patches, means, variances, birth_threshold=-5.0)
    >>> np.asarray(counts)  # two patches near the filter, one far: the new bucket
    array([2., 1.], dtype=float32)
    """
    num_filters = ops.shape(means)[0]
    energy = ops.sum(ops.square(patches), axis=-1, keepdims=True)
    ones = ops.ones_like(energy)
    scores = ops.matmul(ops.concatenate([patches, energy, ones], axis=-1),
                        score_weights(means, variances))
    if active is not None:
        scores = ops.where(active[None, :], scores, -np.inf)
    # A column of -inf for the new bucket keeps argmax/max defined when K == 0.
    scores = ops.concatenate([scores, ops.full_like(energy, -np.inf)], axis=-1)
    best = ops.argmax(scores, axis=-1)
    best_score = ops.max(scores, axis=-1)
    is_new = best_score < birth_threshold
    bucket = ops.where(is_new, num_filters, best)
    # ||z - μ_b||² from the best score: s_b = -||z - μ_b||² / (2 v_b) - ½ log v_b.
    v_best = ops.take(ops.concatenate([variances, ops.ones((1,), variances.dtype)]), best)
    deviation = ops.where(is_new, energy[:, 0],
                          ops.maximum(-2.0 * v_best * (best_score + 0.5 * ops.log(v_best)),
                                      0.0))
    stats = ops.concatenate([ones, patches, deviation[:, None]], axis=-1)
    totals = ops.segment_sum(stats, bucket, num_segments=num_filters + 1)
    return totals[:, 0], totals[:, 1:-1], totals[:, -1]


def m_step(means: np.ndarray, variances: np.ndarray, counts: ArrayLike, sums: ArrayLike,
           deviations: ArrayLike, *, max_filters: int, count_threshold: int = 1,
           min_birth_share: float = 1e-3, min_variance: float = 1e-4,
           allow_birth: bool = True) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """Eq. 3 with the authors' safeguards, on numpy arrays.

    Args:
        means: the current K filter means, `(K, d)`.
        variances: their variances, `(K,)`.
        counts: `e_step` patch counts (K + 1 buckets, the last one new), summed over the
            step's patches.
        sums: `e_step` patch sums, `(K + 1, d)`.
        deviations: `e_step` squared deviations, `(K + 1,)`.
        max_filters: capacity; no birth beyond it.
        count_threshold: filters with this many patches or fewer are deleted.
        min_birth_share: the new bucket becomes a filter only above this share of patches.
        min_variance: variance floor (keeps scores finite and float16-safe).
        allow_birth: False after the birth phase (plain hard EM).

    Returns:
        `(means, variances, born, deleted)`: the surviving filters in their order, then the
        newborn one if any.

    Example:
    >>> patches = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]], "float32")
    >>> means, variances = np.zeros((1, 2), "float32"), np.ones(1, "float32")
    >>> counts, sums, deviations = e_step(patches, means, variances, birth_threshold=-5.0)
    >>> means, variances, born, deleted = m_step(means, variances, counts, sums, deviations,
    ...                                          max_filters=8)
    >>> means.tolist(), born, deleted
    ([[0.05..., 0.0], [5.0, 5.0]], True, 0)
    """
    k = len(means)
    counts = np.asarray(counts, "float64")
    sums, deviations = np.asarray(sums, "float64"), np.asarray(deviations, "float64")
    total = counts.sum()
    keep = counts[:k] > count_threshold
    n = np.maximum(counts[:k], 1.0)[:, None]
    new_means = sums[:k] / n
    # Σ||z - μ_new||² = Σ||z - μ_old||² - n ||μ_new - μ_old||²  (no E[z²] - μ² cancellation)
    shift = np.sum(np.square(new_means - means), axis=-1)
    new_variances = np.maximum(deviations[:k] / n[:, 0] - shift, min_variance)
    out_means, out_variances = [new_means[keep]], [new_variances[keep]]
    born = bool(allow_birth and keep.sum() < max_filters and total > 0
                and counts[k] / total > min_birth_share)
    if born:
        mean = sums[k] / counts[k]
        # the new bucket's deviations are Σ||z||², so Σ||z - μ||² = Σ||z||² - n ||μ||²
        variance = max(deviations[k] / counts[k] - np.sum(np.square(mean)), min_variance)
        out_means.append(mean[None])
        out_variances.append(np.array([variance]))
    return (np.concatenate(out_means).astype("float32"),
            np.concatenate(out_variances).astype("float32"), born, int(k - keep.sum()))


def update_alpha(alpha: float, num_filters: int, new_share: float, target_filters: float) -> float:
    """The authors' birth-rate controller: α grows while there are few filters and few
    unexplained patches, otherwise decays by about 0.05 per step.

    Args:
        alpha: the current α.
        num_filters: the current number of filters.
        new_share: share of the step's patches that went to the new bucket.
        target_filters: the filter count where births slow down.

    Returns:
        The next α.

    Example:
    >>> round(float(update_alpha(1.0, num_filters=3, new_share=0.0, target_filters=10)), 4)
    1.0971
    >>> round(float(update_alpha(1.0, num_filters=3, new_share=0.01, target_filters=10)), 4)
    0.95
    """
    denominator = ((1.0 + np.exp(min(num_filters / target_filters, 700.0)))
                   * (1.0 + np.exp(min(new_share / 1e-3, 700.0))))
    return alpha + 0.6913 / denominator - 0.05


def birth_threshold(alpha: float, birth_log_likelihood: float) -> float:
    """Score below which a patch joins the new bucket: `birth_log_likelihood + log α`
    (`-inf`, no births, once α ≤ 0).

    Args:
        alpha: the controller's α.
        birth_log_likelihood: the threshold at α = 1.

    Returns:
        The threshold, a float (`-inf` when α ≤ 0).

    Example:
    >>> float(birth_threshold(1.0, -2.5)), float(birth_threshold(0.0, -2.5))
    (-2.5, -inf)
    """
    return birth_log_likelihood + np.log(alpha) if alpha > 0 else -np.inf
