"""GAT on a tiny style-based generator and a linear classifier: the attack's sign steps, its
per-example stopping and success semantics, `pgd_loop(stop_on_success=True)`, the
`GenerativeAdversarialTrainer`'s batches and history, `StyleGenerator`, seeds, round trips
and argument checks."""

import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from manidefense.attacks import PGD, GenerativeAttack
from manidefense.attacks.pgd import pgd_loop
from manidefense.training import GenerativeAdversarialTrainer
from manidefense.zoo import StyleGenerator

SHAPE, CLASSES, NUM = (8, 8, 1), 3, 24
TINY = dict(image_shape=SHAPE, num_classes=CLASSES, channels=(4, 2), latent_dim=4, w_dim=8,
            mapping_layers=1, noise_init=0.1, seed=0)


def _generator():
    """4 synthesis layers (4×4, 4×4, 8×8, 8×8), every noise factor B = 0.1 (noise moves)."""
    keras.utils.set_random_seed(0)
    return StyleGenerator(**TINY)


def _linear(kernel, bias, name="linear"):
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                              keras.layers.Dense(CLASSES)], name=name)
    model.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])
    return model


def _copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _predict(model, images):
    return np.argmax(np.asarray(model(np.asarray(images, np.float32))), axis=-1)


def _ce(logits, labels):
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).numpy()


@pytest.fixture(scope="module")
def world():
    """Generator, a linear classifier whose bias centres its logits (every class predicted),
    clean latents and images; `y` is the clean prediction except for the first 3 examples,
    which are misclassified from the start."""
    gen = _generator()
    kernel = np.random.default_rng(0).normal(size=(64, CLASSES))
    _, _, ref = gen.sample(np.arange(96) % CLASSES, seed=100)
    bias = -np.mean(np.reshape(ref.numpy(), (96, -1)) @ kernel, axis=0)
    clf = _linear(kernel, bias)
    styles, noises, images = gen.sample(np.arange(NUM) % CLASSES, seed=1)
    styles, noises = [s.numpy() for s in styles], [n.numpy() for n in noises]
    logits = clf(images).numpy()
    pred = logits.argmax(-1)
    y = pred.copy()
    y[:3] = (pred[:3] + 1) % CLASSES
    return types.SimpleNamespace(gen=gen, clf=clf, styles=styles, noises=noises,
                                 images=images.numpy(), logits=logits, pred=pred, y=y)


def _gradients(world, classes):
    """Independent ∇ of sum_i CE(f(g(y_i, η_i)), classes_i) w.r.t. every style and noise."""
    tensors = [tf.constant(t) for t in world.styles + world.noises]
    num = world.gen.num_layers
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        logits = world.clf(world.gen.synthesize(tensors[:num], tensors[num:]))
        total = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
            classes, logits, from_logits=True))
    grads = [g.numpy() for g in tape.gradient(total, tensors)]
    return grads[:num], grads[num:]


# === The attack: one step, frozen tensors, stopping, success, modes ===

STYLE_STEP, NOISE_STEP = 0.01, 0.02
MODES = ("least_likely", "untargeted", "user_target")


def _mode_call(world, mode):
    """(attack target, call target, the class whose CE is followed, +1 ascent / -1 descent,
    the initially fooled mask)."""
    if mode == "least_likely":
        return "least_likely", None, world.logits.argmin(-1), -1.0, world.pred != world.y
    if mode == "untargeted":
        return None, None, world.y, 1.0, world.pred != world.y
    target = (world.y + 1) % CLASSES
    target[3] = world.pred[3]  # already predicted as its target: done at iteration 0
    return "least_likely", target, target, -1.0, world.pred == target


