"""RBF-CNN layers: the EM, the match scores, the reconstruction, the defended model."""

import math
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import NUM_CLASSES, SHAPE

import manidefense as md
from manidefense.attacks.adaptive import adaptive_model
from manidefense.layers import RBFLayer, ReconstructionLayer, rbf_defense
from manidefense.layers.rbf import INACTIVE_SCORE
from manidefense.manifold import em

# Four well-separated 3×3 patch clusters, one dominant like an image background.
CENTERS = np.stack([np.zeros(9), np.ones(9), np.r_[np.ones(3), np.zeros(6)],
                    np.array([1, 0, 1, 0, 1, 0, 1, 0, 1.0])])
SHARES = (0.55, 0.15, 0.15, 0.15)


def tiled_images(n, noise=0.03, seed=0):
    """12×12 images made of 4×4 non-overlapping 3×3 tiles, each drawn from a cluster."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(CENTERS), size=(n, 4, 4), p=SHARES)
    tiles = CENTERS[labels] + noise * rng.standard_normal((n, 4, 4, 9))
    tiles = np.clip(tiles, 0.0, 1.0).reshape(n, 4, 4, 3, 3).transpose(0, 1, 3, 2, 4)
    return tiles.reshape(n, 12, 12, 1).astype("float32")


def tile_rbf(**kwargs):
    options = dict(patch_size=3, strides=3, max_filters=8, em_steps=60, birth_steps=30,
                   images_per_step=100, seed=0)
    return RBFLayer(**{**options, **kwargs})


def fitted_means(rbf):
    k = rbf.num_filters
    return keras.ops.convert_to_numpy(rbf.means)[:k].reshape(k, -1)


def stroke_images(n, seed=0):
    """12×12 digit-like images: two bright bars on a dark background, slight noise."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 12, 12), "float32")
    for image in x:
        for _ in range(2):
            length, (row, col) = rng.integers(4, 11), rng.integers(0, 10, size=2)
            value = rng.uniform(0.8, 1.0)
            if rng.random() < 0.5:
                image[row:row + 2, col:col + length] = value
            else:
                image[row:row + length, col:col + 2] = value
    x += 0.02 * rng.standard_normal(x.shape).astype("float32")
    return np.clip(x, 0.0, 1.0)[..., None]


@pytest.fixture(scope="module")
def strokes():
    return stroke_images(2000), stroke_images(64, seed=1)


@pytest.fixture(scope="module")
def synthetic_rbf(strokes):
    """An RBF layer (3×3, stride 1) adapted on digit-like 12×12 images."""
    rbf = RBFLayer(max_filters=32, em_steps=200, birth_steps=150, images_per_step=100, seed=0)
    return rbf.adapt(strokes[0], batch_size=100)


# === The EM ===

