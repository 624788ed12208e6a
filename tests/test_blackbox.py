"""Gradient-free attacks (Square, SPSA): the attack contract, query accounting, and strength
on the fixture model, also through gradient masking where PGD fails."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import NUM_CLASSES, accuracy, lp
from keras import ops

from manidefense.attacks.gradients import value_and_grad
from manidefense.attacks.norms import random_start
from manidefense.attacks.objectives import is_successful
from manidefense.attacks.pgd import PGD
from manidefense.attacks.spsa import SPSA, spsa_gradient
from manidefense.attacks.square import Square, p_schedule, square_search

EPS = {"linf": 0.1, "l2": 1.0}
# Modest budgets keep the file fast; the strength tests below show they suffice.
BUDGET = {"Square": {"num_queries": 300}, "SPSA": {"num_steps": 20, "num_samples": 64}}
SMALL = {"Square": {"num_queries": 10}, "SPSA": {"num_steps": 2, "num_samples": 8}}
ATTACKS = {"Square": Square, "SPSA": SPSA}
CASES = [(name, norm) for name in ATTACKS for norm in EPS]
IDS = [f"{name}-{norm}" for name, norm in CASES]
N = 32  # examples per strength test


def make(name, norm, eps=None, budget=BUDGET, **kwargs):
    kwargs = {**budget[name], **kwargs}
    return ATTACKS[name](eps=EPS[norm] if eps is None else eps, norm=norm, **kwargs)


def noise_accuracy(model, x, y, norm, eps):
    """Accuracy under uniform noise from the same eps-ball: the bar an attack must clear."""
    delta = random_start(x.shape, eps, norm, seed=keras.random.SeedGenerator(1))
    return accuracy(model, np.clip(x + ops.convert_to_numpy(delta), 0.0, 1.0), y)


def quantized(model, sealed=False):
    """`model` behind 8-bit input rounding, whose gradient is None: gradient masking.

    When `sealed`, asking for a gradient of the model at all raises, so an attack that runs
    on it has provably used model outputs only.
    """

    @tf.custom_gradient
    def seal(z):
        def grad(upstream):
            raise AssertionError("a gradient of the model was requested")
        return tf.identity(z), grad

    def quantize(z):
        z = ops.round(z * 255.0) / 255.0
        return seal(z) if sealed else z

    shape = tuple(model.inputs[0].shape[1:])
    return keras.Sequential([keras.Input(shape), keras.layers.Lambda(quantize), model])


@pytest.mark.parametrize("name,norm", CASES, ids=IDS)
def test_eps_zero_is_identity(trained_model, data, name, norm):
    _, _, x, y = data
    np.testing.assert_array_equal(make(name, norm, eps=0.0, seed=0)(trained_model, x, y), x)


@pytest.fixture(scope="module")
def shared():
    """One attack per case, shared so that its compiled graph is traced once for the file."""
    return {case: make(*case, seed=0) for case in CASES}


@pytest.mark.parametrize("name,norm", CASES, ids=IDS)
def test_strength_within_budget(trained_model, data, shared, name, norm):
    _, _, x, y = data
    x64, y = x[:N].astype(np.float64), y[:N]
    x_adv = shared[name, norm](trained_model, x64, y)
    assert x_adv.shape == x64.shape and x_adv.dtype == np.float64
    assert np.all(lp(x_adv - x64, norm) <= EPS[norm] + 1e-6)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.median(lp(x_adv - x64, norm)) > 0.5 * EPS[norm]
    clean = accuracy(trained_model, x64, y)
    noisy = noise_accuracy(trained_model, x[:N], y, norm, EPS[norm])
    attacked = accuracy(trained_model, x_adv, y)
    print(f"{name}-{norm}: clean {clean:.3f} noise {noisy:.3f} attacked {attacked:.3f}")
    assert clean > 0.9 and noisy > 0.85
    assert attacked <= 0.2, f"{name}-{norm}: accuracy {attacked} (noise {noisy})"


def test_pgd_fails_on_the_masked_model(trained_model, data):
    """The harness of the next test: rounding masks gradients, the seal catches any."""
    _, _, x, y = data
    x, y = x[:N], y[:N]
    masked = quantized(trained_model)
    noisy = noise_accuracy(masked, x, y, "linf", EPS["linf"])
    pgd = accuracy(masked, PGD(eps=EPS["linf"], num_steps=10, seed=0)(masked, x, y), y)
    print(f"quantized model: noise {noisy:.3f} PGD {pgd:.3f}")
    assert noisy > 0.85 and pgd > 0.8  # PGD sees zero gradients: no better than noise
    sealed = quantized(trained_model, sealed=True)
    with pytest.raises(AssertionError, match="gradient"):
        value_and_grad(lambda z: (sealed(z)[:, 0], None), tf.constant(x[:8]))


@pytest.mark.parametrize("name,norm", [("Square", "linf"), ("SPSA", "linf")])
def test_breaks_the_masked_model_without_any_gradient(trained_model, data, name, norm):
    _, _, x, y = data
    x, y = x[:N], y[:N]
    sealed = quantized(trained_model, sealed=True)
    noisy = noise_accuracy(sealed, x, y, norm, EPS[norm])
    x_adv = make(name, norm, seed=0)(sealed, x, y)
    attacked = accuracy(sealed, x_adv, y)
    print(f"quantized model, {name}-{norm}: noise {noisy:.3f} attacked {attacked:.3f}")
    assert np.all(lp(x_adv - x, norm) <= EPS[norm] + 1e-6)
    assert noisy > 0.85 and attacked <= 0.2


@pytest.mark.parametrize("name", ATTACKS)
def test_targeted(trained_model, data, name):
    _, _, x, y = data
    x, y = x[:16], y[:16]
    target = (y + 1) % NUM_CLASSES
    x_adv = make(name, "linf", eps=0.15, seed=0)(trained_model, x, y, target=target)
    predicted = np.argmax(trained_model.predict(x_adv, verbose=0), axis=-1)
    assert np.mean(predicted == target) >= 0.8


@pytest.mark.parametrize("name,norm", CASES, ids=IDS)
def test_seeds_and_budget_on_a_non_unit_box(trained_model, data, name, norm):
    _, _, x, y = data
    x, y = x[:16] * 2.0 - 1.0, y[:16]
    model = keras.Sequential([keras.layers.Rescaling(0.5, offset=0.5), trained_model])
    attack = make(name, norm, budget=SMALL, bounds=(-1, 1), seed=3)
    a = attack(model, x, y)
    assert np.all(lp(a - x, norm) <= EPS[norm] + 1e-6)
    assert a.min() >= -1.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, attack(model, x, y))
    # The same compiled graph with a new seed: randomness must not be frozen at trace time.
    attack.seed = 4
    assert not np.array_equal(a, attack(model, x, y))


def test_square_counts_queries_per_example_and_stops_early(trained_model, data):
    _, _, x, y = data
    x = tf.constant(x[:32])
    predicted = np.argmax(trained_model.predict(x, verbose=0), axis=-1)
    labels = np.where(np.arange(32) < 4, (predicted + 1) % NUM_CLASSES, y[:32])  # 4 already wrong
    labels = tf.constant(labels.astype(np.int64))

    def run(eps, num_queries):
        seed = keras.random.SeedGenerator(0)
        fn = tf.function(lambda x, y: square_search(
            lambda z: trained_model(z, training=False), x, y, eps=eps, norm="linf",
            num_queries=num_queries, p_init=0.8, seed=seed))
        x_adv, queries = fn(x, labels)
        success = is_successful(trained_model(x_adv), labels)
        return ops.convert_to_numpy(x_adv), ops.convert_to_numpy(queries), \
            ops.convert_to_numpy(success)

    wrong = predicted != ops.convert_to_numpy(labels)  # the 4 relabelled ones and natural errors
    x_adv, queries, success = run(0.02, 40)
    assert np.all(queries[wrong] == 0) and np.all(x_adv[wrong] == ops.convert_to_numpy(x)[wrong])
    assert np.all(queries[~wrong] >= 1) and np.all(queries <= 40)
    assert np.all(queries[~success] == 40)  # unbroken examples spent the whole budget
    assert (~success).sum() > 0
    x_adv, queries, success = run(0.3, 1000)
    assert success.all() and queries.max() < 1000  # the loop stopped once all were broken


def test_p_schedule_follows_the_reference_milestones():
    def p(i, n):
        return float(p_schedule(0.8, i, n))

    expected = {(10, 10000): 0.8, (11, 10000): 0.4, (51, 10000): 0.2, (8000, 10000): 0.8 / 256,
                (8001, 10000): 0.8 / 512, (1, 1000): 0.8, (2, 1000): 0.4, (999, 1000): 0.8 / 512}
    for (i, n), value in expected.items():
        assert p(i, n) == pytest.approx(value, rel=1e-6), (i, n)


def test_spsa_gradient_estimate_is_unbiased_with_chunks():
    """On a linear loss <w, x> the estimate averages v v^T w, whose mean is exactly w."""
    w = keras.random.normal((4, 12, 12, 1), seed=0)
    x = keras.random.uniform((4, 12, 12, 1), seed=1)

    def linear(z):  # z holds the 4 examples tiled over the directions of one chunk
        return ops.sum(ops.reshape(z * ops.tile(w, (ops.shape(z)[0] // 4, 1, 1, 1)), (-1, 144)),
                       axis=1)

    seed = keras.random.SeedGenerator(0)
    estimate = tf.function(lambda x: spsa_gradient(
        linear, x, perturbation_size=0.01, num_samples=300, chunk=256, seed=seed))(x)
    w, g = ops.convert_to_numpy(w).reshape(4, -1), ops.convert_to_numpy(estimate).reshape(4, -1)
    # <g, w> / |w|^2 has mean 1 and std ~ sqrt(2 / 300) ≈ 0.08; an unmasked surplus of 212
    # directions or a wrong divisor would move it to ~1.7.
    ratio = (g * w).sum(axis=1) / (w * w).sum(axis=1)
    np.testing.assert_allclose(ratio, 1.0, atol=0.3)


@pytest.mark.parametrize("name,norm", CASES, ids=IDS)
def test_config_round_trip(name, norm):
    attack = make(name, norm, seed=5, batch_size=64, loss="ce")
    config = attack.get_config()
    assert type(attack).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
    assert type(restored) is type(attack) and restored.get_config() == config
    assert repr(attack).startswith(f"{name}(eps=") and f"norm='{norm}'" in repr(attack)


def test_margin_is_the_default_loss():
    assert Square().loss == "margin" and SPSA().loss == "margin"


def test_square_rejects_inputs_that_are_not_images(data):
    x = data[2][:4].reshape(4, -1)
    model = keras.Sequential([keras.Input((144,)), keras.layers.Dense(NUM_CLASSES)])
    with pytest.raises(ValueError, match="`x`.*height, width, channels"):
        Square(num_queries=2)(model, x, data[3][:4])
