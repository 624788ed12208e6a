"""Model shells: MCN and NCN against analytic solutions on a linear softmax model."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from manidefense.attacks import adaptive_model, projected_gradient_descent
from manidefense.shells import MCN, NCN, ModelShell, SamplingVote, UnifiedSearch

D = 16
SCALE = 4.0  # logit slope along the unit normal: F_1 = sigmoid(SCALE * (w·z - offset))


@pytest.fixture(scope="module")
def linear():
    """A 2-class softmax model whose logit difference is SCALE (w·z - offset), |w| = 1."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=D)
    w /= np.linalg.norm(w)
    x = rng.uniform(0.25, 0.75, (8, D)).astype(np.float32)
    offset = float(np.median(x @ w))
    inputs = keras.Input((D,))
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(inputs))
    kernel = np.zeros((D, 2), np.float32)
    kernel[:, 1] = SCALE * w
    dense.set_weights([kernel, np.array([0.0, -SCALE * offset], np.float32)])
    return model, w.astype(np.float32), offset, x


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_mcn_linf_returns_the_corner_of_the_ball(linear):
    # max F_t over an L∞ ball of a linear model: x + δ sign(±w), clipped to the box.
    model, w, offset, x = linear
    delta = 0.05
    z, classes, confidence, reached = ModelShell(model, MCN(delta, num_steps=10)).search(x)
    up, down = np.clip(x + delta * np.sign(w), 0, 1), np.clip(x - delta * np.sign(w), 0, 1)
    p_up, p_down = sigmoid(SCALE * (up @ w - offset)), 1 - sigmoid(SCALE * (down @ w - offset))
    expected = np.where((p_up >= p_down)[:, None], up, down)
    np.testing.assert_allclose(z, expected, atol=1e-6)
    np.testing.assert_array_equal(classes, (p_up >= p_down).astype(int))
    np.testing.assert_allclose(confidence, np.maximum(p_up, p_down), atol=1e-5)
    assert reached.all()


def test_mcn_l2_moves_delta_along_the_normal(linear):
    model, w, offset, x = linear
    delta = 0.3
    z, classes, _, _ = ModelShell(model, MCN(delta, norm="l2", num_steps=30)).search(x)
    side = np.where(x @ w - offset >= 0, 1.0, -1.0)  # the predicted side is the more confident
    np.testing.assert_allclose(z, x + delta * side[:, None] * w, atol=2e-3)
    np.testing.assert_array_equal(classes, (side > 0).astype(int))


def test_ncn_finds_the_nearest_point_reaching_p(linear):
    # F_t >= p is a half-space: the nearest point is x moved along ±w until the logit
    # difference reaches log(p / (1 - p)); NCN takes the nearer of the two classes.
    model, w, offset, x = linear
    p = 0.9
    z, classes, confidence, reached = ModelShell(model, NCN(p)).search(x)
    signed = SCALE * (x @ w - offset)
    need = np.log(p / (1 - p))
    nearest = np.maximum(0.0, need - np.abs(signed)) / SCALE
    distance = np.linalg.norm(z - x, axis=1)
    assert reached.all() and np.all(confidence >= p - 1e-6)
    np.testing.assert_allclose(distance, nearest, rtol=0.03, atol=1e-3)
    np.testing.assert_array_equal(classes, (signed > 0).astype(int))
    # the step is along the normal: z - x is parallel to w
    cosine = np.abs((z - x) @ w) / np.maximum(distance, 1e-12)
    assert np.all(cosine > 0.99)


def test_shells_are_the_identity_where_the_base_is_already_most_confident(linear):
    model, w, offset, _ = linear
    # The box corner in the direction of w: F_1 is as large as it can be anywhere nearby.
    corner = (w > 0).astype(np.float32)[None].repeat(3, axis=0)
    z, classes, _, _ = ModelShell(model, MCN(0.1, num_steps=10)).search(corner)
    np.testing.assert_array_equal(z, corner)
    assert np.all(classes == 1)
    # NCN: a point already confident beyond p is its own nearest confident neighbour.
    z, _, confidence, reached = ModelShell(model, NCN(0.6)).search(corner)
    np.testing.assert_array_equal(z, corner)
    assert reached.all() and np.all(confidence >= 0.6)


