"""The evaluation checklist as code: each check returns a `Flag` or None.

Codes follow the checklist of research/peers-and-evaluation.md §5 (after Carlini et al. 2019,
"On Evaluating Adversarial Robustness"; Athalye et al. 2018; Croce & Hein 2020's flags). A flag
says what was seen, why it makes the evaluation untrustworthy, and what to do about it.

Severities: `"error"` — the robust accuracy is likely an overestimate; `"warning"` — a
weakness the user should fix; `"info"` — something the evaluation handled by itself.
"""

import dataclasses
import weakref
from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense.attacks import norms
from manidefense.attacks.gradients import logits_function, value_and_grad
from manidefense.attacks.objectives import cross_entropy, margin

#: Flag severities, most serious first.
SEVERITIES = ("error", "warning", "info")
#: A weaker attack (single-step, noise, black-box) may not add more than this share of n
#: broken points on top of the stronger white-box ones (the checklist's 0.2 pp, E13).
WEAKER_ATTACK_TOLERANCE = 0.002
#: More steps or restarts may not lower robust accuracy by more than this (E15, 0.5 pp).
CONVERGENCE_TOLERANCE = 0.005


@dataclasses.dataclass(frozen=True)
class Flag:
    """One checklist finding: `code` (e.g. "E9"), `severity`, `message`, `advice`.

    Attributes:
        code: the checklist item, `"E6"` .. `"E17"`.
        severity: `"error"`, `"warning"` or `"info"` (see `SEVERITIES`).
        message: what was seen.
        advice: what to do about it.

    Example:
    >>> flag = check_unbounded(accuracy=0.3, num_classes=10)
    >>> flag.code, flag.severity
    ('E10', 'error')
    """

    code: str
    severity: str
    message: str
    advice: str

    def to_dict(self) -> dict[str, str]:
        """The flag as a JSON-ready dict with the four fields.

        Returns:
            `{"code": ..., "severity": ..., "message": ..., "advice": ...}`.

        Example:
        >>> Flag("E6", "info", "The model ends in a softmax.", "Nothing to do.").to_dict()["code"]
        'E6'
        """
        return dataclasses.asdict(self)


def check_outputs(kind: str) -> Flag | None:
    """E6: the model returns probabilities instead of logits.

    Args:
        kind: what the model returns, `"logits"`, `"probabilities"` or `"stripped_softmax"`
            (a final softmax the attacks removed), as the attacks' probe found it.

    Returns:
        A `Flag` (warning for probabilities, info for a stripped softmax) or None.

    Example:
    >>> check_outputs("logits") is None, check_outputs("probabilities").severity
    (True, 'warning')
    """
    if kind == "probabilities":
        return Flag("E6", "warning",
                    "The model outputs probabilities; attacks used log-probabilities, whose "
                    "gradients vanish when the softmax saturates.",
                    "Expose the pre-softmax logits (or end the model with a Softmax layer, "
                    "which is stripped automatically).")
    if kind == "stripped_softmax":
        return Flag("E6", "info",
                    "The model ends in a softmax; attacks used the logits before it.",
                    "Nothing to do.")
    return None


_PREDICT = weakref.WeakKeyDictionary()


def predict_function(model: keras.Model,
                     feature_shape: Sequence[int]) -> Callable[[tf.Tensor], tf.Tensor]:
    """`model(x, training=False)` compiled once per model and feature shape (any batch size);
    shared by the checks and the evaluation's re-classification.

    Args:
        model: the classifier.
        feature_shape: the shape of one input, e.g. `(28, 28, 1)`.

    Returns:
        A `tf.function` taking a float32 batch `(batch, *feature_shape)`.

    Example:
    >>> predict = predict_function(model, (28, 28, 1))
    >>> predict(tf.constant(x)).shape
    TensorShape([8, 10])
    """
    key = tuple(feature_shape)
    try:
        functions = _PREDICT.setdefault(model, {})
    except TypeError:  # not weak-referenceable: compile without caching
        functions = {}
    if key not in functions:
        functions[key] = tf.function(lambda z: model(z, training=False), input_signature=[
            tf.TensorSpec((None, *key), tf.float32)])
    return functions[key]


