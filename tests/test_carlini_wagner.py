"""Minimum-distance attacks: CarliniWagnerL2, CarliniWagnerLinf and EAD.

On a linear two-class model the minimal distance to the decision boundary is known in closed
form (|w·x + b| / ||w||_q with q the dual norm), so the attacks are checked against the
optimum itself; on the fixture CNN they are checked for success, bounds, targets and against
PGD.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import NUM_CLASSES, accuracy, lp

from manidefense.attacks import PGD
from manidefense.attacks.carlini_wagner import (
    CarliniWagnerL2,
    CarliniWagnerLinf,
    binary_search,
)
from manidefense.attacks.ead import EAD
from manidefense.attacks.gradients import logits_function

BOX = (-1.0, 1.0)
# Short runs on the CNN; c grows ×10 for CW-L∞ to keep the test fast.
SETTINGS = {
    "l2": (CarliniWagnerL2, {"num_steps": 100}),
    "linf": (CarliniWagnerLinf, {"num_steps": 50, "const_factor": 10.0}),
    "l1": (EAD, {"num_steps": 100}),
}
NORMS = list(SETTINGS)


def make(norm, **overrides):
    cls, kwargs = SETTINGS[norm]
    return cls(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def linear():
    """A linear 2-class model and 32 points at L2 distance 0.1–0.3 from its boundary."""
    rng = np.random.default_rng(0)
    d = 10
    w, b = rng.normal(size=d), 0.1
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(2)])
    model.layers[0].set_weights([np.stack([np.zeros(d), w], 1).astype(np.float32),
                                 np.array([0.0, b], np.float32)])
    p = rng.uniform(-0.2, 0.2, size=(32, d))
    side = rng.uniform(0.1, 0.3, size=32) * rng.choice([-1.0, 1.0], size=32)
    x = p - ((p @ w + b) / (w @ w))[:, None] * w + side[:, None] * w / np.linalg.norm(w)
    x = x.astype(np.float32)
    m = x.astype(np.float64) @ w + b
    optimum = {"l2": np.abs(m) / np.linalg.norm(w), "linf": np.abs(m) / np.abs(w).sum(),
               "l1": np.abs(m) / np.abs(w).max()}
    # The closed forms hold only if the optimal points lie inside the box: check they do.
    assert np.all(np.abs(x) + optimum["l2"][:, None] < 0.9)
    assert np.all(np.abs(x).max(axis=1) + optimum["l1"] < 0.9)
    return model, x, (m > 0).astype(np.int64), optimum, lambda z: (z @ w + b > 0).astype(int)


# The linear-model runs: library defaults except for shorter optimisation.
LINEAR = {
    # 12 binary-search steps instead of 9: the search over c, not Adam, limits the precision.
    "l2": lambda **kw: CarliniWagnerL2(num_steps=200, binary_search_steps=12, bounds=BOX, **kw),
    "linf": lambda **kw: CarliniWagnerLinf(num_steps=50, bounds=BOX, **kw),
    "l1": lambda **kw: EAD(num_steps=200, decision_rule="l1", bounds=BOX, **kw),
    "en": lambda **kw: EAD(num_steps=200, bounds=BOX, **kw),
}


@pytest.fixture(scope="module")
def linear_results(linear):
    model, x, y, _, _ = linear
    return {key: attack()(model, x, y) for key, attack in LINEAR.items()}


# (result key, norm, largest allowed ratio to the optimum, largest allowed median ratio)
LINEAR_CASES = [("l2", "l2", 1.01, 1.002), ("linf", "linf", 1.10, 1.06),
                ("l1", "l1", 1.10, 1.05), ("en", "l1", 1.6, 1.4)]


@pytest.mark.parametrize("key,norm,worst,median", LINEAR_CASES, ids=[c[0] for c in LINEAR_CASES])
def test_linear_model_distance_matches_the_closed_form_optimum(linear, linear_results, key, norm,
                                                               worst, median):
    _, x, y, optimum, predict = linear
    x_adv = linear_results[key]
    assert np.all(predict(x_adv.astype(np.float64)) != y), "every result must be adversarial"
    ratio = lp(x_adv - x, norm) / optimum[norm]
    # Really adversarial, so never closer than the optimum (float32 slack only) ...
    assert ratio.min() >= 1.0 - 1e-4
    # ... and close to it: within 1% for CW-L2 (the issue's bar; with the default 9 search
    # steps the worst point is 1.2% off), measured worst 1.065 (L∞), 1.046 (EAD-L1 rule),
    # 1.41 (EAD-EN rule, which trades L1 for L2 by design); medians 1.0006, 1.037, 1.024, 1.27.
    assert ratio.max() <= worst and np.median(ratio) <= median


@pytest.mark.parametrize("norm", NORMS)
def test_eps_returns_x_beyond_the_budget_and_the_same_result_within(linear, linear_results,
                                                                   norm):
    model, x, y, _, _ = linear
    free = linear_results[norm]
    dist = lp(free - x, norm)
    eps = float(np.median(dist))
    x_adv = LINEAR[norm](eps=eps)(model, x, y)
    np.testing.assert_array_equal(x_adv, np.where((dist <= eps)[:, None], free, x))
    assert np.all(lp(x_adv - x, norm) <= eps + 1e-6)
    zero = make(norm, bounds=BOX, eps=0.0, num_steps=5)
    np.testing.assert_array_equal(zero(model, x, y), x)


@pytest.fixture(scope="module")
def cnn_results(trained_model, data):
    _, _, x, y = data
    x = x[:32].astype(np.float64)
    return x, y[:32], {norm: make(norm)(trained_model, x, y[:32]) for norm in NORMS}


@pytest.mark.parametrize("norm", NORMS)
def test_cnn_success_bounds_and_unchanged_failures(trained_model, cnn_results, norm):
    x, y, results = cnn_results
    x_adv = results[norm]
    assert x_adv.shape == x.shape and x_adv.dtype == np.float64
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    predicted = np.argmax(trained_model.predict(x_adv, verbose=0), axis=-1)
    assert np.mean(predicted != y) >= 0.9  # measured: 1.0 for all three
    changed = np.any(x_adv != x, axis=(1, 2, 3))
    assert np.all(predicted[changed] != y[changed]), "a changed example must be adversarial"


def test_cw_l2_is_at_least_as_strong_as_pgd(trained_model, cnn_results):
    x, y, results = cnn_results
    eps = 0.4
    far = lp(results["l2"] - x, "l2") > eps
    cw = np.mean((np.argmax(trained_model.predict(results["l2"], verbose=0), -1) == y) | far)
    pgd = accuracy(trained_model, PGD(eps=eps, norm="l2", num_steps=50, seed=0)(
        trained_model, x, y), y)
    assert cw <= pgd + 0.03, f"CW-L2 robust accuracy {cw} vs PGD-50 {pgd}"  # measured 0.53 vs 0.66


@pytest.mark.parametrize("norm", NORMS)
def test_targeted_reaches_the_target(trained_model, data, norm):
    _, _, x, y = data
    x, y = x[:16], y[:16]
    target = (y + 1) % NUM_CLASSES
    x_adv = make(norm)(trained_model, x, y, target=target)
    predicted = np.argmax(trained_model.predict(x_adv, verbose=0), axis=-1)
    assert np.mean(predicted == target) >= 0.9  # measured: 1.0
    changed = np.any(x_adv != x, axis=(1, 2, 3))
    assert np.all(predicted[changed] == target[changed])


@pytest.mark.parametrize("norm", NORMS)
def test_unbreakable_examples_come_back_unchanged(norm):
    """A constant classifier cannot be fooled: every input, box edges included, is returned."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.layers[0].set_weights([np.zeros((4, 3), np.float32), np.array([5.0, 0, 0], np.float32)])
    x = np.array([[0.0, 1.0, 0.3, 0.7], [1.0, 1.0, 0.0, 0.5]], np.float32)
    x_adv = make(norm, num_steps=5)(model, x, np.zeros(2, np.int64))
    np.testing.assert_array_equal(x_adv, x)


