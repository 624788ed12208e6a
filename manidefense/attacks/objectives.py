"""Losses that attacks maximise, per example, on logits.

Every objective is written for the untargeted case ("move away from the true class") and
`objective()` turns it targeted in exactly one place: the loss is evaluated against the
target class and negated, so maximising it moves towards the target.

Reference:
    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", S&P 2017 (margin).
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (DLR).
"""

from keras import ops

from manidefense.validation import check_choice

LOSSES = ("ce", "margin", "dlr")


def _one_hot(labels, num_classes, dtype):
    return ops.one_hot(ops.cast(labels, "int32"), num_classes, dtype=dtype)


def _true_and_best_other(logits, labels):
    mask = _one_hot(labels, logits.shape[-1], logits.dtype)
    true = ops.sum(logits * mask, axis=-1)
    # Push the true class far down so it can never be the best "other" class.
    other = ops.max(logits - mask * 1e9, axis=-1)
    return true, other


def cross_entropy(logits, labels):
    """Per-example softmax cross-entropy of `logits` against integer `labels`."""
    return ops.sparse_categorical_crossentropy(
        ops.cast(labels, "int32"), logits, from_logits=True
    )


def margin(logits, labels):
    """Carlini–Wagner margin `max_{j != y} z_j - z_y`: positive once misclassified."""
    true, other = _true_and_best_other(logits, labels)
    return other - true


def dlr(logits, labels):
    """Difference of logits ratio: the margin divided by `z_pi1 - z_pi3` (scale invariant).

    Needs at least three classes.
    """
    true, other = _true_and_best_other(logits, labels)
    top = ops.top_k(logits, 3, sorted=True)[0]
    return (other - true) / (top[:, 0] - top[:, 2] + 1e-12)


_FUNCTIONS = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def objective(loss, logits, labels, target=None):
    """The per-example value an attack maximises.

    Args:
        loss: `"ce"`, `"margin"` or `"dlr"`.
        logits: `(batch, num_classes)` logits (or log-probabilities).
        labels: true integer labels, used when `target` is None.
        target: integer target labels, or None for an untargeted attack.

    Returns:
        A `(batch,)` tensor; larger is more adversarial.
    """
    fn = _FUNCTIONS[check_choice("loss", loss, LOSSES)]
    if target is None:
        return fn(logits, labels)
    return -fn(logits, target)


def is_successful(logits, labels, target=None):
    """Per-example success: misclassified (untargeted) or classified as `target`."""
    predicted = ops.cast(ops.argmax(logits, axis=-1), "int64")
    if target is None:
        return ops.not_equal(predicted, ops.cast(labels, "int64"))
    return ops.equal(predicted, ops.cast(target, "int64"))