def is_output_random(model: keras.Model, x: np.ndarray, repeats: int = 5,
                     atol: float = 1e-5) -> bool:
    """E7 detection: do repeated inference calls on the same batch disagree?

    Args:
        model: the classifier.
        x: a float batch.
        repeats: inference calls compared.
        atol: absolute tolerance of the comparison (relative tolerance 1e-4).

    Returns:
        True when two calls differ.

    Example:
    >>> is_output_random(model, x)
    False
    """
    fn = predict_function(model, x.shape[1:])
    x = tf.constant(x, tf.float32)
    first = ops.convert_to_numpy(fn(x))
    for _ in range(repeats - 1):
        again = ops.convert_to_numpy(fn(x))
        if not np.allclose(first, again, atol=atol, rtol=1e-4):
            return True
    return False


def check_randomness(randomized: bool, declared: bool, eot_samples: int) -> Flag | None:
    """E7: a randomized model attacked without (enough) expectation over transformation.

    Args:
        randomized: whether the model is randomized (declared or detected).
        declared: whether a layer declares `randomized = True`.
        eot_samples: random draws averaged per gradient.

    Returns:
        An error `Flag` when fewer than 20 draws were averaged, a warning when the randomness
        was detected but not declared, else None.

    Example:
    >>> check_randomness(True, declared=True, eot_samples=1).severity
    'error'
    >>> check_randomness(True, declared=True, eot_samples=20) is None
    True
    """
    if not randomized:
        return None
    if eot_samples < 20:
        return Flag("E7", "error",
                    f"The model is randomized but gradients were averaged over only "
                    f"{eot_samples} draw(s).",
                    "Use EoT with at least 20 draws (eot_samples=20, the default).")
    if not declared:
        return Flag("E7", "warning",
                    "The model's outputs change between identical calls although no layer "
                    "declares `randomized = True`; EoT was applied because the check saw it.",
                    "Declare `randomized = True` on the random layer so every tool knows.")
    return None


_GRADIENTS = weakref.WeakKeyDictionary()


def _gradient_function(model, output, feature_shape):
    """One compiled (margin, cross-entropy) input-gradient function per model and shape."""
    try:
        cache = _GRADIENTS.setdefault(model, {})
    except TypeError:
        cache = {}
    if (output, feature_shape) not in cache:
        logits_fn = logits_function(model, output)

        def grads(z, labels):
            def values(fn):
                return lambda v: (fn(logits_fn(v), labels), ())
            return (value_and_grad(values(margin), z)[2],
                    value_and_grad(values(cross_entropy), z)[2])

        cache[(output, feature_shape)] = tf.function(grads, input_signature=[
            tf.TensorSpec((None, *feature_shape), tf.float32), tf.TensorSpec((None,), tf.int64)])
    return cache[(output, feature_shape)]


