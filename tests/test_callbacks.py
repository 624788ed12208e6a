"""RobustnessMonitor: robust accuracy in the epoch logs, usable by EarlyStopping & co."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

import manidefense as md
from manidefense.callbacks import RobustnessMonitor


@pytest.fixture(scope="module")
def data():
    x, y = md.datasets.load("synthetic", "train", limit=256)
    return x, y


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = md.zoo.small_cnn(width=4)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _pgd():
    return md.attacks.PGD(eps=0.1, num_steps=3, seed=0)


def test_logged_value_equals_a_separate_attack_on_the_same_subset(data):
    x, y = data
    model = _model()
    monitor = RobustnessMonitor(_pgd(), (x, y), num_examples=64)
    history = model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[monitor])
    logged = history.history["val_robust_accuracy"]
    assert len(logged) == 2
    x_adv = _pgd()(model, x[:64], y[:64])
    expected = np.mean(np.argmax(model.predict(x_adv, verbose=0), -1) == y[:64])
    assert logged[-1] == pytest.approx(expected)


def test_every_and_several_attacks_with_a_worst_case(data):
    x, y = data
    model = _model()
    attacks = [_pgd(), md.attacks.FGSM(eps=0.1)]
    monitor = RobustnessMonitor(attacks, (x, y), every=2, num_examples=32, names=["pgd", "fgsm"])
    seen = []
    spy = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(dict(logs)))
    model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[monitor, spy])
    assert ["val_robust_accuracy" in logs for logs in seen] == [False, True, False, True]
    last = seen[-1]
    assert last["val_robust_accuracy"] <= min(last["val_robust_accuracy_pgd"],
                                              last["val_robust_accuracy_fgsm"])
    correct = np.ones(32, bool)
    for attack in (_pgd(), md.attacks.FGSM(eps=0.1)):
        x_adv = attack(model, x[:32], y[:32])
        correct &= np.argmax(model.predict(x_adv, verbose=0), -1) == y[:32]
    assert last["val_robust_accuracy"] == pytest.approx(correct.mean())


def test_early_stopping_triggers_on_robust_accuracy(data, tmp_path):
    x, y = data
    model = _model()
    # eps so large that robust accuracy stays 0: no improvement, so patience 1 stops at epoch 2.
    monitor = RobustnessMonitor(md.attacks.PGD(eps=1.0, num_steps=2, seed=0), (x, y),
                                num_examples=32)
    stop = keras.callbacks.EarlyStopping(monitor="val_robust_accuracy", mode="max", patience=1)
    log = tmp_path / "log.csv"
    history = model.fit(x, y, epochs=10, batch_size=64, verbose=0,
                        callbacks=[monitor, stop, keras.callbacks.CSVLogger(str(log))])
    assert history.history["val_robust_accuracy"] == [0.0, 0.0]
    assert stop.stopped_epoch == 1
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["val_robust_accuracy"]) for r in rows] == [0.0, 0.0]


def test_works_with_the_dual_manifold_trainer_and_writes_tensorboard(data, tmp_path):
    x, y = data
    keras.utils.set_random_seed(0)
    classifier = md.zoo.small_cnn(width=4)
    trainer = md.training.DualManifoldTrainer(
        classifier, image_attack=md.attacks.PGD(eps=0.05, num_steps=2), latent_attack=None,
        seed=0)
    trainer.compile(optimizer="adam")
    monitor = RobustnessMonitor(_pgd(), (x, y), num_examples=16, log_dir=tmp_path / "tb",
                                num_images=4)
    history = trainer.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[monitor])
    x_adv = _pgd()(classifier, x[:16], y[:16])
    expected = np.mean(np.argmax(classifier.predict(x_adv, verbose=0), -1) == y[:16])
    assert history.history["val_robust_accuracy"][0] == pytest.approx(expected)
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        tags |= {v.tag for v in event.summary.value}
    assert {"robustness/adversarial_examples", "robustness/val_robust_accuracy"} <= tags


def test_works_with_the_generative_adversarial_trainer(data):
    x, y = data
    keras.utils.set_random_seed(0)
    classifier = md.zoo.small_cnn(width=4)
    generator = md.zoo.StyleGenerator(channels=(8, 4, 2), latent_dim=8, w_dim=8, seed=0)
    attack = md.attacks.GenerativeAttack(generator, style_step=0.05, noise_step=0.5,
                                         max_iterations=2)
    trainer = md.training.GenerativeAdversarialTrainer(classifier, attack=attack, seed=0)
    trainer.compile(optimizer="adam")
    monitor = RobustnessMonitor(_pgd(), (x, y), num_examples=16)
    history = trainer.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0,
                          callbacks=[monitor])
    x_adv = _pgd()(classifier, x[:16], y[:16])
    expected = np.mean(np.argmax(classifier.predict(x_adv, verbose=0), -1) == y[:16])
    assert history.history["val_robust_accuracy"][0] == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, name", [
    (dict(attack="pgd"), "attack"), (dict(attack=[]), "attack"),
    (dict(every=0), "every"), (dict(num_examples=0), "num_examples"),
    (dict(names=["a", "b"]), "names"), (dict(validation_data=np.zeros(3)), "validation_data"),
])
def test_bad_arguments_raise(data, kwargs, name):
    x, y = data
    args = dict(attack=_pgd(), validation_data=(x, y)) | kwargs
    with pytest.raises(ValueError, match=f"`{name}"):
        RobustnessMonitor(**args)


def test_bad_validation_data_is_named(data):
    x, y = data
    with pytest.raises(ValueError, match="validation_data"):
        RobustnessMonitor(_pgd(), (x * 3.0, y))
    with pytest.raises(ValueError, match="validation_data"):
        RobustnessMonitor(_pgd(), (x, y[:-1]))
