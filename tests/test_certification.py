"""Randomized smoothing: certificates checked against closed forms and known geometry."""

import math
import subprocess
import sys
from statistics import NormalDist

import keras
import numpy as np
import pytest

from manidefense.attacks import adaptive_model
from manidefense.certification import (
    ABSTAIN,
    SmoothedClassifier,
    average_certified_radius,
    certified_accuracy,
    max_certifiable_radius,
)
from manidefense.stats import binomial_test, lower_confidence_bound

D = 16  # features of the hand-built models


def linear_model(direction, offset):
    """Two classes; class 1 where direction·x > offset (a unit direction: the signed L2
    distance to the boundary is direction·x - offset)."""
    inputs = keras.Input((D,))
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(inputs))
    kernel = np.zeros((D, 2), np.float32)
    kernel[:, 1] = direction
    dense.set_weights([kernel, np.array([0.0, -offset], np.float32)])
    return model


def constant_model(label, num_classes=3):
    inputs = keras.Input((D,))
    dense = keras.layers.Dense(num_classes)
    model = keras.Model(inputs, dense(inputs))
    bias = np.zeros(num_classes, np.float32)
    bias[label] = 5.0
    dense.set_weights([np.zeros((D, num_classes), np.float32), bias])
    return model


@pytest.fixture(scope="module")
def geometry():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=D)
    direction /= np.linalg.norm(direction)
    x = rng.uniform(0.0, 1.0, (12, D)).astype(np.float32)
    offset = float(np.median(x @ direction))
    return direction.astype(np.float32), offset, x


# === Closed forms ===

@pytest.mark.parametrize("n", [100, 1000])
def test_constant_classifier_certifies_every_point_at_the_closed_form_radius(geometry, n):
    x = geometry[2]
    smoothed = SmoothedClassifier(constant_model(2), num_classes=3, sigma=0.4, seed=0)
    classes, radii = smoothed.certify(x, 20, n, alpha=0.001)
    # n votes out of n: the one-sided lower bound is alpha^(1/n), independently computed.
    expected = 0.4 * NormalDist().inv_cdf(0.001 ** (1 / n))
    assert np.all(classes == 2)
    np.testing.assert_allclose(radii, expected, rtol=1e-9)
    assert max_certifiable_radius(0.4, n, 0.001) == pytest.approx(expected, rel=1e-9)
    assert np.all(smoothed.predict(x, 50) == 2)


def test_linear_classifier_radius_never_exceeds_the_true_distance(geometry):
    direction, offset, x = geometry
    smoothed = SmoothedClassifier(linear_model(direction, offset), 2, sigma=0.25, seed=1)
    classes, radii = smoothed.certify(x, 100, 20_000, alpha=0.001)
    signed = x @ direction - offset
    distance, side = np.abs(signed), (signed > 0).astype(int)
    certified = classes != ABSTAIN
    assert certified.sum() >= 8, "points far from the boundary must be certified"
    assert np.all(classes[certified] == side[certified])
    assert np.all(radii <= distance + 1e-9)
    # ...and is close to it when the cap sigma·Φ⁻¹(α^(1/n)) does not bind: the bound is tight
    # up to the confidence margin (Cohen et al.: the radius is exact for linear classifiers).
    cap = max_certifiable_radius(0.25, 20_000, 0.001)
    free = certified & (distance < 0.8 * cap)
    assert free.any() and np.all(radii[free] > distance[free] - 0.08)


def test_noise_is_added_to_the_inputs_with_standard_deviation_sigma(geometry):
    # For a linear model, P(class 1) = Φ(signed distance / σ) exactly.
    direction, offset, x = geometry
    sigma, n = 0.3, 20_000
    smoothed = SmoothedClassifier(linear_model(direction, offset), 2, sigma=sigma, seed=2)
    counts = smoothed.sample_counts(x, n, batch_size=4096)
    assert counts.dtype == np.int64 and np.all(counts.sum(axis=1) == n)
    p = np.array([NormalDist().cdf(d / sigma) for d in x @ direction - offset])
    np.testing.assert_allclose(counts[:, 1] / n, p, atol=4.5 * np.sqrt(0.25 / n))


