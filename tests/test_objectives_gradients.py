"""Objectives (the targeted sign lives once) and the logits detection of `gradients.py`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from manidefense.attacks import gradients, objectives

LOGITS = np.array([[2.0, 1.0, -1.0, 0.5], [0.0, 3.0, 1.0, 2.0]], np.float32)
LABELS = np.array([0, 2])


def np_(t):
    return keras.ops.convert_to_numpy(t)


def test_cross_entropy_matches_numpy():
    shifted = LOGITS - LOGITS.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -log_p[np.arange(2), LABELS]
    np.testing.assert_allclose(np_(objectives.cross_entropy(LOGITS, LABELS)), expected, rtol=1e-5)


def test_margin_and_dlr_values():
    np.testing.assert_allclose(np_(objectives.margin(LOGITS, LABELS)), [1.0 - 2.0, 3.0 - 1.0])
    # DLR = margin / (z_pi1 - z_pi3), scale invariant.
    np.testing.assert_allclose(np_(objectives.dlr(LOGITS, LABELS)),
                               [-1.0 / (2.0 - 0.5), 2.0 / (3.0 - 1.0)], rtol=1e-5)
    np.testing.assert_allclose(np_(objectives.dlr(10 * LOGITS, LABELS)),
                               np_(objectives.dlr(LOGITS, LABELS)), rtol=1e-5)


def test_targeted_dlr_is_croce_and_heins_dlr_t():
    target = np.array([3, 3])
    # DLR-T = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), with the true label y kept.
    # Row 0 sorted: 2, 1, .5, -1; row 1 sorted: 3, 2, 1, 0.
    expected = [-(2.0 - 0.5) / (2.0 - (0.5 - 1.0) / 2), -(1.0 - 2.0) / (3.0 - (1.0 + 0.0) / 2)]
    value = np_(objectives.objective("dlr", LOGITS, LABELS, target))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(np_(objectives.objective("dlr", 10 * LOGITS, LABELS, target)),
                               value, rtol=1e-5)


def test_dlr_needs_enough_classes():
    with pytest.raises(ValueError, match="`loss`.*at least 4 classes.*3 classes"):
        objectives.objective("dlr", LOGITS[:, :3], LABELS % 3, np.array([1, 1]))
    with pytest.raises(ValueError, match="`loss`.*at least 3 classes.*2 classes"):
        objectives.objective("dlr", LOGITS[:, :2], LABELS % 2)
    assert np_(objectives.objective("dlr", LOGITS[:, :3], LABELS % 3)).shape == (2,)


@pytest.mark.parametrize("loss", objectives.LOSSES)
def test_targeted_objective_rises_towards_the_target(loss):
    target = np.array([3, 3])
    value = np_(objectives.objective(loss, LOGITS, LABELS, target))
    moved = LOGITS.copy()
    moved[:, 3] += 1.0
    assert np.all(np_(objectives.objective(loss, moved, LABELS, target)) > value)
    if loss == "dlr":
        return  # DLR's denominator moves with the logits; its values are checked above.
    # Untargeted: raising the true logit lowers the objective.
    up = LOGITS.copy()
    up[np.arange(2), LABELS] += 1.0
    assert np.all(np_(objectives.objective(loss, up, LABELS)) < np_(
        objectives.objective(loss, LOGITS, LABELS)))


def test_success():
    np.testing.assert_array_equal(np_(objectives.is_successful(LOGITS, LABELS)), [False, True])
    np.testing.assert_array_equal(np_(objectives.is_successful(LOGITS, LABELS, [0, 1])),
                                  [True, True])


def test_unknown_loss_raises():
    with pytest.raises(ValueError, match="`loss`.*'hinge'"):
        objectives.objective("hinge", LOGITS, LABELS)


def _model(head):
    inputs = keras.Input((3,))
    h = keras.layers.Dense(5, activation="relu")(inputs)
    if head == "dense_softmax":
        out = keras.layers.Dense(4, activation="softmax")(h)
    elif head == "softmax_layer":
        out = keras.layers.Softmax()(keras.layers.Dense(4)(h))
    elif head == "activation_layer":
        out = keras.layers.Activation("softmax")(keras.layers.Dense(4)(h))
    else:
        out = keras.layers.Dense(4)(h)
    return keras.Model(inputs, out)


@pytest.mark.parametrize("head", ["dense_softmax", "softmax_layer", "activation_layer"])
def test_softmax_heads_are_stripped_to_exact_logits(head):
    keras.utils.set_random_seed(0)
    model = _model(head)
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32) * 50
    logits = np_(gradients.logits_function(model)(x))
    probs = np_(model(x))
    # Exact logits: softmax of them is the model output, and they are not log-probabilities
    # (which would be <= 0 everywhere).
    np.testing.assert_allclose(np_(keras.ops.softmax(logits)), probs, atol=1e-6)
    assert logits.max() > 0
    assert gradients.output_kind(model, probs) == "stripped_softmax"


def test_logits_models_pass_through_and_probability_outputs_are_logged():
    model = _model("logits")
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(np_(gradients.logits_function(model)(x)), np_(model(x)))
    assert gradients.output_kind(model, model(x)) == "logits"
    probs = np.array([[0.25, 0.75], [1.0, 0.0]], np.float32)
    np.testing.assert_allclose(np_(gradients.as_logits(probs))[:, 0], np.log([0.25, 1.0]))
    assert np.all(np.isfinite(np_(gradients.as_logits(probs))))
    np.testing.assert_array_equal(np_(gradients.as_logits(probs, "logits")), probs)


def test_value_and_grad_gives_per_example_gradients():
    w = tf.constant([[1.0], [-2.0]])

    def fn(x):
        out = tf.matmul(x * x, w)[:, 0]
        return out, out

    x = tf.constant([[1.0, 2.0], [3.0, 0.5]])
    values, _, grad = gradients.value_and_grad(fn, x)
    np.testing.assert_allclose(grad.numpy(), [[2.0, -8.0], [6.0, -2.0]])
    np.testing.assert_allclose(values.numpy(), [1.0 - 8.0, 9.0 - 0.5])
