"""The evaluation checklist as code: each check returns a `Flag` or None.

Codes follow the checklist of research/peers-and-evaluation.md §5 (after Carlini et al. 2019,
"On Evaluating Adversarial Robustness"; Athalye et al. 2018; Croce & Hein 2020's flags). A flag
says what was seen, why it makes the evaluation untrustworthy, and what to do about it.

Severities: `"error"` — the robust accuracy is likely an overestimate; `"warning"` — a
weakness the user should fix; `"info"` — something the evaluation handled by itself.
"""

import dataclasses
import weakref

import numpy as np
import tensorflow as tf
from keras import ops

from manidefense.attacks import norms
from manidefense.attacks.gradients import logits_function, value_and_grad
from manidefense.attacks.objectives import cross_entropy, margin

SEVERITIES = ("error", "warning", "info")
# A weaker attack (single-step, noise, black-box) may not add more than this share of n
# broken points on top of the stronger white-box ones (the checklist's 0.2 pp, E13).
WEAKER_ATTACK_TOLERANCE = 0.002
# More steps or restarts may not lower robust accuracy by more than this (E15, 0.5 pp).
CONVERGENCE_TOLERANCE = 0.005


@dataclasses.dataclass(frozen=True)
class Flag:
    """One checklist finding: `code` (e.g. "E9"), `severity`, `message`, `advice`."""

    code: str
    severity: str
    message: str
    advice: str

    def to_dict(self):
        return dataclasses.asdict(self)


def check_outputs(kind):
    """E6: the model returns probabilities instead of logits."""
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


def predict_function(model, feature_shape):
    """`model(x, training=False)` compiled once per model and feature shape (any batch size);
    shared by the checks and the evaluation's re-classification."""
    key = tuple(feature_shape)
    try:
        functions = _PREDICT.setdefault(model, {})
    except TypeError:  # not weak-referenceable: compile without caching
        functions = {}
    if key not in functions:
        functions[key] = tf.function(lambda z: model(z, training=False), input_signature=[
            tf.TensorSpec((None, *key), tf.float32)])
    return functions[key]


def is_output_random(model, x, repeats=5, atol=1e-5):
    """E7 detection: do repeated inference calls on the same batch disagree?"""
    fn = predict_function(model, x.shape[1:])
    x = tf.constant(x, tf.float32)
    first = ops.convert_to_numpy(fn(x))
    for _ in range(repeats - 1):
        again = ops.convert_to_numpy(fn(x))
        if not np.allclose(first, again, atol=atol, rtol=1e-4):
            return True
    return False


def check_randomness(randomized, declared, eot_samples):
    """E7: a randomized model attacked without (enough) expectation over transformation."""
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


def gradient_health(model, x, labels, eps, norm, bounds, seed=0, output="auto"):
    """E9 measurements: shares of examples with zero or non-finite input gradients.

    Measured for the margin loss (which never saturates) and cross-entropy, at the clean
    points and at random points of the eps-ball.

    Returns:
        A dict with `"zero_margin"`, `"zero_ce"`, `"non_finite"` fractions and `"n"`.
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


def check_gradients(health):
    """E9: zero, NaN or infinite gradients mean shattered or vanishing gradients."""
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


def check_unbounded(accuracy, num_classes):
    """E10: an attack with an unlimited budget must reach about 0% accuracy."""
    if accuracy is None:
        return None
    threshold = min(0.05, 1.0 / num_classes)
    if accuracy > threshold:
        return Flag("E10", "error",
                    f"With a budget covering the whole input range the attack still leaves "
                    f"{accuracy:.1%} accuracy (expected ≤ {threshold:.0%}).",
                    "The gradients are masked: use BPDA/EoT or gradient-free attacks.")
    return None


def check_monotone(eps_values, accuracies, n):
    """E11: robust accuracy must not rise with eps."""
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


def check_weaker_attack(code, found, n, what):
    """E12 (single-step), E13 (black-box/transfer), E14 (noise): a weaker attack breaks
    points the white-box iterative attacks left standing."""
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


def check_convergence(extra, n):
    """E15: a stronger run (more steps and restarts) still changes the result."""
    if extra is None or extra / n <= CONVERGENCE_TOLERANCE:
        return None
    return Flag("E15", "error",
                f"Rerunning the strongest attack with 5× the steps and more restarts broke "
                f"{extra} more of {n} points ({extra / n:.1%} > 0.5 pt): not converged.",
                "Raise num_steps and num_restarts until the result stops changing.")


def check_validity(invalid, n):
    """E17: attacks returned inputs outside the budget or bounds, or non-finite values."""
    if not invalid:
        return None
    details = ", ".join(f"{name}: {count}" for name, count in invalid.items())
    return Flag("E17", "error",
                f"Invalid adversarial examples (outside eps, outside bounds or NaN) were "
                f"returned and not counted: {details} (of {n} points).",
                "This is an attack bug or a wrong eps/bounds: report it.")
