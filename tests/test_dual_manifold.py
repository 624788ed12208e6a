"""DualManifoldTrainer: the losses and metrics fit reports, the training modes, and the Keras
machinery (callbacks, resume, tf.data, mixed precision, tf.distribute, serialization)."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import manidefense as md
from manidefense.training import DualManifoldTrainer

LATENT, SHAPE, CLASSES = 4, (12, 12, 1), 4


def _decoder():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((LATENT,)), keras.layers.Dense(144, activation="sigmoid"),
                             keras.layers.Reshape(SHAPE)], name="toy_decoder")


def _classifier(seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                             keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(CLASSES)], name="toy_classifier")


@pytest.fixture(scope="module")
def world():
    """A fixed decoder G, latents w, on-manifold images G(w) and labels set by w's quadrant."""
    decoder = _decoder()
    rng = np.random.default_rng(0)
    w = rng.normal(size=(512, LATENT)).astype("float32")
    y = ((w[:, 0] > 0).astype("int64") + 2 * (w[:, 1] > 0)).astype("int64")
    x = decoder(w).numpy()
    return decoder, x, w, y


def _trainer(decoder, clf, image=True, latent=True, deterministic=False, **kwargs):
    start = not deterministic
    image_attack = md.attacks.PGD(eps=0.05, num_steps=3, random_start=start) if image else None
    latent_attack = (md.attacks.LatentPGD(decoder, eta=0.2, num_steps=3, random_start=start)
                     if latent else None)
    trainer = DualManifoldTrainer(clf, image_attack=image_attack, latent_attack=latent_attack,
                                  seed=0, **kwargs)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05))
    return trainer


def _ce(logits, y):
    return float(np.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))


def _acc(logits, y):
    return float(np.mean(np.argmax(logits, -1) == y))


def test_reported_losses_and_accuracies_equal_an_independent_computation(world):
    decoder, x, w, y = world
    x, w, y = x[:64], w[:64], y[:64]
    clf = _classifier()
    reference = keras.models.clone_model(clf)
    reference.set_weights(clf.get_weights())  # the weights before the (single) update
    trainer = _trainer(decoder, clf, deterministic=True, clean_weight=0.2)
    history = trainer.fit((x, w), y, epochs=1, batch_size=64, verbose=0).history

    x_img = md.attacks.projected_gradient_descent(reference, x, y, eps=0.05, num_steps=3,
                                                  random_start=False, seed=0)
    w_adv = md.attacks.LatentPGD(decoder, eta=0.2, num_steps=3, random_start=False)(
        reference, w, y)
    x_lat = decoder(w_adv).numpy()
    logits = {name: reference(v).numpy() for name, v in
              (("clean", x), ("image", x_img), ("latent", x_lat))}
    expected = {
        "accuracy": _acc(logits["clean"], y), "clean_loss": _ce(logits["clean"], y),
        "image_accuracy": _acc(logits["image"], y), "image_loss": _ce(logits["image"], y),
        "latent_accuracy": _acc(logits["latent"], y), "latent_loss": _ce(logits["latent"], y),
    }
    expected["loss"] = (0.2 * expected["clean_loss"] + 0.5 * expected["image_loss"]
                        + 0.5 * expected["latent_loss"])
    assert set(history) == set(expected)
    for name, value in expected.items():
        assert history[name][0] == pytest.approx(value, abs=1e-5), name
    # The attacks did something: the adversarial losses exceed the clean one.
    assert expected["image_loss"] > expected["clean_loss"] + 0.01
    assert expected["latent_loss"] > expected["clean_loss"] + 0.001


def test_metrics_are_per_epoch_means_over_batches(world):
    decoder, x, w, y = world
    trainer = _trainer(decoder, _classifier(), deterministic=True)
    history = trainer.fit((x[:128], w[:128]), y[:128], epochs=2, batch_size=32, verbose=0).history
    # Accuracies over 128 examples in 4 batches of 32 are multiples of 1/128.
    for name in ("accuracy", "image_accuracy", "latent_accuracy"):
        for value in history[name]:
            assert abs(value * 128 - round(value * 128)) < 1e-4


