"""Runs one evaluation for tests/test_distributed.py in a fresh process (devices are fixed at
TensorFlow's start): `python _distributed_worker.py MODE OUT [TASK PORT0 PORT1]`.

MODE `mirrored`: the single-device run (written to OUT with `.single` before the suffix),
then MirroredStrategy over two logical CPUs (OUT). `multiworker`: MultiWorkerMirroredStrategy,
worker TASK of two on localhost PORT0/PORT1.
"""

import json
import os
import sys

mode, out = sys.argv[1], sys.argv[2]
if mode == "multiworker":
    task, ports = int(sys.argv[3]), sys.argv[4:6]
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{p}" for p in ports]},
        "task": {"type": "worker", "index": task}})

import tensorflow as tf  # noqa: E402

if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import manidefense as md  # noqa: E402


def evaluate(strategy, out):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(5)(h))
    rng = np.random.default_rng(0)
    x = rng.random((45, 12, 12, 1)).astype(np.float32)
    y = np.argmax(model.predict(x, verbose=0), -1)  # every example starts correct
    y[:3] = (y[:3] + 1) % 5  # ... except three
    common = {"eps": 0.05, "batch_size": 8}
    attacks = [("noise", md.attacks.UniformNoise(seed=4, **common)),
               ("square", md.attacks.Square(num_queries=4, seed=2, **common)),
               ("pgd", md.attacks.PGD(num_steps=1, step_size=0.01, seed=1, **common)),
               ("apgd", md.attacks.APGD(num_steps=5, seed=3, **common))]
    report = md.evaluation.evaluate_robustness(model, x, y, attacks, checks="none",
                                               batch_size=8, chunk_size=30, strategy=strategy)
    np.savez(out, clean=report.clean_correct, robust=report.robust,
             broken_by=report.broken_by, x_adv=report.adversarial_examples,
             replicas=report.meta["replicas"])


if mode == "mirrored":
    evaluate(None, out.replace(".npz", ".single.npz"))
    evaluate(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), out)
else:
    evaluate(tf.distribute.MultiWorkerMirroredStrategy(), out)