@pytest.mark.parametrize("norm", NORMS)
def test_deterministic_whatever_the_seed(linear, linear_results, norm):
    """The attacks use no randomness: a seeded rerun (twice) equals the unseeded run."""
    model, x, y, _, _ = linear
    attack = LINEAR[norm](seed=7)
    np.testing.assert_array_equal(attack(model, x, y), linear_results[norm])
    np.testing.assert_array_equal(attack(model, x, y), linear_results[norm])


@pytest.mark.parametrize("cls", [CarliniWagnerL2, CarliniWagnerLinf, EAD],
                         ids=["CarliniWagnerL2", "CarliniWagnerLinf", "EAD"])
def test_every_step_runs_in_the_graph(linear, cls):
    """The traced graph does not grow with the number of steps: no Python loop unrolls them."""
    model, x, y, _, _ = linear
    logits_fn = logits_function(model, "logits")

    def graph_size(**kwargs):
        attack = cls(bounds=BOX, **kwargs)
        attack._reset_seed()
        fn = tf.function(lambda a, b: attack._attack_batch(logits_fn, a, b, None))
        graph_def = fn.get_concrete_function(tf.constant(x[:4]), tf.constant(y[:4])).graph \
            .as_graph_def(add_shapes=False)
        # Loop bodies live in the function library: count their nodes too.
        return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)

    few = {"num_steps": 2} if cls is CarliniWagnerLinf else {"num_steps": 2,
                                                              "binary_search_steps": 2}
    many = {"num_steps": 500} if cls is CarliniWagnerLinf else {"num_steps": 500,
                                                                 "binary_search_steps": 9}
    assert graph_size(**few) == graph_size(**many)


