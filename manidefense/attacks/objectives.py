"""Losses that attacks maximise, per example, on logits.

Every objective is written for the untargeted case ("move away from the true class") and
`objective()` turns it targeted in exactly one place: the loss is evaluated against the
target class and negated, so maximising it moves towards the target.

Reference:
    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", S&P 2017 (margin).
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (DLR).
"""

from collections.abc import Callable

import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense.validation import check_choice

#: Names of the built-in objectives.
LOSSES = ("ce", "margin", "dlr")


def _one_hot(labels, num_classes, dtype):
    return ops.one_hot(ops.cast(labels, "int32"), num_classes, dtype=dtype)


def _true_and_best_other(logits, labels):
    mask = _one_hot(labels, logits.shape[-1], logits.dtype)
    true = ops.sum(logits * mask, axis=-1)
    # Push the true class far down so it can never be the best "other" class.
    other = ops.max(logits - mask * 1e9, axis=-1)
    return true, other


def cross_entropy(logits: tf.Tensor, labels: ArrayLike | tf.Tensor) -> tf.Tensor:
    """Per-example softmax cross-entropy of `logits` against integer `labels`.

    Args:
        logits: `(batch, num_classes)` logits.
        labels: integer labels `(batch,)`.

    Returns:
        A `(batch,)` tensor.

    Example:
    >>> logits = np.array([[2.0, 1.0, 0.0, -1.0]], "float32")
    >>> cross_entropy(logits, np.array([0])).numpy()
    array([0.44018...], dtype=float32)
    """
    return ops.sparse_categorical_crossentropy(
        ops.cast(labels, "int32"), logits, from_logits=True
    )


def margin(logits: tf.Tensor, labels: ArrayLike | tf.Tensor) -> tf.Tensor:
    """Carlini–Wagner margin `max_{j != y} z_j - z_y`: positive once misclassified.

    Args:
        logits: `(batch, num_classes)` logits.
        labels: integer labels `(batch,)`.

    Returns:
        A `(batch,)` tensor.

    Example:
    >>> logits = np.array([[2.0, 1.0, 0.0, -1.0]], "float32")
    >>> margin(logits, np.array([0])).numpy(), margin(logits, np.array([2])).numpy()
    (array([-1.], dtype=float32), array([2.], dtype=float32))
    """
    true, other = _true_and_best_other(logits, labels)
    return other - true


def dlr(logits: tf.Tensor, labels: ArrayLike | tf.Tensor) -> tf.Tensor:
    """Difference of logits ratio: the margin divided by `z_pi1 - z_pi3` (scale invariant).

    Needs at least three classes.

    Args:
        logits: `(batch, num_classes)` logits.
        labels: integer labels `(batch,)`.

    Returns:
        A `(batch,)` tensor.

    Example:
    >>> logits = np.array([[2.0, 1.0, 0.0, -1.0]], "float32")
    >>> dlr(logits, np.array([0])).numpy()  # (1 - 2) / (2 - 0)
    array([-0.5], dtype=float32)
    """
    true, other = _true_and_best_other(logits, labels)
    top = ops.top_k(logits, 3, sorted=True)[0]
    return (other - true) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_gap_to_target(logits: tf.Tensor, labels: ArrayLike | tf.Tensor,
                      target: ArrayLike | tf.Tensor) -> tf.Tensor:
    """How far the target is from the true class, in DLR units: Croce & Hein's DLR-T negated.

    `(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`; `objective()` negates it, so an attack
    maximises DLR-T, the loss of APGD-T in Croce & Hein 2020 (the section on the DLR loss).
    The denominator skips `z_pi2`, which the target may become. Needs at least four classes.

    Args:
        logits: `(batch, num_classes)` logits.
        labels: true integer labels `(batch,)`.
        target: target integer labels `(batch,)`.

    Returns:
        A `(batch,)` tensor.

    Example:
    >>> logits = np.array([[2.0, 1.0, 0.0, -1.0]], "float32")
    >>> dlr_gap_to_target(logits, np.array([0]), np.array([3])).numpy()  # 3 / 2.5
    array([1.2], dtype=float32)
    """
    true = ops.sum(logits * _one_hot(labels, logits.shape[-1], logits.dtype), axis=-1)
    wanted = ops.sum(logits * _one_hot(target, logits.shape[-1], logits.dtype), axis=-1)
    top = ops.top_k(logits, 4, sorted=True)[0]
    return (true - wanted) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


_FUNCTIONS = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def objective(loss: str | Callable, logits: tf.Tensor, labels: ArrayLike | tf.Tensor,
              target: ArrayLike | tf.Tensor | None = None) -> tf.Tensor:
    """The per-example value an attack maximises.

    Args:
        loss: `"ce"`, `"margin"` or `"dlr"`, or a callable `(logits, labels, target) ->
            (batch,)` values (e.g. TRADES' KL divergence to the clean prediction).
        logits: `(batch, num_classes)` logits (or log-probabilities).
        labels: true integer labels, used when `target` is None.
        target: integer target labels, or None for an untargeted attack. With
            `loss="dlr"` the targeted loss is DLR-T (it also uses `labels`).

    Returns:
        A `(batch,)` tensor; larger is more adversarial.

    Example:
    >>> logits = np.array([[2.0, 1.0, 0.0, -1.0]], "float32")
    >>> objective("margin", logits, np.array([0])).numpy()  # untargeted: away from 0
    array([-1.], dtype=float32)
    >>> objective("margin", logits, np.array([0]), target=np.array([3])).numpy()  # towards 3
    array([-3.], dtype=float32)
    """
    if callable(loss):
        return loss(logits, labels, target)
    fn = _FUNCTIONS[check_choice("loss", loss, LOSSES)]
    _check_num_classes(loss, logits, target)
    if target is None:
        return fn(logits, labels)
    if loss == "dlr":
        # DLR-T keeps the true label in its numerator: pushing z_t above z_y is the goal.
        return -dlr_gap_to_target(logits, labels, target)
    return -fn(logits, target)


def _check_num_classes(loss, logits, target):
    """DLR ranks the top 3 (4 when targeted) logits; fewer classes would fail deep in a graph."""
    if loss != "dlr":
        return
    needed, kind = (3, "untargeted") if target is None else (4, "targeted")
    num_classes = logits.shape[-1]
    if num_classes is not None and num_classes < needed:
        raise ValueError(
            f"Argument `loss`='dlr' needs a model with at least {needed} classes for a {kind} "
            f"attack. Received: logits with {num_classes} classes"
        )


def is_successful(logits: tf.Tensor, labels: ArrayLike | tf.Tensor | None,
                  target: ArrayLike | tf.Tensor | None = None) -> tf.Tensor:
    """Per-example success: misclassified (untargeted) or classified as `target`.

    Args:
        logits: `(batch, num_classes)` logits (or probabilities).
        labels: true integer labels, used when `target` is None.
        target: integer target labels, or None.

    Returns:
        A boolean `(batch,)` tensor.

    Example:
    >>> logits = np.array([[2.0, 1.0, 0.0, -1.0]], "float32")
    >>> is_successful(logits, np.array([1])).numpy(), is_successful(logits, None, [0]).numpy()
    (array([ True]), array([ True]))
    """
    predicted = ops.cast(ops.argmax(logits, axis=-1), "int64")
    if target is None:
        return ops.not_equal(predicted, ops.cast(labels, "int64"))
    return ops.equal(predicted, ops.cast(target, "int64"))
