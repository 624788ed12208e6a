"""Projection onto a generator's manifold (`project`) and the on-manifold dataset built from it.

The world: a fixed random decoder G (Dense + sigmoid, 6-d latents -> 12x12x1 images), so every
target `x = G(w_true)` lies exactly on the manifold and the best achievable distance is zero.
G is injective (a 144x6 kernel of full column rank), so recovering `x` also recovers `w_true`.
"""

import gc
import weakref

import keras
import numpy as np
import pytest
from keras import ops

from manidefense.manifold import projection
from manidefense.manifold.projection import (
    OnManifoldData,
    Projection,
    build_on_manifold_dataset,
    project,
)

LATENT, SHAPE, N = 6, (12, 12, 1), 32


def _decoder(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((LATENT,)),
                             keras.layers.Dense(144, activation="sigmoid"),
                             keras.layers.Reshape(SHAPE)], name="toy_decoder")


@pytest.fixture(scope="module")
def world():
    """(decoder, w_true, x = G(w_true), y) with 32 examples and quadrant labels."""
    decoder = _decoder()
    w = np.random.default_rng(0).normal(size=(N, LATENT)).astype("float32")
    y = ((w[:, 0] > 0).astype("int64") + 2 * (w[:, 1] > 0)).astype("int64")
    return decoder, w, decoder(w).numpy(), y


@pytest.fixture(scope="module")
def encoder(world):
    """A VAE-style encoder `x -> (z_mean, z_log_var)`: z_mean is a least-squares linear
    inverse of G fitted on other latents; z_log_var is a useless constant -3."""
    decoder = world[0]
    w_fit = np.random.default_rng(1).normal(size=(1000, LATENT)).astype("float32")
    x_fit = decoder(w_fit).numpy().reshape(len(w_fit), -1)
    coef = np.linalg.lstsq(np.c_[x_fit, np.ones(len(x_fit))], w_fit, rcond=None)[0]
    inputs = keras.Input(SHAPE)
    flat = keras.layers.Flatten()(inputs)
    mean_layer, log_var_layer = keras.layers.Dense(LATENT), keras.layers.Dense(LATENT)
    encoder = keras.Model(inputs, [mean_layer(flat), log_var_layer(flat)], name="toy_encoder")
    mean_layer.set_weights([coef[:-1].astype("float32"), coef[-1].astype("float32")])
    log_var_layer.set_weights([np.zeros((144, LATENT), "float32"),
                               np.full((LATENT,), -3.0, "float32")])
    return encoder


def _l1(images, x):
    return np.abs(np.asarray(images, np.float64) - x).mean(axis=(1, 2, 3))


def _ssim_distance(images, x, l1_weight=1.0, perceptual_weight=1.0):
    ssim = ops.convert_to_numpy(ops.image.ssim(ops.convert_to_tensor(images, "float32"),
                                               ops.convert_to_tensor(x), max_val=1.0))
    return l1_weight * _l1(images, x) + perceptual_weight * np.maximum(1.0 - ssim, 0.0)


# === Recovery and the returned fields ===

@pytest.mark.parametrize("perceptual", ["ssim", None])
def test_recovers_images_the_generator_can_produce(world, perceptual):
    decoder, w, x, _ = world
    proj = project(decoder, x, perceptual=perceptual)
    assert isinstance(proj, Projection)
    start = _l1(decoder(np.zeros_like(w)).numpy(), x)
    # Threshold 1e-3 in mean |G(w*) - x| is a quarter of one 8-bit grey level (1/255) and
    # ~50x below the start's error (0.052); measured ~1e-5 after the default 200 steps.
    assert proj.l1.mean() < 1e-3 and proj.l1.max() < 5e-3, proj.l1.max()
    assert np.all(proj.l1 < 0.1 * start)
    # G is injective, so the recovered latents are the true ones (measured error < 1e-3).
    assert np.abs(proj.latents - w).max() < 0.05


def test_fields_are_consistent_with_the_decoder_and_the_objective(world):
    decoder, w, x, _ = world
    proj = project(decoder, x, num_steps=30, l1_weight=2.0, perceptual_weight=0.5)
    for field in (proj.latents, proj.images, proj.distances, proj.l1):
        assert field.dtype == np.float32 and len(field) == N
    assert proj.latents.shape == w.shape and proj.images.shape == x.shape
    np.testing.assert_allclose(proj.images, decoder(proj.latents).numpy(), atol=1e-6)
    np.testing.assert_allclose(proj.l1, _l1(proj.images, x), atol=1e-6)
    np.testing.assert_allclose(proj.distances, _ssim_distance(proj.images, x, 2.0, 0.5),
                               atol=1e-5)
    assert np.all(proj.distances >= 0.0) and np.all(proj.l1 >= 0.0)


def test_distances_never_exceed_the_start(world):
    decoder, _, x, _ = world
    start = _ssim_distance(decoder(np.zeros((N, LATENT), "float32")).numpy(), x)
    # A learning rate far too large for this decoder: the last iterate may be poor, the
    # kept (best) one never is.
    for learning_rate in (0.05, 5.0):
        proj = project(decoder, x, num_steps=10, learning_rate=learning_rate)
        assert np.all(proj.distances <= start + 1e-6)