def test_ncn_reports_when_no_class_reaches_p(linear):
    model, w, offset, x = linear
    # Every point of the box has F_1 <= sigmoid(SCALE * max_z (w·z - offset)) < p here.
    best = float(SCALE * (np.clip(np.sign(w), 0, 1) @ w - offset))
    p = float(1 - 1e-4 if sigmoid(best) < 1 - 1e-4 else 0.99999)
    z, classes, _, reached = ModelShell(model, NCN(p, num_stages=2, num_steps=20)).search(x[:3])
    assert not reached.any()
    np.testing.assert_array_equal(z, x[:3])  # the shell then answers like the base model
    np.testing.assert_array_equal(classes, (x[:3] @ w - offset > 0).astype(int))


def test_unified_objective_matches_a_one_dimensional_minimisation(linear):
    # Along the normal, eq. 5 for class t is min_d d - λ sigmoid(±SCALE (s0 ± d)): a 1-D
    # problem solved here on a fine grid; both classes are tried and the lower one wins.
    model, w, offset, x = linear
    lam = 2.0
    z, classes, _, _ = ModelShell(model, UnifiedSearch(lam, num_steps=300)).search(x)
    d = np.linspace(0, 2, 20001)
    s0 = x @ w - offset
    up = d[None] - lam * sigmoid(SCALE * (s0[:, None] + d[None]))
    down = d[None] - lam * sigmoid(-SCALE * (s0[:, None] - d[None]))
    best_up, best_down = up.min(1), down.min(1)
    expected = np.where(best_up <= best_down, d[up.argmin(1)], d[down.argmin(1)])
    np.testing.assert_allclose(np.linalg.norm(z - x, axis=1), expected, atol=0.01)
    np.testing.assert_array_equal(classes, (best_up <= best_down).astype(int))
    # λ below 4 / SCALE: confidence never pays for distance, so eq. 5 is the identity.
    z, _, _, _ = ModelShell(model, UnifiedSearch(0.5, num_steps=100)).search(x)
    np.testing.assert_allclose(z, x, atol=0.01)


def test_sampling_vote_weighs_the_neighbourhood(linear):
    model, w, offset, x = linear
    far = np.clip(0.5 + 0.45 * np.sign(w), 0, 1).astype(np.float32)[None]  # deep in class 1
    centre = (0.5 + (offset - 0.5 * w.sum()) * w).astype(np.float32)[None]  # on the boundary
    shell = ModelShell(model, SamplingVote(num_samples=400, radius=0.1, seed=0))
    assert shell.randomized and not ModelShell(model, MCN(0.1)).randomized
    votes = keras.ops.convert_to_numpy(shell(np.concatenate([far, centre])))
    np.testing.assert_allclose(votes.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(votes[0], [0.0, 1.0], atol=1e-6)
    assert 0.35 < votes[1, 1] < 0.65  # a symmetric ball around the boundary splits the vote
    z, classes, share, _ = shell.search(far)
    assert classes[0] == 1 and share[0] == pytest.approx(1.0)
    assert np.abs(z - far).max() <= 0.1 + 1e-6
    # Equal seeds reproduce on a fresh shell; later calls draw fresh points.
    fresh = ModelShell(model, SamplingVote(num_samples=400, radius=0.1, seed=0))
    both = np.concatenate([far, centre])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fresh(both)), votes, atol=1e-6)
    assert not np.allclose(keras.ops.convert_to_numpy(fresh(both)), votes, atol=1e-6)


def test_batched_search_equals_the_per_class_loop(trained_model, data):
    # The authors' structure: one targeted search per class, then the most confident result.
    x = data[2][:6]
    mcn = MCN(0.1, num_steps=8, step_size=0.03)
    z, classes, confidence, _ = ModelShell(trained_model, mcn).search(x)
    candidates, scores = [], []
    for t in range(4):
        target = np.full(len(x), t)
        z_t = projected_gradient_descent(trained_model, x, target, eps=0.1, norm="linf",
                                         step_size=0.03, num_steps=8, random_start=False,
                                         target=target).numpy()
        probs = keras.ops.convert_to_numpy(keras.ops.softmax(trained_model(z_t), axis=-1))
        candidates.append(z_t)
        scores.append(probs[:, t])
    best = np.argmax(np.stack(scores, axis=1), axis=1)
    expected = np.stack(candidates, axis=1)[np.arange(len(x)), best]
    np.testing.assert_allclose(z, expected, atol=1e-5)
    np.testing.assert_allclose(confidence, np.max(np.stack(scores, 1), 1), atol=1e-5)