def recovered_modes(rbf, tolerance=0.03):
    """For each filter, the index of the cluster centre it sits on (max-abs distance below
    `tolerance`), or -1 when it sits on none."""
    distance = np.abs(fitted_means(rbf)[:, None, :] - CENTERS[None]).max(axis=-1)
    return np.where(distance.min(axis=1) < tolerance, distance.argmin(axis=1), -1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_recovers_the_number_and_means_of_well_separated_clusters(seed):
    rbf = tile_rbf(seed=seed).adapt(tiled_images(2000, seed=seed), batch_size=100)
    # Every filter sits on a cluster centre (up to the clipping bias of the noise, ≈0.012) and
    # every cluster has one: the distinct modes found are exactly the clusters. (Hard EM may
    # keep a second filter on a cluster, a core and a tail, as the authors' algorithm can.)
    modes = recovered_modes(rbf)
    assert -1 not in modes and set(modes) == set(range(len(CENTERS)))
    variances = keras.ops.convert_to_numpy(rbf.variances)[:rbf.num_filters]
    assert np.all(variances < 9 * 0.03 ** 2 + 1e-3)


def test_em_is_deterministic_with_a_seed_and_streams_a_dataset():
    x = tiled_images(1000, seed=1)
    a, b = tile_rbf().adapt(x), tile_rbf().adapt(x)
    np.testing.assert_array_equal(fitted_means(a), fitted_means(b))
    batched = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(50)
    for dataset in (batched, tf.data.Dataset.from_tensor_slices(x)):  # batched and unbatched
        modes = recovered_modes(tile_rbf().adapt(dataset))
        assert -1 not in modes and set(modes) == set(range(len(CENTERS)))


def test_capacity_is_the_fitted_count_unless_the_layer_was_built():
    x = tiled_images(500)
    rbf = tile_rbf().adapt(x)
    assert rbf.capacity == rbf.num_filters and rbf(x[:2]).shape[-1] == rbf.num_filters
    assert rbf.get_config()["capacity"] == rbf.num_filters
    built = tile_rbf()
    built.build((None, 12, 12, 1))
    built.adapt(x)
    assert built.capacity == 8 and built.num_filters == rbf.num_filters
    scores = keras.ops.convert_to_numpy(built(x[:2]))
    assert np.all(scores[..., built.num_filters:] == INACTIVE_SCORE)
    capped = tile_rbf(capacity=2).adapt(x)  # never more filters than the weights hold
    assert capped.num_filters <= 2


def test_m_step_safeguards():
    means = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], "float32")
    variances = np.ones(3, "float32")
    counts = np.array([100.0, 1.0, 50.0, 20.0])  # filter 1 attracted one patch: deleted
    sums = np.array([[10.0, 10.0], [1.0, 1.0], [250.0, 250.0], [60.0, 80.0]])
    deviations = np.array([40.0, 0.0, 100.0, 520.0])
    out_means, out_vars, born, deleted = em.m_step(
        means, variances, counts, sums, deviations, max_filters=4, min_birth_share=0.1)
    assert deleted == 1 and born and len(out_means) == 3
    np.testing.assert_allclose(out_means, [[0.1, 0.1], [5.0, 5.0], [3.0, 4.0]])
    # Variance = mean squared distance to the new mean: 40/100 - ||(0.1, 0.1)||².
    np.testing.assert_allclose(out_vars, [0.4 - 0.02, 2.0, 26.0 - 25.0], atol=1e-6)
    # No birth below the minimum share, at capacity, or after the birth phase.
    for options in ({"min_birth_share": 0.2}, {"max_filters": 2}, {"allow_birth": False}):
        kwargs = {"max_filters": 4, "min_birth_share": 0.1, **options}
        _, _, born, _ = em.m_step(means, variances, counts, sums, deviations, **kwargs)
        assert not born, options
    # The variance floor.
    _, out_vars, _, _ = em.m_step(means, variances, counts, sums, deviations, max_filters=4,
                                  min_birth_share=0.1, min_variance=0.5)
    assert out_vars.min() == 0.5


def test_e_step_assigns_to_the_best_filter_or_the_new_bucket():
    means = np.array([[0.0, 0.0], [1.0, 1.0]], "float32")
    variances = np.array([0.01, 0.01], "float32")
    patches = np.array([[0.0, 0.1], [1.0, 0.9], [1.0, 1.0], [5.0, -5.0]], "float32")
    counts, sums, deviations = (keras.ops.convert_to_numpy(t) for t in em.e_step(
        patches, means, variances, np.float32(-10.0)))
    np.testing.assert_array_equal(counts, [1, 2, 1])
    np.testing.assert_allclose(sums[2], [5.0, -5.0])
    np.testing.assert_allclose(deviations, [0.01, 0.01, 50.0], rtol=1e-3)
    # No filter yet: everything is new.
    counts, _, _ = em.e_step(patches, np.zeros((0, 2), "float32"), np.zeros((0,), "float32"),
                             np.float32(-2.5))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(counts), [4])


# === Scores (eq. 2) ===

@pytest.mark.parametrize("strides", [1, 2])
def test_scores_equal_a_direct_numpy_evaluation_of_eq2(strides):
    rng = np.random.default_rng(0)
    rbf = RBFLayer(strides=strides, capacity=6)  # 4 filters, 2 unused channels
    means = rng.random((4, 3, 3, 2)).astype("float32")
    variances = rng.uniform(0.05, 1.0, 4).astype("float32")
    rbf.set_filters(means, variances)
    x = rng.random((2, 9, 10, 2)).astype("float32")
    scores = keras.ops.convert_to_numpy(rbf(x))
    rows, cols = (9 - 3) // strides + 1, (10 - 3) // strides + 1
    assert scores.shape == (2, rows, cols, 6)
    for b, i, j in [(0, 0, 0), (1, rows - 1, cols - 1), (1, 1, 2)]:
        patch = x[b, i * strides:i * strides + 3, j * strides:j * strides + 3, :]
        for k in range(4):
            sq = np.sum((patch.astype("float64") - means[k]) ** 2)
            expected = -sq / (2 * variances[k]) - 0.5 * np.log(variances[k])
            assert scores[b, i, j, k] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert np.all(scores[..., 4:] == INACTIVE_SCORE)


def test_scores_stay_finite_in_float16():
    rbf = RBFLayer(dtype="mixed_float16")
    rbf.set_filters(np.zeros((1, 3, 3, 1)), np.array([1e-20]))  # floored to 1e-4
    scores = rbf(np.ones((1, 5, 5, 1), "float32"))
    assert scores.dtype == "float16"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(scores)))


# === Reconstruction ===