def test_best_iterate_is_kept_when_the_start_is_optimal(world):
    decoder, w, x, _ = world
    # From w_true any Adam step (length ~1 at this learning rate) moves away from the optimum.
    proj = project(decoder, x, initial_latents=w, learning_rate=1.0, num_steps=5)
    np.testing.assert_array_equal(proj.latents, w)
    assert proj.l1.max() < 1e-6 and proj.distances.max() < 1e-5


def test_batch_size_does_not_change_results(world):
    decoder, _, x, _ = world
    whole = project(decoder, x, num_steps=40, batch_size=N)
    pieces = project(decoder, x, num_steps=40, batch_size=5)
    # Each row is optimised independently; only float noise (SSIM's reductions, Adam's
    # normalisation of tiny gradients) may differ. Measured: latents within 6e-5.
    np.testing.assert_allclose(pieces.latents, whole.latents, atol=1e-3)
    np.testing.assert_allclose(pieces.distances, whole.distances, atol=1e-5)
    first = project(decoder, x[:3], num_steps=40)
    np.testing.assert_allclose(first.latents, whole.latents[:3], atol=1e-3)


def test_encoder_start_beats_the_mean_start_at_a_small_budget(world, encoder):
    decoder, _, x, _ = world
    from_encoder = project(decoder, x, encoder=encoder, num_steps=10)
    from_mean = project(decoder, x, num_steps=10)
    # Measured: 7e-6 vs 0.31 mean distance.
    assert from_encoder.distances.mean() < 0.1 * from_mean.distances.mean()
    assert np.mean(from_encoder.distances < from_mean.distances) >= 0.9


def test_starting_points_encoder_first_output_and_mean_latent(world, encoder):
    decoder, w, x, _ = world
    z_mean = encoder(x)[0].numpy()
    via_encoder = project(decoder, x, encoder=encoder, num_steps=3, perceptual=None)
    via_latents = project(decoder, x, initial_latents=z_mean, num_steps=3, perceptual=None)
    np.testing.assert_array_equal(via_encoder.latents, via_latents.latents)
    # initial_latents overrides the encoder.
    override = project(decoder, x, encoder=encoder, initial_latents=w, num_steps=3,
                       perceptual=None)
    assert _l1(override.images, x).max() < 1e-5
    mean = np.linspace(-0.5, 0.5, LATENT).astype("float32")
    via_mean = project(decoder, x, mean_latent=mean, num_steps=3, perceptual=None)
    via_tiled = project(decoder, x, initial_latents=np.tile(mean, (N, 1)), num_steps=3,
                        perceptual=None)
    np.testing.assert_array_equal(via_mean.latents, via_tiled.latents)
    default = project(decoder, x, num_steps=3, perceptual=None)
    zeros = project(decoder, x, initial_latents=np.zeros_like(w), num_steps=3, perceptual=None)
    np.testing.assert_array_equal(default.latents, zeros.latents)


def test_callable_perceptual_term(world):
    decoder, w, x, _ = world
    keras.utils.set_random_seed(3)
    features = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                                 keras.layers.Dense(16, activation="tanh")], name="features")
    proj = project(decoder, x, perceptual=features, perceptual_weight=10.0, num_steps=100)
    fa, fb = features(proj.images).numpy(), features(x).numpy()
    expected = _l1(proj.images, x) + 10.0 * np.square(fa - fb).mean(axis=1)
    np.testing.assert_allclose(proj.distances, expected, atol=1e-5)
    start = project(decoder, x, perceptual=features, perceptual_weight=10.0, num_steps=1)
    assert proj.distances.mean() < 0.1 * start.distances.mean()
    assert proj.l1.mean() < 1e-3


def test_plain_callable_decoder_with_mean_latent(world):
    decoder, w, x, _ = world
    kernel, bias = (ops.convert_to_tensor(v) for v in decoder.layers[0].get_weights())

    def toy_generator(latents):
        return ops.reshape(ops.sigmoid(ops.matmul(latents, kernel) + bias), (-1, *SHAPE))

    proj = project(toy_generator, x, mean_latent=np.zeros(LATENT, "float32"))
    assert proj.l1.mean() < 1e-3
    np.testing.assert_allclose(proj.images, decoder(proj.latents).numpy(), atol=1e-6)


def test_silent_unless_verbose(world, capsys):
    decoder, _, x, _ = world
    project(decoder, x, num_steps=2, batch_size=8)
    assert capsys.readouterr().out == ""
    project(decoder, x, num_steps=2, batch_size=8, verbose=True)
    assert f"{N}/{N}" in capsys.readouterr().out


def test_projecting_does_not_keep_the_decoder_alive(world):
    x = world[2]
    decoder = _decoder(seed=7)
    ref = weakref.ref(decoder)
    project(decoder, x[:4], num_steps=2, perceptual=None)
    del decoder
    gc.collect()
    assert ref() is None


# === OnManifoldData ===