def gradient_health(model: keras.Model, x: ArrayLike, labels: ArrayLike, eps: float, norm: str,
                    bounds: tuple[float, float], seed: int = 0,
                    output: str = "auto") -> dict[str, float]:
    """E9 measurements: shares of examples with zero or non-finite input gradients.

    Measured for the margin loss (which never saturates) and cross-entropy, at the clean
    points and at random points of the eps-ball.

    Args:
        model: the classifier.
        x: clean inputs within `bounds`.
        labels: integer labels.
        eps: radius of the random points.
        norm: `"linf"`, `"l2"` or `"l1"`.
        bounds: the valid input range.
        seed: seed of the random points.
        output: `"auto"`, `"logits"` or `"probabilities"`.

    Returns:
        A dict with `"zero_margin"`, `"zero_ce"`, `"non_finite"` fractions and `"n"`.

    Example:
    >>> health = gradient_health(model, x, y, eps=0.1, norm="linf", bounds=(0.0, 1.0))
    >>> health["n"], health["non_finite"]
    (16, 0.0)
    >>> check_gradients(health) is None
    True
    """
    x = ops.convert_to_tensor(x, dtype="float32")
    labels = ops.convert_to_tensor(labels, dtype="int64")
    grads = _gradient_function(model, output, tuple(x.shape[1:]))
    start = norms.clip_to_bounds(x + norms.random_start(ops.shape(x), eps, norm, seed=seed), bounds)
    zero_m, zero_ce, bad = [], [], []
    for z in (x, start):
        gm, gce = (ops.convert_to_numpy(g).reshape(len(x), -1) for g in grads(z, labels))
        bad.append(~np.all(np.isfinite(gm), axis=1) | ~np.all(np.isfinite(gce), axis=1))
        zero_m.append(np.all(gm == 0, axis=1))
        zero_ce.append(np.all(gce == 0, axis=1))
    return {"zero_margin": float(np.mean(np.concatenate(zero_m))),
            "zero_ce": float(np.mean(np.concatenate(zero_ce))),
            "non_finite": float(np.mean(np.concatenate(bad))), "n": 2 * len(x)}


def check_gradients(health: Mapping[str, float] | None) -> Flag | None:
    """E9: zero, NaN or infinite gradients mean shattered or vanishing gradients.

    Args:
        health: the dict of `gradient_health`, or None when it was not measured.

    Returns:
        An error `Flag` for zero margin or non-finite gradients, a warning for saturated
        cross-entropy only, else None.

    Example:
    >>> health = {"zero_margin": 0.0, "zero_ce": 0.25, "non_finite": 0.0, "n": 16}
    >>> check_gradients(health).severity
    'warning'
    """
    if health is None:
        return None
    if health["non_finite"] > 0 or health["zero_margin"] > 0:
        return Flag("E9", "error",
                    f"Input gradients are zero for {health['zero_margin']:.0%} and non-finite "
                    f"for {health['non_finite']:.0%} of clean and random-start points: gradient "
                    "attacks are blind here (shattered gradients).",
                    "Declare the non-differentiable layer (`non_differentiable = True`) so BPDA "
                    "wraps it, pass adaptive=True, and rely on gradient-free attacks (Square).")
    if health["zero_ce"] > 0:
        return Flag("E9", "warning",
                    f"Cross-entropy gradients underflow to zero on {health['zero_ce']:.0%} of "
                    "points (saturated softmax); margin-loss gradients are fine.",
                    "Include a margin or DLR attack (APGD-DLR, CW) in the cascade.")
    return None


def check_unbounded(accuracy: float | None, num_classes: int) -> Flag | None:
    """E10: an attack with an unlimited budget must reach about 0% accuracy.

    Args:
        accuracy: accuracy under the unbounded attack, or None when it was not run.
        num_classes: number of classes (the threshold is `min(5%, 1 / num_classes)`).

    Returns:
        An error `Flag` or None.

    Example:
    >>> check_unbounded(0.0, num_classes=10) is None, check_unbounded(0.3, 10).code
    (True, 'E10')
    """
    if accuracy is None:
        return None
    threshold = min(0.05, 1.0 / num_classes)
    if accuracy > threshold:
        return Flag("E10", "error",
                    f"With a budget covering the whole input range the attack still leaves "
                    f"{accuracy:.1%} accuracy (expected ≤ {threshold:.0%}).",
                    "The gradients are masked: use BPDA/EoT or gradient-free attacks.")
    return None