def test_shell_keeps_the_clean_accuracy_of_a_confident_model(trained_model, data):
    xt, yt = data[2], data[3]
    base = np.mean(np.argmax(trained_model.predict(xt, verbose=0), -1) == yt)
    shell = ModelShell(trained_model, MCN(0.05, num_steps=5))
    probs = shell.predict(xt, verbose=0, batch_size=64)
    assert probs.shape == (len(xt), 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.mean(np.argmax(probs, -1) == yt) >= base - 0.03


def test_shell_declares_a_straight_through_surrogate(trained_model, data):
    shell = ModelShell(trained_model, MCN(0.05, num_steps=3))
    assert shell.non_differentiable and not shell.randomized
    wrapped, notes = adaptive_model(shell)
    x = tf.constant(data[2][:4])
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = wrapped(x)
        loss = keras.ops.sum(keras.ops.log(out[:, 0] + 1e-9))
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
    assert "base_probabilities" in " ".join(notes)
    # Forward values are the shell's, not the surrogate's.
    np.testing.assert_allclose(out.numpy(), shell(x).numpy(), atol=1e-6)


SCRIPT = """
import sys, warnings, numpy as np, keras
import manidefense
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    shell = keras.saving.load_model(sys.argv[1], safe_mode=True)
assert not [w for w in caught if "build" in str(w.message)], [str(w.message) for w in caught]
np.save(sys.argv[3], shell.predict(np.load(sys.argv[2]), verbose=0))
print(repr(shell.search_factor))
"""


def test_config_and_keras_file_round_trip_in_a_fresh_process(linear, tmp_path):
    model, _, _, x = linear
    for search in (MCN(0.1, norm="l2", num_steps=7, method="cw"), NCN(0.8, num_stages=3),
                   UnifiedSearch(3.0, norm="linf"), SamplingVote(8, 0.2, seed=4)):
        assert type(search).from_config(search.get_config()).get_config() == search.get_config()
    shell = ModelShell(model, MCN(0.1, norm="l2", num_steps=7, method="cw"))
    expected = shell.predict(x, verbose=0)
    path, x_path, out_path = tmp_path / "shell.keras", tmp_path / "x.npy", tmp_path / "o.npy"
    shell.save(path)
    np.save(x_path, x)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(x_path),
                             str(out_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MCN(delta=0.1, norm='l2', num_steps=7" in result.stdout
    np.testing.assert_allclose(np.load(out_path), expected, atol=1e-6)


@pytest.mark.parametrize("make, match", [
    (lambda: MCN(0.0), "`delta` must be > 0"),
    (lambda: MCN(-0.1), "`delta` must be >= 0"),
    (lambda: MCN(0.1, method="adam"), "`method`"),
    (lambda: MCN(0.1, norm="l3"), "`norm`"),
    (lambda: NCN(1.0), r"`confidence` must be a number in \(0.0, 1.0\)"),
    (lambda: NCN(0.0), "`confidence`"),
    (lambda: NCN(0.9, alpha_growth=0.5), "`alpha_growth` must be >= 1"),
    (lambda: UnifiedSearch(0.0), "`lambda_` must be > 0"),
    (lambda: SamplingVote(0, 0.1), "`num_samples`"),
    (lambda: SamplingVote(8, -0.1), "`radius`"),
    (lambda: ModelShell(keras.layers.Dense(2), "mcn"), "`search` must be a search factor"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_search_rejects_inputs_outside_bounds(linear):
    model, _, _, x = linear
    with pytest.raises(ValueError, match="`x` must lie within bounds"):
        ModelShell(model, MCN(0.1)).search(x + 1.0)


def test_plots_draw_the_search(linear):
    from manidefense.visualization import plot_confidence_shift, plot_shell_search

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 8, 8, 1))
    x_adv, z = np.clip(x + 0.05, 0, 1), np.clip(x - 0.05, 0, 1)
    predictions = {"clean": [1, 2, 3], "adversarial": [0, 0, 0], "shell": [1, 2, 0]}
    confidences = {"clean": [0.9, 0.8, 0.7], "adversarial": [0.4, 0.5, 0.6],
                   "shell": [0.95, 0.9, 0.8]}
    grid = plot_shell_search(x, x_adv, z, predictions, confidences, labels=[1, 2, 3],
                             num_examples=2)
    assert grid.shape == (2, 4)
    assert grid[1, 2].get_title() == "shell: 2 90%" and "true 2" in grid[1, 0].get_title()
    ax = plot_confidence_shift([0.4, 0.5, 0.6], [0.95, 0.9, 0.8])
    assert "mean 0.50" in ax.get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError, match="`predictions` must be a dict"):
        plot_shell_search(x, x_adv, z, {"clean": [1]}, confidences)
    with pytest.raises(ValueError, match="same length"):
        plot_confidence_shift([0.1], [0.2, 0.3])