def test_counts_are_complete_when_the_last_round_is_partial(geometry):
    smoothed = SmoothedClassifier(constant_model(1), 3, sigma=0.1, seed=0)
    counts = smoothed.sample_counts(geometry[2], 250, batch_size=100)
    np.testing.assert_array_equal(counts, np.tile([0, 250, 0], (len(counts), 1)))


def test_ties_abstain(geometry):
    # Points on the boundary: both classes have probability exactly 1/2.
    direction = geometry[0]
    offset = 0.5 * float(direction.sum())  # the boundary passes through the centre
    r = np.random.default_rng(1).uniform(-0.2, 0.2, (8, D))
    on_boundary = (0.5 + r - (r @ direction)[:, None] * direction).astype(np.float32)
    assert np.abs(on_boundary @ direction - offset).max() < 1e-5
    assert on_boundary.min() >= 0 and on_boundary.max() <= 1
    smoothed = SmoothedClassifier(linear_model(direction, offset), 2, sigma=0.25, seed=3)
    assert np.all(smoothed.predict(on_boundary, 1000, alpha=0.001) == ABSTAIN)
    classes, radii = smoothed.certify(on_boundary, 100, 1000, alpha=0.001)
    assert np.all(classes == ABSTAIN) and np.all(radii == 0.0)


def test_binomial_statistics_match_exact_sums():
    for k, n in [(9, 10), (30, 50), (25, 50), (0, 7), (60, 100)]:
        m = max(k, n - k)
        tail = sum(math.comb(n, i) for i in range(m, n + 1)) / 2**n
        assert binomial_test(k, n) == pytest.approx(min(1.0, 2 * tail), rel=1e-9)
    # One-sided lower bound at alpha is the lower end of the two-sided interval at 2 alpha,
    # and for k = n it is alpha^(1/n).
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** 0.01, rel=1e-9)
    assert lower_confidence_bound(0, 10) == 0.0
    # Binomial(100, 0.3935) puts probability 0.025 on >= 50: the exact bound for 50/100 at 0.025.
    lower = lower_confidence_bound(50, 100, 0.025)
    tail = sum(math.comb(100, i) * lower**i * (1 - lower) ** (100 - i) for i in range(50, 101))
    assert tail == pytest.approx(0.025, rel=1e-6)


# === Reproducibility, the Keras model, training ===

def test_equal_seeds_reproduce_and_different_seeds_differ(geometry):
    direction, offset, x = geometry
    model = linear_model(direction, offset)

    def run(seed):
        return SmoothedClassifier(model, 2, sigma=0.5, seed=seed).sample_counts(x, 500)

    first = SmoothedClassifier(model, 2, sigma=0.5, seed=7)
    a = first.certify(x, 50, 500)
    np.testing.assert_array_equal(a[1], first.certify(x, 50, 500)[1])  # restarts per call
    np.testing.assert_array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_call_returns_vote_frequencies_and_declares_itself(geometry):
    direction, offset, x = geometry
    smoothed = SmoothedClassifier(linear_model(direction, offset), 2, sigma=0.25,
                                  num_samples=64, seed=0)
    votes = keras.ops.convert_to_numpy(smoothed(x))
    assert votes.shape == (len(x), 2)
    np.testing.assert_allclose(votes.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(votes * 64, np.round(votes * 64), atol=1e-4)  # counts / 64
    assert smoothed.randomized and smoothed.non_differentiable
    # Adaptive attacks: BPDA with the soft smoothed classifier as backward pass, no extra EoT
    # (one call already averages 64 draws).
    wrapped, notes = adaptive_model(smoothed, eot_samples=20)
    x_t = keras.ops.convert_to_tensor(x)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x_t)
        out = wrapped(x_t)
        loss = keras.ops.sum(keras.ops.log(out[:, 1] + 1e-6))
    grad = tape.gradient(loss, x_t).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
    assert any("BPDA" in note for note in notes)


