"""BPDA and EoT: adaptive attacks succeed where the plain attack is fooled."""

import keras
import numpy as np
import pytest
from conftest import SHAPE, accuracy

from manidefense.attacks import PGD
from manidefense.attacks.adaptive import BPDA, EoT, is_non_differentiable, is_randomized


@keras.saving.register_keras_serializable(package="manidefense_tests")
class Quantize(keras.layers.Layer):
    """Rounds to `levels` grey levels: zero gradient almost everywhere."""

    non_differentiable = True

    def __init__(self, levels=8, **kwargs):
        super().__init__(**kwargs)
        self.levels = levels

    def call(self, inputs):
        return keras.ops.round(inputs * (self.levels - 1)) / (self.levels - 1)

    def get_config(self):
        return {**super().get_config(), "levels": self.levels}


class NoisyLogits(keras.layers.Layer):
    """Adds large random noise to the logits' gradient path: a randomized defense.

    The forward pass randomly flips the sign of a big random direction added to the input;
    single-sample gradients mostly see the noise, the expectation sees the classifier.
    """

    randomized = True

    def __init__(self, scale=0.5, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.seed_generator = keras.random.SeedGenerator(0)

    def call(self, inputs):
        noise = keras.random.uniform(keras.ops.shape(inputs), -1.0, 1.0,
                                     seed=self.seed_generator)
        return keras.ops.clip(inputs + self.scale * noise, 0.0, 1.0)


def test_bpda_forward_is_exact_and_gradient_is_the_surrogates(data):
    _, _, x, _ = data
    quantize = Quantize()
    wrapped = BPDA(quantize)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(wrapped(x[:4])),
                                  keras.ops.convert_to_numpy(quantize(x[:4])))
    import tensorflow as tf

    xt = tf.constant(x[:4])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        plain = tf.reduce_sum(quantize(xt))
        straight = tf.reduce_sum(wrapped(xt))
    plain_grad = tape.gradient(plain, xt)
    assert plain_grad is None or np.all(plain_grad.numpy() == 0)
    np.testing.assert_allclose(tape.gradient(straight, xt).numpy(), 1.0)


def test_bpda_lets_pgd_through_a_quantisation_layer(trained_model, data):
    _, _, x, y = data
    defended = keras.Sequential([keras.Input(SHAPE), Quantize(), trained_model])
    assert is_non_differentiable(defended)
    attack = PGD(eps=0.1, num_steps=20, seed=0)
    clean = accuracy(defended, x, y)
    plain = accuracy(defended, attack(defended, x, y), y)
    adaptive_model = keras.Sequential([keras.Input(SHAPE), BPDA(Quantize()), trained_model])
    assert not is_non_differentiable(adaptive_model)
    adaptive = accuracy(defended, attack(adaptive_model, x, y), y)
    # Zero gradients leave plain PGD with nothing but its random start.
    assert plain > clean - 0.15
    assert adaptive <= 0.2


def test_bpda_with_a_surrogate_and_a_shape_mismatch(trained_model, data):
    _, _, x, _ = data
    with pytest.raises(ValueError, match="surrogate"):
        BPDA(trained_model)(x[:2])
    wrapped = BPDA(trained_model, surrogate=trained_model)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wrapped(x[:2])),
                               keras.ops.convert_to_numpy(trained_model(x[:2])), atol=1e-6)


def test_eot_defeats_a_noise_defense_that_fools_single_samples(trained_model, data):
    _, _, x, y = data
    noisy = keras.Sequential([keras.Input(SHAPE), NoisyLogits(), trained_model])
    assert is_randomized(noisy) and is_randomized(EoT(noisy))

    def robust(model_for_attack):
        x_adv = PGD(eps=0.1, num_steps=10, seed=0)(model_for_attack, x, y)
        # Judge with the real randomized model, by majority over fresh draws.
        votes = np.stack([np.argmax(noisy.predict(x_adv, verbose=0), -1) for _ in range(9)])
        majority = np.array([np.bincount(v, minlength=4).argmax() for v in votes.T])
        return float(np.mean(majority == y))

    single, expected = robust(noisy), robust(EoT(noisy, num_samples=16))
    assert expected < single - 0.1


def test_eot_averages_logits_over_draws(data):
    _, _, x, _ = data
    noisy = keras.Sequential([keras.Input(SHAPE), NoisyLogits(scale=0.3),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    eot = EoT(noisy, num_samples=100)
    single = np.stack([keras.ops.convert_to_numpy(noisy(x[:2])) for _ in range(8)])
    averaged = np.stack([keras.ops.convert_to_numpy(eot(x[:2])) for _ in range(8)])
    assert averaged.shape == (8, 2, 3)
    # The mean of 100 independent draws varies 10× less than one draw (std / √100); allow 2.5×
    # for the sampling error of 8 repetitions.
    assert averaged.std(axis=0).mean() < 0.25 * single.std(axis=0).mean()
    np.testing.assert_allclose(averaged.mean(axis=0), single.mean(axis=0),
                               atol=3 * single.std(axis=0).max() / np.sqrt(8))


def test_wrappers_round_trip_through_config():
    for wrapper in (BPDA(Quantize(levels=4)), EoT(keras.layers.Dense(2), num_samples=3)):
        config = keras.saving.serialize_keras_object(wrapper)
        restored = keras.saving.deserialize_keras_object(config)
        assert type(restored) is type(wrapper)
    assert BPDA.from_config(BPDA(Quantize(levels=4)).get_config()).layer.levels == 4
    with pytest.raises(ValueError, match="`num_samples`"):
        EoT(keras.layers.Dense(2), num_samples=0)
