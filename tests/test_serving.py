"""SavedModel export of every defense: reload in a process without manidefense, same outputs.

One module fixture exports every defense, records what the in-process model returns, and runs
one subprocess that loads the SavedModels with `tf.saved_model.load` only (it asserts that
manidefense never gets imported; `import tensorflow` itself imports Keras) and calls every
endpoint.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import manidefense as md
from manidefense import serving
from manidefense.attacks import GenerativeAttack
from manidefense.certification import SmoothedClassifier
from manidefense.layers import RBFLayer, rbf_defense
from manidefense.shells import MCN, NCN, ModelShell, SamplingVote
from manidefense.training import DualManifoldTrainer, GenerativeAdversarialTrainer
from manidefense.training.base import ClassifierTrainer

SEEDS = (3, 3, 4)  # the same seed twice, then another

RELOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    work = sys.argv[1]
    x = np.load(work + "/x.npy")
    endpoints = json.load(open(work + "/endpoints.json"))
    out = {}
    for name, names in endpoints.items():
        served = tf.saved_model.load(work + "/" + name)
        fn_input = tf.constant(x[:4] if name == "smoothed" else x)
        for endpoint in names:
            fn = getattr(served, endpoint)
            if endpoint.endswith("_seeded"):
                for i, seed in enumerate(SEEDS):
                    seed = tf.constant(seed, tf.int64)
                    out[f"{name}.{endpoint}.{i}"] = fn(fn_input, seed).numpy()
            else:
                out[f"{name}.{endpoint}"] = fn(fn_input).numpy()
        signature = served.signatures["serving_default"]
        out[f"{name}.serving_default"] = list(signature(fn_input).values())[0].numpy()
    np.savez(work + "/reloaded.npz", **out)
    imported = sorted(m for m in sys.modules if m.split(".")[0] == "manidefense")
    json.dump(imported, open(work + "/imported.json", "w"))
""").replace("SEEDS", repr(SEEDS))