def test_a_patch_equal_to_a_filter_mean_reconstructs_to_itself():
    rbf = tile_rbf()
    rbf.set_filters(CENTERS.reshape(-1, 3, 3, 1), np.full(4, 0.05))
    x = tiled_images(3, noise=0.0)
    recon = ReconstructionLayer(rbf, beta1=500.0, beta2=0.0, clip=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(recon(x)), x, atol=1e-5)


def test_overlap_averaging_is_exact_on_a_constant_image():
    # One filter: every patch is rebuilt as its mean, whatever the input; the average of
    # 1 to 9 overlapping copies must give the constant back, borders and corners included.
    rbf = RBFLayer(max_filters=4)
    rbf.set_filters(np.full((1, 3, 3, 1), 0.3), np.array([0.1]))
    x = np.random.default_rng(0).random((2, 8, 7, 1)).astype("float32")
    out = keras.ops.convert_to_numpy(ReconstructionLayer(rbf)(x))
    np.testing.assert_allclose(out, np.full_like(x, 0.3), atol=1e-6)


def test_noise_has_standard_deviation_beta2_times_the_filter_variance():
    rbf = RBFLayer(max_filters=4)
    means = np.stack([np.zeros((3, 3, 1)), np.ones((3, 3, 1))])
    variances = np.array([0.02, 0.05])
    rbf.set_filters(means, variances)
    beta2 = 1.75
    recon = ReconstructionLayer(rbf, beta1=200.0, beta2=beta2, clip=False, seed=0)
    x = np.concatenate([np.zeros((3000, 3, 3, 1)), np.ones((3000, 3, 3, 1))]).astype("float32")
    out = keras.ops.convert_to_numpy(recon(x))  # one patch per image: mean + its noise
    for half, (mean, v) in enumerate(zip((0.0, 1.0), variances, strict=True)):
        sample = out[half * 3000:(half + 1) * 3000]
        assert abs(sample.mean() - mean) < 0.01
        assert sample.std() == pytest.approx(beta2 * v, rel=0.05)
    # Fresh on every call and for every example; reproducible with the seed.
    again = keras.ops.convert_to_numpy(recon(x))
    assert not np.allclose(out, again) and not np.allclose(out[0], out[1])
    twin = ReconstructionLayer(rbf, beta1=200.0, beta2=beta2, clip=False, seed=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(twin(x)), out)


@pytest.mark.parametrize("beta2", [0.0, 1.0])
def test_input_gradients_are_finite_and_non_zero(synthetic_rbf, strokes, beta2):
    recon = ReconstructionLayer(synthetic_rbf, beta2=beta2, seed=0)
    x = tf.constant(strokes[1][:8])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.square(recon(x)))
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_reconstruction_is_close_to_clean_inputs(synthetic_rbf, strokes):
    assert synthetic_rbf.num_filters >= 5  # background, bar interiors, edges, corners
    x = strokes[1]
    out = keras.ops.convert_to_numpy(ReconstructionLayer(synthetic_rbf)(x))
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
    # A pseudo-clean image: much closer to its input than to another image.
    error = np.abs(out - x).mean()
    assert error < 0.35 * np.abs(x - x[::-1]).mean()


def test_declarations_for_the_adaptive_evaluation(synthetic_rbf):
    noisy = ReconstructionLayer(synthetic_rbf, beta2=1.0)
    assert noisy.randomized and noisy.non_differentiable
    assert noisy.surrogate.beta2 == 0.0 and noisy.surrogate.rbf is synthetic_rbf
    clean = ReconstructionLayer(synthetic_rbf)
    assert not clean.randomized and not clean.non_differentiable and clean.surrogate is None


# === The defended model ===