def test_evaluate_robustness_attacks_the_smoothed_classifier_adaptively(trained_model, data):
    from manidefense.evaluation import evaluate_robustness

    xt, yt = data[2][:16], data[3][:16]
    smoothed = SmoothedClassifier(trained_model, 4, sigma=0.05, num_samples=8, seed=0)
    report = evaluate_robustness(smoothed, xt, yt, ["pgd"], eps=0.1, norm="linf",
                                 checks="none", eot_samples=16, seed=0)
    notes = " ".join(report.threat_model["adaptive"])
    assert "BPDA around the whole model" in notes and "soft_votes" in notes
    assert "EoT over 16 random draws" in notes
    assert report.robust_accuracy < report.clean_accuracy


def test_fit_is_gaussian_augmentation_which_for_least_squares_is_ridge_regression():
    # E||W(x + e) + b - y||^2 = ||Wx + b - y||^2 + sigma^2 ||W||_F^2: trained through the
    # smoothed classifier with fresh noise every step, a linear model converges to the ridge
    # solution (penalty n sigma^2 on W, none on b), far from ordinary least squares.
    rng = np.random.default_rng(0)
    n, d, sigma = 256, 6, 0.5
    x = rng.uniform(0, 1, (n, d)).astype(np.float32)
    y = (x @ rng.normal(size=(d, 2)) + 0.1 * rng.normal(size=(n, 2))).astype(np.float32)
    design = np.hstack([x, np.ones((n, 1))]).astype(np.float64)
    penalty = np.diag([n * sigma**2] * d + [0.0])
    ridge = np.linalg.solve(design.T @ design + penalty, design.T @ y)
    ols = np.linalg.lstsq(design, y, rcond=None)[0]
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((d,)), keras.layers.Dense(2)])
    smoothed = SmoothedClassifier(base, 2, sigma=sigma, seed=0)
    decay = keras.optimizers.schedules.InverseTimeDecay(0.2, decay_steps=200, decay_rate=1.0)
    smoothed.compile(keras.optimizers.SGD(decay), "mse")
    history = smoothed.fit(np.tile(x, (40, 1)), np.tile(y, (40, 1)), batch_size=n, epochs=50,
                           shuffle=False, verbose=0)
    kernel, bias = base.get_weights()
    learned = np.vstack([kernel, bias[None]])
    assert np.linalg.norm(ols - ridge) > 1.0
    assert np.linalg.norm(learned - ridge) < 0.05 * np.linalg.norm(ols - ridge)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # evaluate() scores the base on noisy inputs: clean error + sigma^2 ||W||^2 per output.
    clean = np.mean((design @ learned - y) ** 2)
    expected = clean + sigma**2 * np.mean(np.sum(kernel**2, axis=0))
    noisy = smoothed.evaluate(np.tile(x, (40, 1)), np.tile(y, (40, 1)), verbose=0)
    assert noisy == pytest.approx(expected, rel=0.02)
    assert noisy - clean > 0.5 * (expected - clean)  # the noise term is really there


def test_training_call_perturbs_the_input_with_fresh_noise():
    inputs = keras.Input((D,))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    smoothed = SmoothedClassifier(identity, D, sigma=0.2, seed=0)
    x = np.full((256, D), 0.5, np.float32)
    first = keras.ops.convert_to_numpy(smoothed(x, training=True)) - x
    second = keras.ops.convert_to_numpy(smoothed(x, training=True)) - x
    assert np.std(first) == pytest.approx(0.2, rel=0.05) and abs(np.mean(first)) < 0.01
    assert not np.allclose(first, second)


SCRIPT = """
import sys, warnings, numpy as np, keras
import manidefense  # registers SmoothedClassifier
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = keras.saving.load_model(sys.argv[1], safe_mode=True)
assert not [w for w in caught if "build" in str(w.message)], [str(w.message) for w in caught]
classes, radii = model.certify(np.load(sys.argv[2]), 20, 200)
np.save(sys.argv[3], np.stack([classes.astype(float), radii]))
print(type(model).__name__, model.sigma, model.seed)
"""