@pytest.fixture(scope="module")
def one_step(world):
    """One-iteration results per mode (the user target overrides target='least_likely')."""
    out = {}
    for mode in MODES:
        attack_target, call_target, classes, sign, fooled0 = _mode_call(world, mode)
        attack = GenerativeAttack(world.gen, style_step=STYLE_STEP, noise_step=NOISE_STEP,
                                  max_iterations=1, target=attack_target)
        result = attack(world.clf, (world.styles, world.noises), world.y, call_target)
        out[mode] = (result, classes, sign, fooled0, call_target)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_one_step_moves_every_tensor_by_the_step_in_the_sign_of_the_gradient(
        world, one_step, mode):
    result, classes, sign, fooled0, _ = one_step[mode]
    assert 0 < fooled0.sum() < NUM
    grad_styles, grad_noises = _gradients(world, classes)
    for kind, before, after, grads, step in (
            ("style", world.styles, result.styles, grad_styles, STYLE_STEP),
            ("noise", world.noises, result.noises, grad_noises, NOISE_STEP)):
        for i, (x, x_adv, g) in enumerate(zip(before, after, grads, strict=True)):
            moving = ~fooled0
            # Done at iteration 0: nothing moves, bit for bit.
            np.testing.assert_array_equal(x_adv[fooled0], x[fooled0])
            # Each coordinate moved by exactly -step, 0 or +step (float32 arithmetic) ...
            delta = np.round((x_adv[moving] - x[moving]) / step)
            assert set(np.unique(delta)) <= {-1.0, 0.0, 1.0}, (kind, i)
            np.testing.assert_array_equal(
                x_adv[moving], x[moving] + np.float32(step) * delta.astype(np.float32))
            # ... in the sign of the independent gradient (ascent or descent), wherever the
            # gradient is clearly nonzero (a sign of ±1e-12 may differ between graph and
            # eager arithmetic).
            g = g[moving]
            clear = np.abs(g) > 1e-6 * np.abs(g).max()
            assert clear.mean() > 0.9, (kind, i)
            np.testing.assert_array_equal(delta[clear], sign * np.sign(g[clear]), err_msg=kind)


@pytest.mark.parametrize("mode", MODES)
def test_one_step_improves_the_objective_and_records_the_direction(world, one_step, mode):
    result, classes, sign, fooled0, call_target = one_step[mode]
    moving = ~fooled0
    before = _ce(world.logits, classes)[moving]
    after = _ce(world.clf(result.images).numpy(), classes)[moving]
    assert np.all(sign * (after - before) > 0), (before, after)
    if mode == "untargeted":
        assert result.target is None
    elif mode == "least_likely":
        np.testing.assert_array_equal(result.target, world.logits.argmin(-1))
    else:
        np.testing.assert_array_equal(result.target, call_target)


@pytest.mark.parametrize("mode", MODES)
def test_success_means_the_prediction_really_changed(world, one_step, mode):
    result, _, _, fooled0, call_target = one_step[mode]
    pred = _predict(world.clf, result.images)
    expected = pred == call_target if mode == "user_target" else pred != world.y
    np.testing.assert_array_equal(result.success, expected)
    np.testing.assert_array_equal(result.iterations[fooled0], 0)
    np.testing.assert_array_equal(result.iterations[~fooled0], 1)  # one step, fooled or not
    images = world.gen.synthesize(result.styles, result.noises).numpy()
    np.testing.assert_allclose(result.images, images, atol=1e-6)
    assert result.images.shape == (NUM, *SHAPE) and result.images.dtype == np.float32


@pytest.mark.parametrize("perturb, layers", [
    ("noise", (1,)), ("style", "fine"), (("style", "noise"), (0, 3))])
def test_tensors_outside_the_chosen_layers_and_inputs_stay_bit_identical(
        world, perturb, layers):
    gen = world.gen
    layers = gen.layer_groups[-1] if layers == "fine" else layers
    attack = GenerativeAttack(gen, perturb=perturb, layers=layers, style_step=0.05,
                              noise_step=0.1, max_iterations=3)
    result = attack(world.clf, (world.styles, world.noises), world.y)
    moving = result.iterations > 0
    assert moving.sum() >= NUM // 2
    perturb = (perturb,) if isinstance(perturb, str) else perturb
    for kind, before, after in (("style", world.styles, result.styles),
                                ("noise", world.noises, result.noises)):
        for i in range(gen.num_layers):
            if kind in perturb and i in layers:
                changed = np.any((after[i] != before[i]).reshape(NUM, -1), axis=1)
                np.testing.assert_array_equal(changed, moving, err_msg=f"{kind}[{i}]")
            else:
                np.testing.assert_array_equal(after[i], before[i], err_msg=f"{kind}[{i}]")


