"""Distributed evaluation equals the single-device run, example by example.

Devices are fixed when TensorFlow starts, so each run is a fresh process
(tests/_distributed_worker.py): one device and MirroredStrategy over two logical CPUs in one
process, and MultiWorkerMirroredStrategy with two worker processes talking over localhost.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import manidefense as md
from manidefense import distribute

WORKER = str(Path(__file__).with_name("_distributed_worker.py"))
KEYS = ("clean", "robust", "broken_by", "x_adv")


def _start(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("distributed")
    _finish(_start("mirrored", work / "mirrored.npz"))  # also writes mirrored.single.npz
    ports = [_free_port(), _free_port()]
    workers = [_start("multiworker", work / f"worker{i}.npz", i, *ports) for i in range(2)]
    for process in workers:
        _finish(process)
    return {name: dict(np.load(work / f"{name}.npz"))
            for name in ("mirrored.single", "mirrored", "worker0", "worker1")}


def test_the_single_run_breaks_examples_with_several_attacks(runs):
    single = runs["mirrored.single"]
    assert int(single["replicas"]) == 1
    broken_by = single["broken_by"]
    # Not a degenerate cascade: two random attacks break examples, some stay robust.
    assert {0, 1} <= set(broken_by.tolist()) and single["robust"].any()


@pytest.mark.parametrize("name", ["mirrored", "worker0", "worker1"])
def test_distributed_evaluation_equals_the_single_device_run_per_example(runs, name):
    assert int(runs[name]["replicas"]) == 2
    for key in KEYS:
        np.testing.assert_array_equal(runs[name][key], runs["mirrored.single"][key], err_msg=key)


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(flat))


def test_a_batch_draws_the_same_noise_whatever_came_before_it():
    model = _model()
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 1)).astype(np.float32)
    other = x.copy()
    other[:8] = rng.random((8, 8, 8, 1))  # a different first batch
    y = np.zeros(16, np.int64)
    attack = md.attacks.UniformNoise(eps=0.1, seed=5, batch_size=8)
    first, second = attack(model, x, y), attack(model, other, y)
    np.testing.assert_array_equal(first[8:], second[8:])
    # ... and batches draw different noise from each other.
    assert not np.allclose(first[:8] - x[:8], first[8:] - x[8:])


def test_bad_strategies_are_refused():
    model = _model()
    x = np.zeros((4, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="strategy"):
        md.evaluation.evaluate_robustness(model, x, np.zeros(4, np.int64), ["fgsm"], eps=0.1,
                                          strategy="mirrored")
    with pytest.raises(ValueError, match="tf.distribute.Strategy"), distribute.distributed(3):
        pass


def test_a_one_replica_strategy_runs_in_place():
    model = _model()
    x = np.random.default_rng(1).random((10, 8, 8, 1)).astype(np.float32)
    y = np.zeros(10, np.int64)
    attack = md.attacks.PGD(eps=0.1, num_steps=2, seed=0, batch_size=4)
    expected = attack(model, x, y)
    with distribute.distributed(tf.distribute.OneDeviceStrategy("/cpu:0")):
        np.testing.assert_array_equal(attack(model, x, y), expected)
    assert distribute.current_strategy() is None
