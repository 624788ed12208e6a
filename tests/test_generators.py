"""VAE and DCGAN of the zoo: shapes, training, seeds, serialization and argument checks."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from manidefense.zoo.generators import DCGAN, VAE

SHAPE = (16, 16, 1)


def bumps(num, size=16, seed=0):
    """Gaussian bumps at random centres: a 2-d image manifold a tiny VAE learns in seconds."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(3, size - 4, (num, 2, 1, 1))
    r = np.arange(size)
    d2 = (r[None, :, None] - centre[:, 0]) ** 2 + (r[None, None, :] - centre[:, 1]) ** 2
    return np.exp(-d2 / 8.0)[..., None].astype("float32")


def tiny_vae(**kwargs):
    return VAE(**{"latent_dim": 2, "image_shape": SHAPE, "width": 8, "seed": 0, **kwargs})


def tiny_gan(**kwargs):
    return DCGAN(**{"latent_dim": 8, "image_shape": SHAPE, "width": 8, "seed": 0, **kwargs})


@pytest.fixture(scope="module")
def trained_vae():
    """A tiny VAE fitted for 8 epochs on 384 bumps, with its history and untrained error."""
    keras.utils.set_random_seed(0)
    x, x_test = bumps(384), bumps(64, seed=1)
    vae = tiny_vae()
    untrained = float(np.mean(np.abs(np.asarray(vae(x_test)) - x_test)))
    vae.compile(keras.optimizers.Adam(3e-3))
    history = vae.fit(x, epochs=8, batch_size=32, verbose=0)
    return vae, history.history, untrained, x_test


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_shapes_and_ranges(shape):
    x = np.random.default_rng(0).uniform(size=(3, *shape)).astype("float32")
    vae = VAE(latent_dim=5, image_shape=shape, width=4)
    z_mean, z_log_var = vae.encoder(x)
    assert z_mean.shape == z_log_var.shape == (3, 5)
    assert vae.encode(x).shape == (3, 5)
    for images in (vae(x), vae(x, training=True), vae.decode(z_mean), vae.sample(3, seed=0)):
        images = np.asarray(images)
        assert images.shape == (3, *shape)
        assert images.min() >= 0.0 and images.max() <= 1.0
    gan = DCGAN(latent_dim=7, image_shape=shape, width=4)
    assert gan.decoder is gan.generator
    assert gan.discriminator(x).shape == (3, 1)
    for images in (gan(np.zeros((3, 7), "float32")), gan.sample(3, seed=0)):
        images = np.asarray(images)
        assert images.shape == (3, *shape)
        assert images.min() >= 0.0 and images.max() <= 1.0


def test_vae_training_reduces_reconstruction_error(trained_vae):
    vae, history, untrained, x_test = trained_vae
    trained = float(np.mean(np.abs(np.asarray(vae(x_test)) - x_test)))
    # Measured: 0.43 untrained (outputs ≈ 0.5), 0.11 after 8 epochs.
    assert trained < 0.4 * untrained, (trained, untrained)
    assert set(history) == {"loss", "reconstruction_loss", "kl_loss"}
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    for name in history:
        assert np.all(np.isfinite(history[name]))
    np.testing.assert_allclose(history["loss"], np.add(history["reconstruction_loss"],
                                                       history["kl_loss"]), rtol=1e-4)


def test_decode_of_encode_is_the_deterministic_call(trained_vae):
    vae, _, _, x_test = trained_vae
    np.testing.assert_allclose(np.asarray(vae.decode(vae.encode(x_test))),
                               np.asarray(vae(x_test)), atol=1e-6)
    np.testing.assert_allclose(vae.encoder.predict(x_test, verbose=0)[0],
                               np.asarray(vae.encode(x_test)), atol=1e-5)


def test_kl_metric_matches_the_closed_form(trained_vae):
    vae, _, _, x_test = trained_vae
    mean, log_var = (np.asarray(t, np.float64) for t in vae.encoder(x_test))
    kl = np.mean(-0.5 * np.sum(1 + log_var - mean**2 - np.exp(log_var), axis=1))
    result = vae.evaluate(x_test, batch_size=len(x_test), verbose=0, return_dict=True)
    assert set(result) == {"loss", "reconstruction_loss", "kl_loss"}
    np.testing.assert_allclose(result["kl_loss"], kl, rtol=1e-4)
    assert result["reconstruction_loss"] > 0


def test_vae_fits_datasets_of_images_and_of_image_label_batches():
    x = bumps(64)
    vae = tiny_vae()
    vae.compile("adam")
    for data in (tf.data.Dataset.from_tensor_slices((x, np.zeros(64, "int64"))).batch(32),
                 tf.data.Dataset.from_tensor_slices(x).batch(32)):
        history = vae.fit(data, epochs=1, shuffle=False, verbose=0).history
        assert all(np.isfinite(history[name][0]) for name in ("loss", "reconstruction_loss",
                                                              "kl_loss"))