@pytest.mark.parametrize("mode", ["at", "om-at", "normal"])
def test_modes_report_only_their_terms(world, mode):
    decoder, x, w, y = world
    image, latent = {"at": (True, False), "om-at": (False, True), "normal": (False, False)}[mode]
    trainer = _trainer(decoder, _classifier(), image=image, latent=latent)
    data = (x[:64], y[:64]) if not latent else ((x[:64], w[:64]), y[:64])
    history = trainer.fit(*data, epochs=1, batch_size=32, verbose=0).history
    assert ("image_loss" in history) == image and ("latent_loss" in history) == latent
    expected_clean = 1.0 if mode == "normal" else 0.0
    assert trainer.clean_weight == expected_clean
    assert (trainer.image_weight, trainer.latent_weight) == (float(image), float(latent))
    if mode == "at":
        assert history["loss"][0] == pytest.approx(history["image_loss"][0], rel=1e-5)


def test_trades_loss_composition(world):
    decoder, x, w, y = world
    trainer = _trainer(decoder, _classifier(), objective="trades", trades_beta=3.0,
                       deterministic=True)
    h = trainer.fit((x[:64], w[:64]), y[:64], epochs=1, batch_size=64, verbose=0).history
    assert h["loss"][0] == pytest.approx(
        h["clean_loss"][0] + 3.0 * (h["image_loss"][0] + h["latent_loss"][0]), rel=1e-5)
    assert h["image_loss"][0] > 0 and h["latent_loss"][0] > 0  # KL terms, maximised


def test_adversarial_training_buys_robustness_in_its_own_space(world):
    """The paper's Table-1 pattern in miniature: AT resists image PGD better than normal
    training does; OM-AT resists latent PGD better than normal training does."""
    decoder, x, w, y = world
    xt, wt, yt = x[384:], w[384:], y[384:]
    x, w, y = x[:384], w[:384], y[:384]
    models = {}
    for mode, (image, latent) in {"normal": (False, False), "at": (True, False),
                                  "om-at": (False, True)}.items():
        clf = _classifier()
        trainer = DualManifoldTrainer(
            clf, image_attack=md.attacks.PGD(eps=0.08, num_steps=5) if image else None,
            latent_attack=md.attacks.LatentPGD(decoder, eta=0.25, num_steps=5) if latent else None,
            seed=0)
        trainer.compile(optimizer=keras.optimizers.Adam(0.01))
        trainer.fit((x, w), y, epochs=15, batch_size=64, verbose=0)
        models[mode] = clf
    pgd = md.attacks.PGD(eps=0.08, num_steps=10, seed=0)
    om = md.attacks.LatentPGD(decoder, eta=0.25, num_steps=10, seed=0)
    image_acc = {m: _acc(c(pgd(c, xt, yt)).numpy(), yt) for m, c in models.items()}
    latent_acc = {m: _acc(c(decoder(om(c, wt, yt))).numpy(), yt) for m, c in models.items()}
    assert image_acc["at"] > image_acc["normal"] + 0.15, image_acc
    assert latent_acc["om-at"] > latent_acc["normal"] + 0.05, latent_acc
    # ...and not in the other one: AT does not resist the on-manifold attack (Table 1).
    assert latent_acc["at"] < latent_acc["om-at"] - 0.15, latent_acc


