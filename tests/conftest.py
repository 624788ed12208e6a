"""Shared fixtures: a small classifier trained on synthetic data, once per test session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import manidefense as md  # noqa: E402

SHAPE = (12, 12, 1)
NUM_CLASSES = 4


def _small_model(num_classes=NUM_CLASSES, softmax=False):
    return keras.Sequential([
        keras.Input(SHAPE),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(num_classes, activation="softmax" if softmax else None),
    ])


@pytest.fixture(scope="session")
def data():
    """(x_train, y_train, x_test, y_test) of a 4-class synthetic 12×12 problem."""
    x, y = md.datasets.load("synthetic", "train", shape=SHAPE, num_classes=NUM_CLASSES,
                            num_examples=2000, seed=0)
    xt, yt = md.datasets.load("synthetic", "test", shape=SHAPE, num_classes=NUM_CLASSES,
                              num_examples=128, seed=0)
    return x, y, xt, yt


@pytest.fixture(scope="session")
def trained_model(data):
    """A logits CNN with ≈97% test accuracy on `data` (trained in a few seconds)."""
    x, y, xt, yt = data
    keras.utils.set_random_seed(0)
    model = _small_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=5, batch_size=64, verbose=0)
    accuracy = model.evaluate(xt, yt, verbose=0)[1]
    assert accuracy > 0.9, f"fixture model failed to train: accuracy {accuracy}"
    return model


def accuracy(model, x, y):
    """Top-1 accuracy of `model` on numpy inputs."""
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def lp(delta, norm):
    """Per-example Lp norm in float64, the independent numpy oracle."""
    flat = np.asarray(delta, dtype=np.float64).reshape(len(delta), -1)
    if norm == "linf":
        return np.abs(flat).max(axis=1)
    if norm == "l2":
        return np.sqrt((flat**2).sum(axis=1))
    return np.abs(flat).sum(axis=1)