def test_an_example_stops_at_the_iteration_it_is_fooled(world):
    """Re-run with max_iterations = 1 .. T: the recorded `iterations` is the first t whose
    latents an independent prediction calls fooled, and the latents stay frozen after it."""
    num_steps, latents = 6, (world.styles, world.noises)
    runs = [GenerativeAttack(world.gen, style_step=0.02, noise_step=0.05, max_iterations=m)(
        world.clf, latents, world.y) for m in range(1, num_steps + 1)]
    final = runs[-1]
    fooled = np.stack([world.pred != world.y] + [_predict(world.clf, r.images) != world.y
                                                 for r in runs])  # (T + 1, NUM)
    first = np.where(fooled.any(0), fooled.argmax(0), num_steps)
    np.testing.assert_array_equal(final.iterations, first)
    np.testing.assert_array_equal(final.success, fooled[-1])
    never = ~fooled.any(0)
    # A mix: fooled at the start, after several different numbers of steps, and never.
    assert never.any() and (first == 0).any() and len(np.unique(first[~never])) >= 3, first
    assert not final.success[never].any()
    np.testing.assert_array_equal(final.iterations[never], num_steps)
    flat = [np.asarray(world.gen.flatten(r.styles, r.noises)) for r in runs]
    flat = [np.asarray(world.gen.flatten(*latents))] + flat
    for i in range(NUM):
        for m in range(num_steps):  # step m -> m + 1 moves iff not yet fooled at m
            moved = not np.array_equal(flat[m + 1][i], flat[m][i])
            assert moved == (m < first[i]), (i, m, first[i])
        assert fooled[first[i]:, i].all() or never[i]  # stays fooled once frozen


def test_a_user_target_needs_the_target_class_not_just_a_wrong_one(world):
    """The least-likely class given as a user target follows the very descent of the
    least-likely mode, but succeeds only on reaching that class."""
    latents, target = (world.styles, world.noises), world.logits.argmin(-1)
    attack = GenerativeAttack(world.gen, style_step=0.05, noise_step=0.1, max_iterations=8,
                              target=None)
    targeted = attack(world.clf, latents, world.pred, target)
    untargeted = attack(world.clf, latents, world.pred)
    least_likely = GenerativeAttack(world.gen, style_step=0.05, noise_step=0.1,
                                    max_iterations=8)(world.clf, latents, world.pred)
    pred_t, pred_u, pred_l = (_predict(world.clf, r.images)
                              for r in (targeted, untargeted, least_likely))
    np.testing.assert_array_equal(targeted.success, pred_t == target)
    np.testing.assert_array_equal(untargeted.success, pred_u != world.pred)
    np.testing.assert_array_equal(least_likely.success, pred_l != world.pred)
    assert untargeted.target is None
    np.testing.assert_array_equal(targeted.target, target)
    np.testing.assert_array_equal(least_likely.target, target)
    # Same path; the least-likely mode stops at the first wrong class, the targeted one only
    # at the target (and keeps going past other wrong classes).
    assert np.all(least_likely.iterations <= targeted.iterations)
    assert np.all(least_likely.success[targeted.success])
    earlier = least_likely.iterations < targeted.iterations  # wrong, but not yet the target
    assert earlier.any()
    assert np.all(pred_l[earlier] != target[earlier])
    same = least_likely.iterations == targeted.iterations
    np.testing.assert_array_equal(
        np.asarray(world.gen.flatten(*least_likely.latents))[same],
        np.asarray(world.gen.flatten(*targeted.latents))[same])


# === pgd_loop(stop_on_success=True) on an ordinary image attack ===