def test_binary_search_multiplies_by_ten_then_bisects():
    """Each example succeeds exactly when c ≥ its threshold; the search must close in on it."""
    threshold = tf.constant([3e-3, 0.5, 70.0])
    x = tf.zeros((3, 1))
    tried = []

    def run_round(const, best_dist, best_x):
        tried.append(const)
        found = const >= threshold
        return found, tf.where(found, tf.minimum(best_dist, const), best_dist), best_x

    best, _ = binary_search(run_round, x, 1e-3, 12)
    best = best.numpy()
    assert np.all(best >= threshold.numpy()) and np.all(best <= threshold.numpy() * 1.05)
    never, _ = binary_search(lambda c, d, b: (tf.zeros(3, "bool"), d, b), x, 1e-3, 3)
    assert np.all(np.isinf(never.numpy()))


CONFIGS = [
    (CarliniWagnerL2, {"confidence": 1.0, "learning_rate": 0.02, "num_steps": 10,
                       "binary_search_steps": 3, "initial_const": 0.1, "abort_early": False,
                       "eps": 0.5}),
    (CarliniWagnerLinf, {"confidence": 0.5, "num_steps": 10, "initial_const": 1e-3,
                         "largest_const": 5.0, "const_factor": 4.0, "initial_tau": 0.5,
                         "tau_decrease": 0.8, "min_tau": 0.01, "eps": 0.1}),
    (EAD, {"beta": 0.1, "confidence": 2.0, "num_steps": 10, "decision_rule": "l1", "eps": 3.0}),
]


@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=[c[0].__name__ for c in CONFIGS])
def test_config_round_trip(cls, kwargs):
    attack = cls(seed=5, batch_size=64, bounds=(-1, 1), **kwargs)
    config = attack.get_config()
    assert all(config[k] == v for k, v in kwargs.items())
    assert cls.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
    assert type(restored) is cls and restored.get_config() == config
    assert repr(attack).startswith(f"{cls.__name__}(")