def test_defended_model_averages_probabilities_over_draws(synthetic_rbf, trained_model, data):
    x = data[2][:16]
    deterministic = rbf_defense(trained_model, synthetic_rbf, beta2=0.0)
    recon = ReconstructionLayer(synthetic_rbf)
    expected = keras.ops.softmax(trained_model(recon(x)))
    np.testing.assert_allclose(deterministic.predict(x, verbose=0), expected, atol=1e-5)
    noisy = rbf_defense(trained_model, synthetic_rbf, beta2=1.0, num_samples=5, seed=0)
    probs = noisy.predict(x, verbose=0)
    assert probs.shape == (16, NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(probs, noisy.predict(x, verbose=0))  # fresh draws
    # The model already averages 5 draws per call: 20 draws per gradient take 4 calls, and
    # 4 draws need no EoT wrapper at all.
    attack_model, notes = adaptive_model(noisy, eot_samples=20)
    assert isinstance(attack_model, md.attacks.EoT) and attack_model.num_samples == 4
    assert any("BPDA" in n for n in notes) and any("20 random draws" in n for n in notes)
    unwrapped, notes = adaptive_model(noisy, eot_samples=4)
    assert not isinstance(unwrapped, md.attacks.EoT) and any("No EoT" in n for n in notes)
    # The adaptive attack runs: BPDA builds the noise-free surrogate inside the traced graph.
    x_adv = md.attacks.PGD(eps=0.1, num_steps=2, seed=0)(attack_model, x[:4], data[3][:4])
    assert np.abs(x_adv - x[:4]).max() <= 0.1 + 1e-6 and np.abs(x_adv - x[:4]).max() > 0
    # Weights: the classifier's and the RBF filters' once (the surrogate is not tracked).
    expected = len(trained_model.weights) + 3  # means, variances, active
    assert len(noisy.weights) == expected


def test_config_round_trip(synthetic_rbf):
    rbf = RBFLayer.from_config(synthetic_rbf.get_config())
    assert rbf.get_config() == synthetic_rbf.get_config() and not rbf.is_adapted
    recon = ReconstructionLayer(synthetic_rbf, beta2=1.5, train_beta1=80.0, seed=3)
    restored = ReconstructionLayer.from_config(recon.get_config())
    assert restored.get_config() == recon.get_config()


SCRIPT = """
import sys, numpy as np, keras
import manidefense  # registers the custom layers
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
x = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(x, verbose=0))
print(model.get_layer("reconstruction").rbf.num_filters)
"""


def test_defended_model_saves_and_loads_in_a_fresh_process(synthetic_rbf, trained_model, data,
                                                            tmp_path):
    model = rbf_defense(trained_model, synthetic_rbf, beta2=0.0)
    path, x_path, out_path = tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "out.npy"
    model.save(path)
    np.save(x_path, data[2][:8])
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(x_path),
                             str(out_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) == synthetic_rbf.num_filters
    np.testing.assert_allclose(np.load(out_path), model.predict(data[2][:8], verbose=0),
                               atol=1e-6)
    # A randomized one reloads with its noise level and declarations.
    noisy = rbf_defense(trained_model, synthetic_rbf, beta2=1.75, num_samples=3)
    noisy.save(tmp_path / "noisy.keras")
    loaded = keras.saving.load_model(tmp_path / "noisy.keras", safe_mode=True)
    layer = loaded.get_layer("reconstruction")
    assert layer.beta2 == 1.75 and layer.randomized and layer.rbf.is_adapted


# === Bad input ===

def test_calling_before_adapt_raises():
    with pytest.raises(ValueError, match="adapt"):
        RBFLayer()(np.zeros((1, 5, 5, 1), "float32"))


def test_wrong_channel_count_raises(synthetic_rbf):
    with pytest.raises(ValueError, match="`inputs`.*1 channels.*Received: 3"):
        synthetic_rbf(np.zeros((1,) + SHAPE[:2] + (3,), "float32"))
    with pytest.raises(ValueError, match="`data`.*1 channels"):
        RBFLayer.from_config(synthetic_rbf.get_config()).adapt(
            np.zeros((4, 8, 8, 1), "float32")).adapt(np.zeros((4, 8, 8, 3), "float32"))


@pytest.mark.parametrize("data,pattern", [
    (np.zeros((4, 8, 8), "float32"), "`data`.*shape"),
    (np.zeros((4, 8, 8, 1), "uint8"), "`data`.*dtype"),
    (np.full((4, 8, 8, 1), np.nan, "float32"), "`data`.*finite"),
])
def test_bad_adapt_data_raises(data, pattern):
    with pytest.raises(ValueError, match=pattern):
        RBFLayer(em_steps=2).adapt(data)


@pytest.mark.parametrize("kwargs,argument", [
    ({"patch_size": 0}, "patch_size"), ({"strides": (1, 2, 3)}, "strides"),
    ({"max_filters": 0}, "max_filters"), ({"em_steps": 0}, "em_steps"),
    ({"min_variance": 0.0}, "min_variance"), ({"target_filters": -1}, "target_filters"),
    ({"birth_log_likelihood": math.inf}, "birth_log_likelihood"), ({"seed": -1}, "seed"),
])
def test_bad_rbf_arguments_are_named(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        RBFLayer(**kwargs)


def test_bad_reconstruction_arguments_are_named(synthetic_rbf):
    for kwargs, argument in [({"rbf": "rbf"}, "rbf"), ({"beta1": 0.0}, "beta1"),
                             ({"beta2": -1.0}, "beta2"), ({"clip": "yes"}, "clip"),
                             ({"bounds": (1, 0)}, "bounds")]:
        with pytest.raises(ValueError, match=f"`{argument}`"):
            ReconstructionLayer(**{"rbf": synthetic_rbf, **kwargs})
    with pytest.raises(ValueError, match="`means`"):
        RBFLayer().set_filters(np.zeros((2, 2, 2, 1)), np.ones(2))