def check_monotone(eps_values: Sequence[float], accuracies: Sequence[float] | None,
                   n: int) -> Flag | None:
    """E11: robust accuracy must not rise with eps.

    Args:
        eps_values: increasing budgets.
        accuracies: robust accuracy at each budget, or None.
        n: number of examples (a rise of one example, or 0.5 pt, is tolerated).

    Returns:
        An error `Flag` naming the first rise, or None.

    Example:
    >>> check_monotone([0.1, 0.2, 0.3], [0.6, 0.4, 0.5], n=1000).message
    'The security curve is not monotone: accuracy rises from 40.0% to 50.0% when eps grows to 0.3.'
    """
    if accuracies is None or len(accuracies) < 2:
        return None
    allowance = max(CONVERGENCE_TOLERANCE, 1.0 / n)
    rises = [(accuracies[i - 1], accuracies[i], eps_values[i]) for i in range(1, len(accuracies))
             if accuracies[i] > accuracies[i - 1] + allowance]
    if rises:
        a, b, e = rises[0]
        return Flag("E11", "error",
                    f"The security curve is not monotone: accuracy rises from {a:.1%} to "
                    f"{b:.1%} when eps grows to {e:g}.",
                    "The attack does not use its budget: tune steps/step size, or the model "
                    "masks gradients.")
    return None


def check_weaker_attack(code: str, found: int | None, n: int, what: str) -> Flag | None:
    """E12 (single-step), E13 (black-box/transfer), E14 (noise): a weaker attack breaks
    points the white-box iterative attacks left standing.

    Args:
        code: `"E12"`, `"E13"` or `"E14"`.
        found: points the weaker attack broke that the white-box attacks did not, or None.
        n: number of examples.
        what: the attack's name, for the message.

    Returns:
        An error `Flag` when more than 0.2 pt of `n` (and at least one point) were found,
        else None.

    Example:
    >>> check_weaker_attack("E13", found=5, n=1000, what="Square").message
    'Square broke 5 of 1000 points (0.5%) that the white-box gradient attacks had left correct.'
    """
    # More than 0.2 pt of n, and at least one point (with small n any extra break counts).
    if found is None or found < 1 or found <= WEAKER_ATTACK_TOLERANCE * n:
        return None
    advice = {
        "E12": "Iterative attacks should dominate one step: raise steps, restarts or check "
               "the step size; a masked gradient near the data also causes this.",
        "E13": "Gradient-based attacks are being misled: apply BPDA/EoT or a surrogate; trust "
               "only the worst case.",
        "E14": "Random noise beats the gradient: the gradient is uninformative (masking).",
    }[code]
    return Flag(code, "error",
                f"{what} broke {found} of {n} points ({found / n:.1%}) that the white-box "
                "gradient attacks had left correct.", advice)


def check_convergence(extra: int | None, n: int) -> Flag | None:
    """E15: a stronger run (more steps and restarts) still changes the result.

    Args:
        extra: points the stronger run broke on top of the cascade, or None.
        n: number of examples.

    Returns:
        An error `Flag` when more than 0.5 pt of `n` were broken, else None.

    Example:
    >>> check_convergence(extra=2, n=1000) is None, check_convergence(12, 1000).code
    (True, 'E15')
    """
    if extra is None or extra / n <= CONVERGENCE_TOLERANCE:
        return None
    return Flag("E15", "error",
                f"Rerunning the strongest attack with 5× the steps and more restarts broke "
                f"{extra} more of {n} points ({extra / n:.1%} > 0.5 pt): not converged.",
                "Raise num_steps and num_restarts until the result stops changing.")


def check_validity(invalid: Mapping[str, int], n: int) -> Flag | None:
    """E17: attacks returned inputs outside the budget or bounds, or non-finite values.

    Args:
        invalid: `{attack name: count}` of invalid examples (empty: none).
        n: number of examples.

    Returns:
        An error `Flag` or None.

    Example:
    >>> check_validity({}, n=1000) is None, check_validity({"PGD": 3}, n=1000).code
    (True, 'E17')
    """
    if not invalid:
        return None
    details = ", ".join(f"{name}: {count}" for name, count in invalid.items())
    return Flag("E17", "error",
                f"Invalid adversarial examples (outside eps, outside bounds or NaN) were "
                f"returned and not counted: {details} (of {n} points).",
                "This is an attack bug or a wrong eps/bounds: report it.")