def test_pgd_loop_stop_on_success_freezes_examples_in_image_space(world):
    x, y, num_steps = world.images, world.y, 8

    def run(m):
        return pgd_loop(world.clf, x, y, eps=0.3, norm="linf", step_size=0.01, num_steps=m,
                        random_start=False, bounds=(0.0, 1.0), stop_on_success=True)

    runs = [run(m) for m in range(1, num_steps + 1)]
    assert all(len(r) == 4 for r in runs)
    x_adv, value, success, iterations = (np.asarray(v) for v in runs[-1])
    assert iterations.dtype == np.int32
    np.testing.assert_allclose(value, _ce(world.clf(x_adv).numpy(), y), rtol=1e-5)
    fooled = np.stack([world.pred != y] + [_predict(world.clf, r[0]) != y for r in runs])
    first = np.where(fooled.any(0), fooled.argmax(0), num_steps)
    never = ~fooled.any(0)
    assert never.any() and len(np.unique(first[~never])) >= 3, first
    np.testing.assert_array_equal(iterations, first)
    np.testing.assert_array_equal(success, ~never)
    path = [x] + [np.asarray(r[0]) for r in runs]
    for i in range(NUM):
        for m in range(num_steps):
            assert (not np.array_equal(path[m + 1][i], path[m][i])) == (m < first[i]), (i, m)
    assert np.abs(x_adv - x).max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


# === The trainer ===

@pytest.fixture(scope="module")
def train_data(world):
    labels = np.arange(32) % CLASSES
    _, _, x = world.gen.sample(labels, seed=2)
    return x.numpy(), labels.astype(np.int64)


def _attack(world, **kwargs):
    return GenerativeAttack(world.gen, **{"style_step": 0.05, "noise_step": 0.1, **kwargs})


def _trainer(world, classifier, seed=5, learning_rate=0.0, cls=GenerativeAdversarialTrainer,
             run_eagerly=False, **kwargs):
    trainer = cls(classifier, world.gen, _attack(world), seed=seed, **kwargs)
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate), run_eagerly=run_eagerly)
    return trainer


RECORDS = []


class _Recording(GenerativeAdversarialTrainer):
    """Records each train batch: the candidates, the filled adversarial half, the classifier's
    prediction on it (before the update) and the shape of the batch the classifier trains on."""

    def _fill(self, batch, candidates, labels):
        out = super()._fill(batch, candidates, labels)
        RECORDS.append({
            "batch": int(batch), "labels": np.asarray(labels),
            "images": np.asarray(candidates["images"]),
            "success": np.asarray(candidates["success"]),
            "x_adv": np.asarray(out[0]), "y_adv": np.asarray(out[1]),
            "pred": _predict(self.classifier, out[0]), "any_kept": bool(out[2])})
        return out

    def _logits(self, x, training):
        if training:
            RECORDS[-1]["trained_on"] = tuple(x.shape)
        return super()._logits(x, training)


@pytest.mark.parametrize("oversample, max_iterations", [(1, 2), (2, 4)])
def test_train_batch_holds_as_many_kept_adversarial_as_clean_images(
        world, train_data, oversample, max_iterations):
    x, y = train_data
    RECORDS.clear()
    trainer = _trainer(world, _copy(world.clf), cls=_Recording, run_eagerly=True,
                       oversample=oversample, max_iterations=max_iterations)
    trainer.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert len(RECORDS) == 2
    fewer = more = False
    for r in RECORDS:
        batch = r["batch"]
        assert batch == 16 and r["trained_on"] == (2 * batch, *SHAPE)
        assert len(r["labels"]) == oversample * batch
        kept = np.flatnonzero(r["success"])
        assert 0 < len(kept) < len(r["success"])  # some candidates were dropped
        fewer |= len(kept) < batch
        more |= len(kept) > batch
        # The documented fill: kept candidates in order, repeated or truncated to `batch`.
        index = kept[np.arange(batch) % len(kept)]
        np.testing.assert_array_equal(r["x_adv"], r["images"][index])
        np.testing.assert_array_equal(r["y_adv"], r["labels"][index])
        # Every image in the adversarial half fools the classifier (independent predict).
        assert np.all(r["pred"] != r["y_adv"])
    assert fewer if oversample == 1 else more