def _cnn():
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def _defenses(x):
    keras.utils.set_random_seed(0)
    cnn = _cnn()
    rbf = RBFLayer(patch_size=3, max_filters=8, em_steps=5, birth_steps=2, seed=0)
    rbf.adapt(x)
    dmat = DualManifoldTrainer(md.zoo.small_cnn(width=4), image_attack=md.attacks.PGD(
        eps=0.05, num_steps=2), latent_attack=None, seed=0)
    generator = md.zoo.StyleGenerator.pretrained("fashion_mnist")
    gat = GenerativeAdversarialTrainer(md.zoo.small_cnn(width=4), generator,
                                       GenerativeAttack(generator), seed=0)
    return {
        "rbf_cnn": rbf_defense(cnn, rbf, beta2=1.75, num_samples=4, seed=1),
        "rbf_cnn_deterministic": rbf_defense(cnn, rbf, beta2=0.0),
        "shell_mcn": ModelShell(cnn, MCN(delta=0.1, num_steps=5)),
        "shell_ncn": ModelShell(cnn, NCN(0.9, num_steps=5, num_stages=2)),
        "shell_sampling": ModelShell(cnn, SamplingVote(num_samples=8, seed=0)),
        "smoothed": SmoothedClassifier(cnn, 10, sigma=0.25, num_samples=8, seed=0),
        "dmat_trainer": dmat,
        "dmat_classifier": dmat.classifier,
        "gat_trainer": gat,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work = tmp_path_factory.mktemp("serving")
    x = np.random.default_rng(0).random((6, 28, 28, 1)).astype(np.float32)
    np.save(work / "x.npy", x)
    models = _defenses(x)
    endpoints, expected = {}, {}
    for name, model in models.items():
        inputs = x[:4] if name == "smoothed" else x
        endpoints[name] = model.export(str(work / name), verbose=False) if hasattr(
            model, "export_endpoints") or isinstance(model, (ModelShell, ClassifierTrainer)) \
            else serving.export(model, str(work / name))
        # The SavedModel starts from the noise state at export: the first call after export.
        expected[f"{name}.serve"] = np.asarray(model(inputs))
        generators = serving.seed_generators(model)
        extra = model.export_endpoints([tf.TensorSpec((None, 28, 28, 1))]) if hasattr(
            model, "export_endpoints") else {}
        if name == "smoothed":
            expected[f"{name}.predict"] = model.predict(inputs, num_samples=100, alpha=0.001)
        for endpoint in endpoints[name]:
            if endpoint.endswith("_seeded"):
                base = endpoint.removesuffix("_seeded")
                fn = (lambda m=model, i=inputs: m(i)) if base == "serve" else (
                    lambda f=extra[base][0], i=inputs: f(tf.constant(i)))
                for i, seed in enumerate(SEEDS):
                    expected[f"{name}.{endpoint}.{i}"] = np.asarray(
                        serving.with_seed(generators, seed, fn))
    (work / "endpoints.json").write_text(json.dumps(endpoints))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", RELOAD, str(work)], cwd=str(work), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reloaded = dict(np.load(work / "reloaded.npz"))
    imported = json.loads((work / "imported.json").read_text())
    return models, endpoints, expected, reloaded, imported


def test_reload_does_not_need_manidefense(world):
    assert world[4] == []


@pytest.mark.parametrize("name", ["rbf_cnn_deterministic", "shell_mcn", "shell_ncn",
                                  "dmat_trainer", "dmat_classifier", "gat_trainer"])
def test_deterministic_defenses_reload_with_the_same_outputs(world, name):
    _, endpoints, expected, reloaded, _ = world
    assert endpoints[name] == ["serve"]  # no seed endpoint on a deterministic model
    np.testing.assert_allclose(reloaded[f"{name}.serve"], expected[f"{name}.serve"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(reloaded[f"{name}.serving_default"],
                                  reloaded[f"{name}.serve"])


@pytest.mark.parametrize("name", ["rbf_cnn", "shell_sampling", "smoothed"])
def test_randomized_defenses_continue_their_noise_stream_and_seeds_reproduce(world, name):
    _, endpoints, expected, reloaded, _ = world
    assert "serve_seeded" in endpoints[name]
    # The first request after loading draws what the original drew first after export.
    np.testing.assert_allclose(reloaded[f"{name}.serve"], expected[f"{name}.serve"],
                               rtol=1e-5, atol=1e-6)
    for endpoint in [e for e in endpoints[name] if e.endswith("_seeded")]:
        first, again, other = (reloaded[f"{name}.{endpoint}.{i}"] for i in range(3))
        np.testing.assert_array_equal(first, again)
        if endpoint == "serve_seeded":  # predict's classes may agree across seeds
            assert not np.array_equal(first, other), "different seeds must draw other noise"
        for i in range(3):  # the seeded output is the same in and out of the process
            np.testing.assert_allclose(reloaded[f"{name}.{endpoint}.{i}"],
                                       expected[f"{name}.{endpoint}.{i}"], rtol=1e-5, atol=1e-6)


def test_a_trainer_exports_its_classifier_without_the_generator(world, tmp_path):
    models = world[0]
    gat = models["gat_trainer"]
    gat.export(str(tmp_path / "gat"))
    saved = tf.saved_model.load(str(tmp_path / "gat"))
    # The classifier's variables only (the trainer holds the generator's too).
    assert len(saved.variables) == len(gat.classifier.variables) < len(gat.variables)


def test_seeded_requests_leave_the_noise_stream_where_it_was(world):
    models = world[0]
    model = models["rbf_cnn"]
    x = np.random.default_rng(1).random((3, 28, 28, 1)).astype(np.float32)
    generators = serving.seed_generators(model)
    before = [g.state.numpy().copy() for g in generators]
    serving.with_seed(generators, 11, lambda: model(x))
    assert all(np.array_equal(b, g.state.numpy()) for b, g in zip(before, generators,
                                                                   strict=True))


def test_smoothed_classifier_exports_cohens_predict(world):
    _, endpoints, expected, reloaded, _ = world
    assert endpoints["smoothed"] == ["serve", "predict", "serve_seeded", "predict_seeded"]
    np.testing.assert_array_equal(reloaded["smoothed.predict"], expected["smoothed.predict"])
    # Vote frequencies of `num_samples` = 8 draws: multiples of 1/8 that sum to one.
    votes = reloaded["smoothed.serve"]
    np.testing.assert_allclose(votes.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(votes * 8, np.round(votes * 8), atol=1e-5)


def test_predict_from_counts_matches_the_numpy_binomial_test():
    rng = np.random.default_rng(0)
    counts = rng.multinomial(100, [0.45, 0.4, 0.15], size=200)
    counts[:5] = [[50, 50, 0], [100, 0, 0], [0, 60, 40], [33, 33, 34], [70, 30, 0]]
    classes = md.certification.smoothing.predict_from_counts(counts, 0.05).numpy()
    order = np.argsort(-counts, axis=1, kind="stable")
    n_a = counts[np.arange(200), order[:, 0]]
    n_b = counts[np.arange(200), order[:, 1]]
    p_value = md.stats.binomial_test(n_a, n_a + n_b)
    np.testing.assert_array_equal(classes, np.where(p_value > 0.05, -1, order[:, 0]))
    assert classes[0] == -1 and classes[1] == 0 and classes[4] == 0
    assert set(classes) >= {-1, 0}


def test_export_errors_say_what_is_wrong(tmp_path):
    class Unbuilt(keras.Model):
        def call(self, x):
            return keras.ops.reshape(x, (-1, 10))

    shell = ModelShell(Unbuilt(), MCN(delta=0.1))
    with pytest.raises(ValueError, match="input shape"):
        shell.export(str(tmp_path / "shell"))
    with pytest.raises(ValueError, match="keras.Model"):
        serving.export(MCN(delta=0.1), str(tmp_path / "mcn"))
    with pytest.raises(ValueError, match="options"):
        serving.export(_cnn(), str(tmp_path / "cnn"), options={"alpha": 0.1})
    with pytest.raises(ValueError, match="seeded"):
        serving.export(_cnn(), str(tmp_path / "cnn"), seeded=True)

    class Eager(keras.Model):  # reads a tensor's value in Python: cannot be traced
        def call(self, x):
            return x[:, :10, 0, 0] * float(np.asarray(x).mean())

    eager = Eager()
    eager(np.zeros((1, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="cannot be exported.*serve"):
        serving.export(eager, str(tmp_path / "eager"))


def test_a_shell_called_once_exports_without_a_signature(tmp_path):
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(10)

        def call(self, x):
            return self.dense(keras.ops.reshape(x, (-1, 784)))

    shell = ModelShell(Subclassed(), MCN(delta=0.1, num_steps=2))
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
    expected = np.asarray(shell(x))
    assert shell.export(str(tmp_path / "shell")) == ["serve"]
    served = tf.saved_model.load(str(tmp_path / "shell"))
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, rtol=1e-5,
                               atol=1e-6)