def test_backup_and_restore_resumes_exactly(world, tmp_path):
    decoder, x, w, y = world
    clf = _classifier()
    initial = clf.get_weights()

    def fit(callbacks=()):
        clf.set_weights(initial)
        trainer = _trainer(decoder, clf)  # random starts: the seed state must be restored too
        trainer.compile(optimizer=keras.optimizers.Adam(0.01))
        return trainer.fit((x[:128], w[:128]), y[:128], epochs=4, batch_size=32, shuffle=False,
                           verbose=0, callbacks=list(callbacks)).history

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    reference = fit()["loss"]
    expected = [v.copy() for v in clf.get_weights()]
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fit([backup, Interrupt()])
    resumed = fit([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])["loss"]
    assert resumed == pytest.approx(reference[2:], abs=1e-6)
    for a, b in zip(expected, clf.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_tf_data_and_on_manifold_dataset(world):
    decoder, x, w, y = world
    om = md.manifold.OnManifoldData(w[:96], x[:96], x[:96], y[:96], np.zeros(96, "float32"))
    trainer = _trainer(decoder, _classifier())
    history = trainer.fit(om.to_dataset(batch_size=32, shuffle=True, seed=0), epochs=2,
                          verbose=0).history
    assert len(history["loss"]) == 2 and np.all(np.isfinite(history["loss"]))
    result = trainer.evaluate(om.to_dataset(batch_size=32), verbose=0, return_dict=True)
    assert set(result) == {"loss", "accuracy"}
    assert result["accuracy"] == pytest.approx(
        _acc(trainer.classifier(x[:96]).numpy(), y[:96]), abs=1e-6)
    np.testing.assert_allclose(trainer.predict(om.to_dataset(batch_size=32), verbose=0),
                               trainer.classifier(x[:96]).numpy(), atol=1e-5)


def test_mixed_precision_trains_and_attacks_in_float32(world):
    decoder, x, w, y = world
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        clf = _classifier()
        trainer = _trainer(decoder, clf)
        assert clf(x[:2]).dtype == "float16"
        assert type(trainer.optimizer).__name__ == "LossScaleOptimizer"
        history = trainer.fit((x[:128], w[:128]), y[:128], epochs=3, batch_size=32,
                              verbose=0).history
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(history["loss"]))
    assert history["image_loss"][-1] < history["image_loss"][0]


def test_mirrored_strategy_matches_one_device():
    """Two logical CPU devices must be configured before TensorFlow starts: a fresh process."""
    script = textwrap.dedent("""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import json, keras, numpy as np, manidefense as md
        def run(strategy, random_start):
            keras.utils.set_random_seed(0)
            L = keras.layers
            dec = keras.Sequential([keras.Input((4,)), L.Dense(144, activation="sigmoid"),
                                    L.Reshape((12, 12, 1))])
            w = np.random.default_rng(0).normal(size=(128, 4)).astype("float32")
            y = (w[:, 0] > 0).astype("int64") + 2 * (w[:, 1] > 0)
            x = dec(w).numpy()
            with strategy.scope():
                keras.utils.set_random_seed(1)
                clf = keras.Sequential([keras.Input((12, 12, 1)), L.Flatten(),
                                        L.Dense(16, activation="relu"), L.Dense(4)])
                tr = md.training.DualManifoldTrainer(
                    clf, image_attack=md.attacks.PGD(eps=0.05, num_steps=3,
                                                     random_start=random_start),
                    latent_attack=md.attacks.LatentPGD(dec, eta=0.2, num_steps=3,
                                                       random_start=random_start), seed=0)
                tr.compile(optimizer=keras.optimizers.SGD(0.1))
            ds = tf.data.Dataset.from_tensor_slices(((x, w), y)).batch(32)
            return tr.fit(ds, epochs=3, verbose=0).history["loss"]
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        out = {s: [run(tf.distribute.get_strategy(), s), run(mirrored, s)] for s in (False, True)}
        runs = {str(k): v for k, v in out.items()}
        print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "runs": runs}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    single, mirrored = result["runs"]["False"]
    np.testing.assert_allclose(mirrored, single, rtol=1e-5)  # deterministic attacks: equal
    single, mirrored = result["runs"]["True"]
    np.testing.assert_allclose(mirrored, single, rtol=0.02)  # random starts drawn per replica


def test_config_round_trip_and_classifier_saves(world, tmp_path):
    decoder, x, w, y = world
    trainer = _trainer(decoder, _classifier(), objective="trades", trades_beta=2.0,
                       clean_weight=0.5)
    trainer.fit((x[:64], w[:64]), y[:64], epochs=1, batch_size=32, verbose=0)
    clone = DualManifoldTrainer.from_config(trainer.get_config())
    for name in ("objective", "clean_weight", "image_weight", "latent_weight", "trades_beta",
                 "seed"):
        assert getattr(clone, name) == getattr(trainer, name)
    assert clone.image_attack.get_config() == trainer.image_attack.get_config()
    assert clone.latent_attack.eta == trainer.latent_attack.eta
    assert clone.generator is clone.latent_attack.decoder
    path = tmp_path / "clf.keras"
    trainer.classifier.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x[:8]).numpy(), trainer.classifier(x[:8]).numpy(),
                               atol=1e-6)
    # The whole trainer, generator included, in a fresh process.
    trainer.save(tmp_path / "trainer.keras")
    np.save(tmp_path / "w.npy", w[:8])
    script = textwrap.dedent(f"""
        import keras, numpy as np, manidefense
        t = keras.saving.load_model({str(tmp_path / "trainer.keras")!r})
        w = np.load({str(tmp_path / "w.npy")!r})
        assert t.generator is t.latent_attack.decoder and t.objective == "trades"
        np.save({str(tmp_path / "out.npy")!r}, t(t.generator(w)).numpy())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), trainer(decoder(w[:8])).numpy(),
                               atol=1e-5)