def test_history_equals_an_independent_computation(world, train_data):
    """SGD(learning_rate=0): the classifier never changes, so a fresh trainer with the same
    seed replays the same candidates with `adversarial_batch`, batch by batch."""
    x, y = train_data
    batch_logs = []
    callback = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batch_logs.append(dict(logs)))
    history = _trainer(world, world.clf, max_iterations=3).fit(
        x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[callback]).history
    replay = _trainer(world, world.clf, max_iterations=3)
    success, iterations, losses, adv_losses = [], [], [], []
    for b in range(2):
        xb, yb = x[16 * b:16 * (b + 1)], y[16 * b:16 * (b + 1)]
        out = {k: np.asarray(v) for k, v in replay.adversarial_batch(yb).items()}
        kept = np.flatnonzero(out["success"])
        assert 0 < len(kept) < 16
        index = kept[np.arange(16) % len(kept)]
        assert np.all(_predict(world.clf, out["images"][kept]) != yb[kept])
        success.append(out["success"])
        iterations.append(out["iterations"][kept])
        clean = _ce(world.clf(xb).numpy(), yb).mean()
        adv = _ce(world.clf(out["images"][index]).numpy(), yb[index]).mean()
        losses.append(clean)
        adv_losses.append(adv)
    expected = {
        "kept_fraction": np.concatenate(success).mean(),
        "mean_iterations": np.concatenate(iterations).mean(),
        "accuracy": np.mean(_predict(world.clf, x) == y),
        "clean_loss": np.mean(losses), "adversarial_loss": np.mean(adv_losses),
        "loss": np.mean(0.5 * np.array(losses) + 0.5 * np.array(adv_losses))}
    for name, value in expected.items():
        np.testing.assert_allclose(history[name][0], value, rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    assert len(batch_logs) == 2
    for name in expected:
        np.testing.assert_allclose(batch_logs[-1][name], history[name][0], rtol=1e-6)


def test_unfooled_candidates_are_dropped_and_the_adversarial_term_switches_off(world):
    """A classifier with zero kernel: no gradient reaches the latents and it always predicts
    class 0, so on class-0 data no candidate is kept and only the clean loss trains."""
    x = np.random.default_rng(1).uniform(size=(16, *SHAPE)).astype(np.float32)
    y = np.zeros(16, np.int64)
    clf = _linear(np.zeros((64, CLASSES)), [2.0, 0.0, -1.0])
    out = {k: np.asarray(v) for k, v in
           _trainer(world, clf, max_iterations=3).adversarial_batch(y).items()}
    assert not out["success"].any() and np.all(out["iterations"] == 3)
    reference = _copy(clf)
    trainer = _trainer(world, clf, learning_rate=0.5, max_iterations=3)
    history = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert history["kept_fraction"] == [0.0]
    assert history["adversarial_loss"] == [0.0]
    np.testing.assert_allclose(history["loss"][0], 0.5 * history["clean_loss"][0], rtol=1e-6)
    # The update is that of 0.5 · clean CE alone.
    with tf.GradientTape() as tape:
        loss = 0.5 * tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            y, reference(x), from_logits=True))
    grads = tape.gradient(loss, reference.trainable_variables)
    for v, g, new in zip(reference.trainable_variables, grads, clf.get_weights(), strict=True):
        np.testing.assert_allclose(new, v.numpy() - 0.5 * g.numpy(), atol=1e-6)


def test_equal_seeds_reproduce_with_numpy_and_tf_data(world, train_data, tmp_path):
    x, y = train_data
    runs = []
    for data in ("numpy", "tf.data"):
        trainer = _trainer(world, _copy(world.clf), seed=9, learning_rate=0.05)
        if data == "numpy":
            fit = trainer.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        else:
            dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16, drop_remainder=True)
            fit = trainer.fit(dataset, epochs=2, shuffle=False, verbose=0)
        runs.append((fit.history, trainer.classifier.get_weights()))
    (h1, w1), (h2, w2) = runs
    assert set(h1) == {"loss", "clean_loss", "accuracy", "adversarial_loss",
                       "kept_fraction", "mean_iterations"}
    for name in h1:
        np.testing.assert_allclose(h2[name], h1[name], rtol=1e-5, err_msg=name)
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(w1[0], world.clf.get_weights()[0])  # it did train
    # The trained classifier saves as .keras.
    path = tmp_path / "classifier.keras"
    trainer.classifier.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), trainer.classifier(x).numpy())