def test_config_and_keras_file_round_trip_in_a_fresh_process(geometry, tmp_path):
    direction, offset, x = geometry
    smoothed = SmoothedClassifier(linear_model(direction, offset), 2, sigma=0.3, num_samples=7,
                                  batch_size=128, seed=5)
    config = smoothed.get_config()
    restored = SmoothedClassifier.from_config(config)
    assert {k: v for k, v in restored.get_config().items() if k != "base_model"} == {
        k: v for k, v in config.items() if k != "base_model"}
    path, x_path, out_path = tmp_path / "s.keras", tmp_path / "x.npy", tmp_path / "out.npy"
    smoothed(x[:2])  # built
    smoothed.save(path)
    np.save(x_path, x)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(x_path),
                             str(out_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-3:] == ["SmoothedClassifier", "0.3", "5"]
    classes, radii = smoothed.certify(x, 20, 200)
    np.testing.assert_array_equal(np.load(out_path)[0], classes)
    np.testing.assert_allclose(np.load(out_path)[1], radii, rtol=1e-12)


# === Curves ===

def test_certified_accuracy_and_acr_by_hand():
    radii = np.array([0.0, 0.3, 0.6, 1.0, 0.5])
    classes = np.array([ABSTAIN, 1, 2, 0, 1])
    labels = np.array([0, 1, 2, 1, 1])
    np.testing.assert_allclose(certified_accuracy(radii, classes, labels, [0.0, 0.3, 0.5, 0.7]),
                               [0.6, 0.6, 0.4, 0.0])
    assert certified_accuracy(radii, classes, labels, 0.55) == pytest.approx(0.2)
    assert average_certified_radius(radii, classes, labels) == pytest.approx((0.3 + 0.6 + 0.5) / 5)


def test_plot_draws_one_curve_per_certification():
    from manidefense.visualization import plot_certified_accuracy

    labels = np.array([0, 1, 1, 0])
    results = {"a": (np.array([0, 1, 1, ABSTAIN]), np.array([0.2, 0.5, 0.1, 0.0])),
               "b": (np.array([0, 1, 0, 0]), np.array([0.4, 0.4, 0.3, 0.2]))}
    ax = plot_certified_accuracy(results, labels)
    lines = ax.get_lines()
    assert len(lines) == 2 and "ACR" in lines[0].get_label()
    # The first curve starts at 3/4 certified (radius 0) and ends at 0.
    assert lines[0].get_ydata()[0] == pytest.approx(75.0) and lines[0].get_ydata()[-1] == 0.0


# === Bad input ===

@pytest.mark.parametrize("kwargs, match", [
    ({"sigma": 0.0}, "`sigma` must be > 0"),
    ({"sigma": -1.0}, "`sigma` must be >= 0"),
    ({"num_classes": 1}, "`num_classes` must be >= 2"),
    ({"num_samples": 0}, "`num_samples`"),
    ({"seed": 1.5}, "`seed`"),
    ({"bounds": (1, 0)}, "`bounds`"),
])
def test_bad_constructor_arguments(geometry, kwargs, match):
    args = {"base_model": constant_model(0), "num_classes": 3, "sigma": 0.25, **kwargs}
    with pytest.raises(ValueError, match=match):
        SmoothedClassifier(**args)


def test_bad_call_arguments(geometry):
    x = geometry[2]
    smoothed = SmoothedClassifier(constant_model(0), 3, sigma=0.25, seed=0)
    with pytest.raises(ValueError, match="`alpha`"):
        smoothed.certify(x, 10, 100, alpha=1.0)
    with pytest.raises(ValueError, match="`alpha`"):
        smoothed.predict(x, 10, alpha=0.0)
    with pytest.raises(ValueError, match="`num_samples_selection`.*Received: "
                                         "num_samples_selection=1000, num_samples_estimation=100"):
        smoothed.certify(x, 1000, 100)
    with pytest.raises(ValueError, match="too small to certify anything.*at least 10"):
        smoothed.certify(x, 5, 9, alpha=0.001)
    with pytest.raises(ValueError, match="`x` must be finite"):
        smoothed.certify(np.full((2, D), np.nan, np.float32), 10, 100)
    with pytest.raises(ValueError, match="`x` must lie within bounds"):
        smoothed.predict(x + 2.0, 10)
    with pytest.raises(ValueError, match="`num_classes`=4 must match"):
        SmoothedClassifier(constant_model(0), 4, sigma=0.25).predict(x, 10)
    with pytest.raises(ValueError, match="`thresholds`"):
        certified_accuracy([0.1], [0], [0], -1.0)
    with pytest.raises(ValueError, match="same length"):
        certified_accuracy([0.1, 0.2], [0], [0], 0.0)