def _off_manifold(x):
    """`x` plus pixel noise: images G cannot produce exactly."""
    noise = np.random.default_rng(2).normal(scale=0.02, size=x.shape)
    return np.clip(x + noise, 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def on_manifold(world):
    decoder, _, x, y = world
    return build_on_manifold_dataset(decoder, _off_manifold(x), y, num_steps=40)


def test_build_keeps_originals_and_labels_and_images_are_g_of_latents(world, on_manifold):
    decoder, _, x, y = world
    om = on_manifold
    assert len(om) == N
    np.testing.assert_array_equal(om.originals, _off_manifold(x))
    np.testing.assert_array_equal(om.labels, y)
    assert om.labels.dtype == np.int64 and om.originals.dtype == np.float32
    np.testing.assert_allclose(om.images, decoder(om.latents).numpy(), atol=1e-6)
    assert om.distances.shape == (N,) and np.all(om.distances >= 0)
    # The originals are off the manifold: their projections are near them, not equal.
    start = _l1(decoder(np.zeros_like(om.latents)).numpy(), om.originals)
    assert np.all(_l1(om.images, om.originals) > 0)
    assert _l1(om.images, om.originals).mean() < 0.5 * start.mean()


def test_save_load_round_trips_exactly(on_manifold, tmp_path):
    path = tmp_path / "om.npz"
    on_manifold.save(path)
    loaded = OnManifoldData.load(path)
    for name in ("latents", "images", "originals", "labels", "distances"):
        a, b = getattr(on_manifold, name), getattr(loaded, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b)


def test_load_rejects_a_file_without_the_fields(on_manifold, tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, latents=on_manifold.latents, labels=on_manifold.labels)
    with pytest.raises(ValueError, match="`path`.*images"):
        OnManifoldData.load(path)


def test_to_dataset_yields_images_latents_labels_batches(on_manifold):
    om = on_manifold
    batches = list(om.to_dataset(batch_size=10))
    assert [len(labels) for (_, _), labels in batches] == [10, 10, 10, 2]
    (images, latents), labels = batches[0]
    assert tuple(images.shape) == (10, *SHAPE) and tuple(latents.shape) == (10, LATENT)
    np.testing.assert_array_equal(np.concatenate([b[0][0] for b in batches]), om.images)
    np.testing.assert_array_equal(np.concatenate([b[0][1] for b in batches]), om.latents)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), om.labels)
    shuffled = list(om.to_dataset(batch_size=8, shuffle=True, seed=0))
    images = np.concatenate([b[0][0] for b in shuffled])
    latents = np.concatenate([b[0][1] for b in shuffled])
    labels = np.concatenate([b[1] for b in shuffled])
    order = [int(np.flatnonzero((om.latents == row).all(axis=1))[0]) for row in latents]
    assert sorted(order) == list(range(N)) and order != list(range(N))
    np.testing.assert_array_equal(images, om.images[order])
    np.testing.assert_array_equal(labels, om.labels[order])
    with pytest.raises(ValueError, match="`batch_size`"):
        om.to_dataset(batch_size=0)


# === Bad input ===

def test_bad_inputs_raise_value_errors_naming_the_argument(world):
    decoder, w, x, y = world

    def plain(latents):
        return decoder(latents)

    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    bad_start = w.copy()
    bad_start[0, 0] = np.inf
    cases = [
        (lambda: project(decoder, x[:, :10, :10]), "`decoder`.*shaped like `x`"),
        (lambda: project(decoder, x, initial_latents=w[:-1]), "`initial_latents`"),
        (lambda: project(plain, x), "`mean_latent`"),
        (lambda: project(decoder, nan), "`x`.*finite"),
        (lambda: project(decoder, x, num_steps=0), "`num_steps`"),
        (lambda: project(decoder, x, perceptual="lpips"), "`perceptual`"),
        (lambda: project(decoder, x, learning_rate=0.0), "`learning_rate`"),
        (lambda: project(decoder, x, l1_weight=-1.0), "`l1_weight`"),
        (lambda: project(decoder, x, perceptual_weight=-1.0), "`perceptual_weight`"),
        (lambda: project(decoder, x, warmup=1.5), "`warmup`"),
        (lambda: project(decoder, x, rampdown=-0.1), "`rampdown`"),
        (lambda: project(decoder, x, batch_size=0), "`batch_size`"),
        (lambda: project(decoder, x, initial_latents=bad_start), "finite"),
        (lambda: project(decoder, x.astype(np.int64)), "`x`.*floating"),
        (lambda: build_on_manifold_dataset(decoder, x, y[:-1]), "`y`.*shape"),
        (lambda: build_on_manifold_dataset(decoder, x, y.astype(np.float32)), "`y`.*integer"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()


def test_compiled_loops_are_reused(world):
    """Repeated calls with one setting (and a smaller last batch) do not add compiled loops."""
    decoder, _, x, _ = world
    project(decoder, x, num_steps=4, batch_size=12)
    size = len(projection._compiled)
    project(decoder, x[:7], num_steps=4, batch_size=12)
    assert len(projection._compiled) == size