def test_tf_data_with_a_partial_last_batch(world, train_data):
    x, y = train_data
    trainer = _trainer(world, _copy(world.clf), learning_rate=0.05)
    dataset = tf.data.Dataset.from_tensor_slices((x[:24], y[:24])).batch(16)
    history = trainer.fit(dataset, epochs=1, shuffle=False, verbose=0).history
    assert 0 < history["kept_fraction"][0] <= 1


def test_trainer_seeds_reproduce_and_differ(world):
    labels = np.arange(12) % CLASSES

    def batch(seed):
        trainer = GenerativeAdversarialTrainer(world.clf, world.gen, _attack(world), seed=seed)
        return np.asarray(trainer.adversarial_batch(labels, group=0)["images"])

    np.testing.assert_array_equal(batch(3), batch(3))
    assert not np.allclose(batch(3), batch(4))


# === Seeds and round trips ===

def test_generator_samples_reproduce_with_equal_seeds(world):
    gen, labels = world.gen, [0, 1, 2, 2, 1]
    first, again, other = (gen.sample(labels, seed=s) for s in (7, 7, 8))
    for a, b in zip(first[0] + first[1] + [first[2]], again[0] + again[1] + [again[2]],
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(first[2].numpy(), other[2].numpy())


def test_attack_config_round_trips(world):
    attack = GenerativeAttack(world.gen, perturb="noise", layers=[3, 2], style_step=0.03,
                              noise_step=0.2, max_iterations=4, target=None, batch_size=7)
    config = attack.get_config()
    assert not {"bounds", "seed", "num_restarts"} & set(config)
    # The config holds the generator's architecture (its weights travel with the model that
    # owns the attack, as for LatentPGD).
    clone = GenerativeAttack.from_config(config)
    assert clone.get_config() == config
    assert (clone.perturb, clone.layers, clone.style_step, clone.noise_step,
            clone.max_iterations, clone.target, clone.batch_size) == (
        ("noise",), (2, 3), 0.03, 0.2, 4, None, 7)
    np.testing.assert_array_equal(clone.step_vector(), attack.step_vector())
    assert isinstance(clone.generator, StyleGenerator)
    assert clone.generator.get_config() == world.gen.get_config()


def test_trainer_config_round_trips(world):
    trainer = GenerativeAdversarialTrainer(
        world.clf, world.gen, _attack(world, perturb="style"), layer_groups=[[0], [2, 3]],
        max_iterations=4, clean_weight=0.3, adversarial_weight=0.7, oversample=2, seed=11)
    config = trainer.get_config()
    clone = GenerativeAdversarialTrainer.from_config(config)
    assert clone.get_config() == config
    assert clone.layer_groups == ((0,), (2, 3)) and clone.seed == 11
    assert clone.generator is clone.attack.generator
    np.testing.assert_array_equal(clone._steps, trainer._steps)


def test_generator_keras_file_samples_identically_in_a_fresh_process(world, tmp_path):
    path, out, labels = tmp_path / "gen.keras", tmp_path / "out.npz", [0, 1, 2, 1]
    world.gen.save(path)
    script = textwrap.dedent(f"""
        import keras, numpy as np, manidefense
        gen = keras.saving.load_model({str(path)!r})
        styles, noises, images = gen.sample({labels!r}, seed=7)
        np.savez({str(out)!r}, images=images.numpy(),
                 *[t.numpy() for t in list(styles) + list(noises)])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    styles, noises, images = world.gen.sample(labels, seed=7)
    loaded = np.load(out)
    np.testing.assert_array_equal(loaded["images"], images.numpy())
    for i, t in enumerate(list(styles) + list(noises)):
        np.testing.assert_array_equal(loaded[f"arr_{i}"], t.numpy())


# === StyleGenerator ===

def test_flatten_unflatten_and_decode_flat(world):
    gen = world.gen
    flat = gen.flatten(world.styles, world.noises)
    assert tuple(flat.shape) == (NUM, gen.latent_size) == (NUM, 24 + 160)
    styles, noises = gen.unflatten(flat)
    for a, b in zip(styles + noises, world.styles + world.noises, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    np.testing.assert_array_equal(np.asarray(gen.flatten(styles, noises)), np.asarray(flat))
    np.testing.assert_allclose(gen.decode_flat(flat).numpy(), world.images, atol=1e-6)


def test_default_28x28_and_a_32x32x3_configuration():
    gen = StyleGenerator(seed=0)
    assert (gen.num_layers, gen.style_size, gen.noise_size) == (6, 448, 2058)
    assert gen.layer_groups == ((0, 1), (2, 3), (4, 5))
    assert gen.noise_shapes[0] == (7, 7, 1) and gen.noise_shapes[-1] == (28, 28, 1)
    color = StyleGenerator(image_shape=(32, 32, 3), seed=0)
    assert color.num_layers == 8 and color.noise_shapes[0] == (4, 4, 1)
    styles, noises, images = color.sample([0, 9], seed=0)
    assert len(styles) == len(noises) == 8 and images.shape == (2, 32, 32, 3)
    images = images.numpy()
    assert np.all(np.isfinite(images)) and images.min() >= 0 and images.max() <= 1


def test_shipped_weights_load_as_the_default_configuration():
    # A packaging check of the shipped file (no behaviour test depends on trained weights).
    gen = StyleGenerator.pretrained("fashion_mnist")
    assert gen.get_config() | {"name": None} == StyleGenerator(seed=0).get_config() | {"name": None}
    _, _, first = gen.sample([0, 5, 9], seed=3)
    _, _, again = gen.sample([0, 5, 9], seed=3)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    with pytest.raises(ValueError, match="`dataset`"):
        StyleGenerator.pretrained("cifar10")


def test_fit_runs_with_finite_losses_and_trains_every_part():
    keras.utils.set_random_seed(1)
    gen = StyleGenerator(**TINY)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, *SHAPE)).astype(np.float32)
    y = rng.integers(0, CLASSES, 16)
    parts = (gen.mapping, gen.synthesis, gen.discriminator)
    before = [[w.copy() for w in part.get_weights()] for part in parts]
    gen.compile()
    history = gen.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert set(history) == {"generator_loss", "discriminator_loss", "r1_penalty"}
    assert all(np.isfinite(v[0]) for v in history.values())
    assert history["r1_penalty"][0] > 0  # the first step is a regularisation step
    for part, old in zip(parts, before, strict=True):
        assert any(not np.array_equal(a, b) for a, b in zip(old, part.get_weights(),
                                                            strict=True)), part.name


def test_embed_moves_towards_the_target_images(world):
    gen, labels = world.gen, np.array([0, 1, 2, 0])
    _, _, x = gen.sample(labels, seed=9)
    x = x.numpy()
    start_styles = [np.stack([np.asarray(gen.mean_styles([c], num=256)[i]) for c in labels])
                    for i in range(gen.num_layers)]
    start_noises = [np.zeros((4, *s), np.float32) for s in gen.noise_shapes]
    start = gen.synthesize(start_styles, start_noises).numpy()
    styles, noises, projection = gen.embed(x, labels, num_steps=40, perceptual=None)
    found = gen.synthesize(styles, noises).numpy()
    np.testing.assert_allclose(projection.images, found, atol=1e-5)
    l1_start = np.abs(start - x).mean(axis=(1, 2, 3))
    l1_found = np.abs(found - x).mean(axis=(1, 2, 3))
    assert np.all(l1_found < l1_start), (l1_start, l1_found)


def test_embed_with_defaults_works_or_names_perceptual_on_small_images(world):
    _, _, x = world.gen.sample([0, 1], seed=9)
    try:
        world.gen.embed(x.numpy(), [0, 1], num_steps=2)
    except ValueError as error:
        assert "`perceptual`" in str(error)


# === Bad arguments ===

@pytest.mark.parametrize("kwargs, name", [
    (dict(layers=4), "layers"), (dict(layers=-1), "layers"), (dict(layers=(0, 9)), "layers"),
    (dict(layers=[]), "layers"), (dict(layers=True), "layers"),
    (dict(style_step=0), "style_step"), (dict(style_step=-0.1), "style_step"),
    (dict(noise_step=0.0), "noise_step"), (dict(max_iterations=0), "max_iterations"),
    (dict(max_iterations=2.5), "max_iterations"),
    (dict(perturb="pixels"), "perturb"), (dict(perturb=()), "perturb"),
    (dict(perturb=("style", "pixels")), "perturb"), (dict(target="most_likely"), "target"),
    (dict(bounds=(0.0, 1.0)), "bounds"), (dict(seed=0), "seed"),
    (dict(num_restarts=2), "num_restarts")])
def test_bad_attack_arguments_name_the_argument(world, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        GenerativeAttack(world.gen, **kwargs)


def test_a_generator_without_explicit_inputs_is_rejected():
    with pytest.raises(ValueError, match="`generator`"):
        GenerativeAttack(keras.Sequential([keras.Input((4,)), keras.layers.Dense(64)]))


def _bad_latents(world):
    s, n = world.styles, world.noises
    nan = [a.copy() for a in n]
    nan[2][1, 0, 0, 0] = np.nan
    return {
        "one list": s,
        "wrong count": (s[:-1], n[:-1]),
        "wrong shape": ([np.pad(s[0], ((0, 0), (0, 1)))] + s[1:], n),
        "batch mismatch": (s, [n[0][:-1]] + n[1:]),
        "NaN": (s, nan),
        "int dtype": ([s[0].astype(np.int32)] + s[1:], n),
        "empty": ([a[:0] for a in s], [a[:0] for a in n]),
    }


@pytest.mark.parametrize("case", ["one list", "wrong count", "wrong shape", "batch mismatch",
                                  "NaN", "int dtype", "empty"])
def test_latents_that_do_not_match_the_generator_are_rejected(world, case):
    attack = GenerativeAttack(world.gen)
    with pytest.raises(ValueError, match="`latents`"):
        attack(world.clf, _bad_latents(world)[case], world.y)


def test_bad_labels_and_targets_name_the_argument(world):
    attack, latents = GenerativeAttack(world.gen), (world.styles, world.noises)
    with pytest.raises(ValueError, match="`y`"):
        attack(world.clf, latents, world.y[:-1])
    with pytest.raises(ValueError, match="`y`"):
        attack(world.clf, latents, np.full(NUM, CLASSES))
    with pytest.raises(ValueError, match="`target`"):
        attack(world.clf, latents, world.y, np.full(NUM, -1))
    for labels in ([CLASSES], [-1], [[0]], []):
        with pytest.raises(ValueError, match="`labels`"):
            world.gen.sample(labels)


@pytest.mark.parametrize("kwargs, name", [
    (dict(image_shape=(9, 9, 1)), "image_shape"),
    (dict(image_shape=(8, 8, 1), channels=(4, 2, 2, 2, 2)), "image_shape"),
    (dict(image_shape=(8, 8)), "image_shape"),
    (dict(noise_init=(0.1, 0.1)), "noise_init"), (dict(noise_init=np.nan), "noise_init"),
    (dict(channels=(4, 0)), "channels"), (dict(channels=()), "channels"),
    (dict(num_classes=1), "num_classes"), (dict(latent_dim=0), "latent_dim"),
    (dict(seed=-1), "seed")])
def test_bad_generator_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        StyleGenerator(**{**TINY, **kwargs})


@pytest.mark.parametrize("kwargs, name", [
    (dict(max_iterations=0), "max_iterations"), (dict(layer_groups=[]), "layer_groups"),
    (dict(oversample=0), "oversample"), (dict(clean_weight=-1.0), "clean_weight"),
    (dict(attack="pgd"), "attack"), (dict(generator="other"), "generator"),
    (dict(layer_groups=[[0, 9]]), "layer_groups")])
def test_bad_trainer_arguments_name_the_argument(world, kwargs, name):
    kwargs = {"attack": _attack(world), **kwargs}
    if kwargs["attack"] == "pgd":
        kwargs["attack"] = PGD()
    if kwargs.get("generator") == "other":
        kwargs["generator"] = StyleGenerator(**TINY)
    with pytest.raises(ValueError, match=f"`{name}`"):
        GenerativeAdversarialTrainer(world.clf, **kwargs)