@pytest.mark.parametrize("reconstruction", ["l1", "l2"])
def test_other_reconstruction_errors_train(reconstruction):
    x = bumps(32)
    vae = tiny_vae(reconstruction=reconstruction, beta=0.5)
    vae.compile("adam")
    first = vae.train_on_batch(x, return_dict=True)
    for _ in range(5):
        last = vae.train_on_batch(x, return_dict=True)
    assert np.isfinite(first["loss"]) and last["loss"] < first["loss"]
    assert 0 < last["reconstruction_loss"] < first["reconstruction_loss"]


def test_dcgan_fit_runs_and_changes_the_generator():
    x = bumps(128)
    gan = tiny_gan()
    z = np.random.default_rng(1).normal(size=(4, 8)).astype("float32")
    before = np.asarray(gan(z))
    gan.compile()
    assert gan.generator_optimizer.learning_rate.numpy() == pytest.approx(2e-4)
    assert gan.discriminator_optimizer.beta_1 == 0.5
    history = gan.fit(x, epochs=2, batch_size=32, verbose=0).history
    assert set(history) == {"generator_loss", "discriminator_loss"}
    assert np.all(np.isfinite(history["generator_loss"] + history["discriminator_loss"]))
    assert int(gan.generator_optimizer.iterations) == int(gan.discriminator_optimizer.iterations)
    assert int(gan.generator_optimizer.iterations) == 8
    assert np.abs(np.asarray(gan(z)) - before).max() > 1e-3


def test_seeds_reproduce_samples():
    for model in (tiny_vae(), tiny_gan()):
        first, again = np.asarray(model.sample(4, seed=3)), np.asarray(model.sample(4, seed=3))
        np.testing.assert_array_equal(first, again)
        assert np.abs(first - np.asarray(model.sample(4, seed=4))).max() > 1e-4


SCRIPT = """
import sys, warnings, numpy as np, keras
import manidefense, manidefense.zoo.generators
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    vae = keras.saving.load_model(sys.argv[1])
    gan = keras.saving.load_model(sys.argv[2])
bad = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
assert not bad, bad
x, z = np.load(sys.argv[3]), np.load(sys.argv[4])
np.savez(sys.argv[5], mean=vae.encode(x), images=vae.decode(vae.encode(x)), fake=gan(z),
         logit=gan.discriminator(x))
print(type(vae).__name__, type(gan).__name__, vae.latent_dim, vae.reconstruction,
      int(vae.optimizer.iterations), int(gan.discriminator_optimizer.iterations))
"""


def test_keras_file_round_trip_in_a_fresh_process(tmp_path):
    x = bumps(32)
    vae, gan = tiny_vae(reconstruction="l1", beta=2.0), tiny_gan()
    assert VAE.from_config(vae.get_config()).get_config() == vae.get_config()
    assert DCGAN.from_config(gan.get_config()).get_config() == gan.get_config()
    vae.compile("adam")
    vae.fit(x, batch_size=16, verbose=0)
    gan.compile()
    gan.fit(x, batch_size=16, verbose=0)
    z = np.random.default_rng(2).normal(size=(4, 8)).astype("float32")
    paths = [tmp_path / name for name in ("vae.keras", "gan.keras", "x.npy", "z.npy", "o.npz")]
    vae.save(paths[0])
    gan.save(paths[1])
    np.save(paths[2], x)
    np.save(paths[3], z)
    result = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, paths)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["VAE", "DCGAN", "2", "l1", "2", "2"]
    out = np.load(paths[4])
    np.testing.assert_allclose(out["mean"], np.asarray(vae.encode(x)), atol=1e-6)
    np.testing.assert_allclose(out["images"], np.asarray(vae.decode(vae.encode(x))), atol=1e-6)
    np.testing.assert_allclose(out["fake"], np.asarray(gan(z)), atol=1e-6)
    np.testing.assert_allclose(out["logit"], np.asarray(gan.discriminator(x)), atol=1e-5)


@pytest.mark.parametrize("make, match", [
    (lambda: VAE(image_shape=(30, 28, 1)), "`image_shape`.*divisible by 4"),
    (lambda: VAE(image_shape=(28, 28)), "`image_shape`"),
    (lambda: DCGAN(image_shape=(28, 26, 3)), "`image_shape`"),
    (lambda: VAE(latent_dim=0), "`latent_dim` must be an integer >= 1"),
    (lambda: DCGAN(latent_dim=0), "`latent_dim`"),
    (lambda: VAE(reconstruction="mse"), "`reconstruction` must be one of"),
    (lambda: VAE(width=0), "`width`"),
    (lambda: VAE(beta=-1.0), "`beta` must be >= 0"),
    (lambda: DCGAN(seed=1.5), "`seed`"),
    (lambda: tiny_vae().sample(0), "`num`"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