def test_only_the_classifier_trains(world):
    decoder, x, w, y = world
    before = [v.copy() for v in decoder.get_weights()]
    trainer = _trainer(decoder, _classifier())
    assert {id(v) for v in trainer.trainable_variables} == {
        id(v) for v in trainer.classifier.trainable_variables}
    trainer.fit((x[:64], w[:64]), y[:64], epochs=1, batch_size=32, verbose=0)
    for a, b in zip(before, decoder.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_raise(world):
    decoder, x, w, y = world
    clf = _classifier()
    with pytest.raises(ValueError, match="objective"):
        DualManifoldTrainer(clf, objective="kl")
    with pytest.raises(ValueError, match="latent_attack"):
        DualManifoldTrainer(clf, latent_attack=md.attacks.PGD())
    with pytest.raises(ValueError, match="generator"):
        DualManifoldTrainer(clf, generator=_decoder(),
                            latent_attack=md.attacks.LatentPGD(decoder))
    with pytest.raises(ValueError, match="weights"):
        DualManifoldTrainer(clf, latent_attack=None, image_weight=0.0)
    with pytest.raises(ValueError, match="image_attack"):
        DualManifoldTrainer(clf, image_attack=md.attacks.Square(eps=0.1), objective="trades")
    with pytest.raises(ValueError, match="classifier"):
        DualManifoldTrainer(lambda z: z)
    trainer = _trainer(decoder, clf)
    with pytest.raises(ValueError, match=r"\(\(x, w\), y\)"):
        trainer.fit(x[:32], y[:32], epochs=1, verbose=0)


def test_default_attacks_are_the_authors(world):
    decoder = world[0]
    trainer = DualManifoldTrainer(_classifier(), generator=decoder)
    assert trainer.image_attack.eps == pytest.approx(4 / 255)
    assert trainer.image_attack.step_size == pytest.approx(1 / 255)
    assert trainer.image_attack.num_steps == 5
    assert (trainer.latent_attack.eta, trainer.latent_attack.step_size,
            trainer.latent_attack.num_steps) == (0.02, 0.005, 5)
    assert trainer.latent_attack.decoder is decoder
    assert (trainer.clean_weight, trainer.image_weight, trainer.latent_weight) == (0.0, 0.5, 0.5)
