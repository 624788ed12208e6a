"""The attack contract, checked for every attack and every norm on one trained model."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import NUM_CLASSES, _small_model, accuracy, lp

import manidefense as md
from manidefense.attacks import FGSM, MIFGSM, PGD

ATTACKS = {"FGSM": FGSM, "PGD": PGD, "MIFGSM": MIFGSM}
NORMS = ("linf", "l2", "l1")
# Budgets at which random noise barely matters (≥ 90% accuracy) on the fixture problem.
EPS = {"linf": 0.1, "l2": 1.0, "l1": 4.0}
CASES = [(name, norm) for name in ATTACKS for norm in NORMS]
IDS = [f"{name}-{norm}" for name, norm in CASES]


def make(name, norm, eps=None, **kwargs):
    return ATTACKS[name](eps=EPS[norm] if eps is None else eps, norm=norm, **kwargs)


@pytest.mark.parametrize("name,norm", CASES, ids=IDS)
def test_eps_zero_is_identity(trained_model, data, name, norm):
    _, _, x, y = data
    x_adv = make(name, norm, eps=0.0, seed=0)(trained_model, x, y)
    np.testing.assert_array_equal(x_adv, x)


@pytest.mark.parametrize("name,norm", CASES, ids=IDS)
def test_budget_bounds_shape_dtype(trained_model, data, name, norm):
    _, _, x, y = data
    x64 = x[:32].astype(np.float64)
    x_adv = make(name, norm, seed=0)(trained_model, x64, y[:32])
    assert x_adv.shape == x64.shape and x_adv.dtype == np.float64
    assert np.all(lp(x_adv - x64, norm) <= EPS[norm] + 1e-6)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # The budget is used, not wasted: the typical perturbation sits near the boundary.
    assert np.median(lp(x_adv - x64, norm)) > 0.5 * EPS[norm]


def test_budget_holds_on_a_non_unit_box(trained_model, data):
    _, _, x, y = data
    x = x[:32] * 2.0 - 1.0
    model = keras.Sequential([keras.layers.Rescaling(0.5, offset=0.5), trained_model])
    for norm in NORMS:
        x_adv = PGD(eps=EPS[norm], norm=norm, bounds=(-1, 1), seed=0)(model, x, y[:32])
        assert np.all(lp(x_adv - x, norm) <= EPS[norm] + 1e-6)
        assert x_adv.min() >= -1.0 and x_adv.max() <= 1.0


@pytest.mark.parametrize("name,norm", CASES, ids=IDS)
def test_untargeted_strength(trained_model, data, name, norm):
    _, _, x, y = data
    clean = accuracy(trained_model, x, y)
    noise = np.clip(x + keras.ops.convert_to_numpy(md.attacks.norms.random_start(
        x.shape, EPS[norm], norm, seed=keras.random.SeedGenerator(1))), 0, 1)
    noisy = accuracy(trained_model, noise, y)
    attacked = accuracy(trained_model, make(name, norm, seed=0)(trained_model, x, y), y)
    assert clean > 0.9 and noisy > 0.85
    if name == "FGSM" and norm == "l1":
        # One sparse L1 step moves a single pixel: weak by nature, but it must still hurt.
        assert attacked < clean - 0.05
    else:
        assert attacked <= 0.2, f"{name}-{norm}: accuracy {attacked} (clean {clean})"


@pytest.mark.parametrize("name,norm", [c for c in CASES if c[0] != "FGSM"],
                         ids=[i for i in IDS if not i.startswith("FGSM")])
def test_targeted_strength(trained_model, data, name, norm):
    _, _, x, y = data
    target = (y + 1) % NUM_CLASSES
    x_adv = make(name, norm, eps=1.5 * EPS[norm], num_steps=40, seed=0)(
        trained_model, x, y, target=target)
    predicted = np.argmax(trained_model.predict(x_adv, verbose=0), axis=-1)
    assert np.mean(predicted == target) >= 0.8


@pytest.mark.parametrize("name,norm", CASES, ids=IDS)
def test_equal_seeds_equal_results(trained_model, data, name, norm):
    _, _, x, y = data
    a = make(name, norm, seed=3)(trained_model, x[:32], y[:32])
    b = make(name, norm, seed=3)(trained_model, x[:32], y[:32])
    np.testing.assert_array_equal(a, b)
    attack = make(name, norm, seed=3)
    np.testing.assert_array_equal(attack(trained_model, x[:32], y[:32]),
                                  attack(trained_model, x[:32], y[:32]))


def test_different_seeds_differ_with_random_start(trained_model, data):
    _, _, x, y = data
    a = PGD(eps=0.1, num_steps=2, seed=1)(trained_model, x[:16], y[:16])
    b = PGD(eps=0.1, num_steps=2, seed=2)(trained_model, x[:16], y[:16])
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name,norm", CASES, ids=IDS)
def test_config_round_trip(name, norm):
    attack = make(name, norm, seed=5, batch_size=64, loss="margin")
    config = attack.get_config()
    clone = type(attack).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
    assert type(restored) is type(attack) and restored.get_config() == config
    assert repr(attack).startswith(f"{name}(eps=") and f"norm='{norm}'" in repr(attack)


def test_restarts_keep_the_most_damaging_result(trained_model, data):
    _, _, x, y = data
    x, y = x[:64], y[:64]
    from manidefense.attacks.objectives import is_successful, objective

    def score(x_adv):
        logits = trained_model(x_adv)
        return (keras.ops.convert_to_numpy(objective("ce", logits, y)),
                keras.ops.convert_to_numpy(is_successful(logits, y)))

    one = score(PGD(eps=0.05, num_steps=5, seed=7)(trained_model, x, y))
    three = score(PGD(eps=0.05, num_steps=5, num_restarts=3, seed=7)(trained_model, x, y))
    assert np.all(three[1] >= one[1])
    same = three[1] == one[1]
    assert np.all(three[0][same] >= one[0][same] - 1e-5)
    assert three[1].sum() + (three[0][same] > one[0][same] + 1e-4).sum() > one[1].sum()


def test_batching_does_not_change_a_deterministic_attack(trained_model, data):
    _, _, x, y = data
    a = FGSM(eps=0.1, batch_size=128)(trained_model, x, y)
    b = FGSM(eps=0.1, batch_size=24)(trained_model, x, y)
    np.testing.assert_array_equal(a, b)


def test_progress_bar_only_when_verbose(trained_model, data, capsys):
    _, _, x, y = data
    FGSM(eps=0.1, batch_size=32, verbose=True)(trained_model, x, y)
    assert "128/128" in capsys.readouterr().out
    FGSM(eps=0.1, batch_size=32)(trained_model, x, y)
    assert capsys.readouterr().out == ""


def test_tensor_in_tensor_out(trained_model, data):
    _, _, x, y = data
    x_adv = PGD(eps=0.1, num_steps=3, seed=0)(trained_model, tf.constant(x[:8]), y[:8])
    assert tf.is_tensor(x_adv) and x_adv.shape == (8, 12, 12, 1)


def test_probability_models_are_attacked_through_their_logits(trained_model, data):
    """A softmax head is stripped: the attack sees exactly the same logits and gradients."""
    _, _, x, y = data
    probs = _small_model(softmax=True)
    probs.set_weights(trained_model.get_weights())
    for norm in NORMS:
        a = PGD(eps=EPS[norm], norm=norm, num_steps=5, seed=0)(trained_model, x[:32], y[:32])
        b = PGD(eps=EPS[norm], norm=norm, num_steps=5, seed=0)(probs, x[:32], y[:32])
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_opaque_probability_models_are_attacked_on_log_probabilities(trained_model, data):
    """A subclassed model hides its softmax: the rows-sum-to-one check takes log-probabilities."""
    _, _, x, y = data

    class Opaque(keras.Model):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, inputs):
            return keras.ops.softmax(self.inner(inputs))

    attack = PGD(eps=0.1, num_steps=10, seed=0)
    x_adv = attack(Opaque(trained_model), x, y)
    assert attack.output_kind_ == "probabilities"
    assert accuracy(trained_model, x_adv, y) <= 0.2


def test_functional_core_runs_inside_a_compiled_step(trained_model, data):
    _, _, x, y = data

    @tf.function
    def step(x, y):
        return md.attacks.projected_gradient_descent(
            trained_model, x, y, eps=0.1, step_size=0.01, num_steps=20, seed=0)

    x_adv = step(tf.constant(x), tf.constant(y)).numpy()
    assert np.all(lp(x_adv - x, "linf") <= 0.1 + 1e-6)
    assert accuracy(trained_model, x_adv, y) <= 0.2
    eager = md.attacks.projected_gradient_descent(trained_model, x, y, eps=0.1, norm="l2",
                                                  num_steps=5, seed=0)
    assert np.all(lp(keras.ops.convert_to_numpy(eager) - x, "l2") <= 0.1 + 1e-6)


def test_nan_gradients_never_leak(data):
    """A model whose outputs turn NaN off the clean point: the result falls back to x."""
    _, _, x, y = data

    class Broken(keras.Model):
        def call(self, inputs):
            flat = keras.ops.reshape(inputs, (-1, 144))
            logits = flat[:, :NUM_CLASSES]
            return logits + keras.ops.log(keras.ops.cast(flat[:, :1] == inputs[:, 0, 0, :1],
                                                          "float32") * 0.0 + 1.0) * 0.0 / 0.0

    x_adv = PGD(eps=0.1, num_steps=3, seed=0)(Broken(), x[:8], y[:8])
    assert np.all(np.isfinite(x_adv))


def _invalid_calls(x, y):
    bad_nan = x.copy()
    bad_nan[0, 0, 0, 0] = np.nan
    return [
        ((x, y[:-1]), "`y`.*shape"),
        ((x, y.astype(np.float32)), "`y`.*integer"),
        ((x, np.eye(NUM_CLASSES, dtype=np.int64)[y]), "`y`.*shape"),
        ((x, y + NUM_CLASSES), "`y`.*labels in \\[0, 4\\)"),
        ((x, -y - 1), "`y`.*labels in"),
        (((x * 255).astype(np.uint8), y), "`x`.*floating"),
        ((bad_nan, y), "`x`.*finite"),
        ((x + 1.0, y), "`x`.*bounds"),
        ((x[:, :, :, 0].reshape(len(x), -1)[:, 0], y), "`x`.*rank"),
    ]


def test_invalid_inputs_raise(trained_model, data):
    _, _, x, y = data
    attack = PGD(eps=0.1, num_steps=1)
    for args, pattern in _invalid_calls(x[:8], y[:8]):
        with pytest.raises(ValueError, match=pattern):
            attack(trained_model, *args)
    with pytest.raises(ValueError, match="`target`.*labels in"):
        attack(trained_model, x[:8], y[:8], target=y[:8] + 10)


def test_wrong_model_output_raises(data):
    _, _, x, y = data
    model = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="`model`.*num_classes"):
        PGD()(model, x[:4], y[:4])
