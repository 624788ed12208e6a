"""The disentangling lab: a Gaussian mixture whose eigenvectors are known, checked against theory.

Claims under test (Xiao et al., "Disentangling Adversarial Robustness in Directions of the Data
Manifold"): regular (input-space) perturbations spend their energy in small-variance directions,
generative (latent) ones only in large-variance directions; for a linear classifier PGD-L2
finds the closed-form direction Σ⁻¹(μ_1 - μ_0); standard AT pushes the boundary away along
small-variance directions, latent AT along large-variance ones. Tolerances are derived from
the sample sizes or from float precision, not tuned.
"""

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

from manidefense import theory  # noqa: E402
from manidefense.theory import GaussianMixture, LinearGenerator  # noqa: E402
from manidefense.training import DualManifoldTrainer  # noqa: E402
from manidefense.visualization.theory import (  # noqa: E402
    plot_boundary_slice,
    plot_energy_spectrum,
)

# Budgets: L2 eps 0.5 breaks about half of the Bayes classifier's points; a latent step of
# eta 1.0 (one prior standard deviation) breaks about a fifth.
EPS, ETA = 0.5, 1.0


@pytest.fixture(scope="module")
def gm():
    return GaussianMixture(seed=0)


@pytest.fixture(scope="module")
def test_data(gm):
    return gm.sample(300, seed=2)


@pytest.fixture(scope="module")
def bayes(gm):
    return theory.bayes_classifier(gm)


@pytest.fixture(scope="module")
def trained(gm):
    """Logistic regressions trained on 2000 examples (6 epochs): standard, AT (PGD-L2 at EPS)
    and latent AT (LatentPGD-L2 at ETA)."""
    x, y = gm.sample(2000, seed=1)
    models = {}
    for method, budget in (("standard", {}), ("regular", {"eps": EPS}), ("latent", {"eta": ETA})):
        clf = theory.logistic_regression(gm.dim, seed=0)
        model = clf if method == "standard" else DualManifoldTrainer(
            clf, **theory.training_attacks(gm, method, **budget), seed=0)
        theory.train_classifier(model, gm, x, y, epochs=6, batch_size=128, learning_rate=0.03)
        models[method] = clf
    return models


def cosine(a, b):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return np.sum(a * b, axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(ops.convert_to_numpy(model(x)), axis=-1) == y))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# === The distribution ===

@pytest.mark.parametrize("kwargs", [{}, {"spectrum": "log"}, {"num_classes": 3},
                                    {"spectrum": np.linspace(3.0, 0.1, 20), "dim": 20,
                                     "manifold_dim": 4}])
def test_sample_covariance_and_means_match_the_requested_ones(kwargs):
    gm = GaussianMixture(**kwargs, seed=3)
    n = 20000
    x, y = gm.sample(n, seed=4)
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (n, gm.dim)
    lam = gm.eigenvalues
    assert np.all(np.diff(lam) <= 0)
    np.testing.assert_allclose(gm.eigenvectors.T @ gm.eigenvectors, np.eye(gm.dim), atol=1e-12)
    np.testing.assert_allclose(gm.covariance, (gm.eigenvectors * lam) @ gm.eigenvectors.T)
    # In the eigenbasis the within-class sample covariance C estimates diag(λ); entry (i, j)
    # has standard error sqrt((λ_i λ_j + [i = j] λ_i²) / n). 5 standard errors over ~1300
    # entries: a false alarm about once in a thousand seeds.
    c = gm.coordinates(x - gm.means[y])
    sample = c.T @ c / n
    se = np.sqrt((np.outer(lam, lam) + np.diag(lam**2)) / n)
    assert np.max(np.abs(sample - np.diag(lam)) / se) < 5.0
    for k in range(gm.num_classes):
        rows = y == k
        assert abs(rows.mean() - 1 / gm.num_classes) < 5 * np.sqrt(1 / gm.num_classes / n)
        se_mean = np.sqrt(lam / rows.sum())
        assert np.max(np.abs(gm.coordinates(x[rows]).mean(0) - gm.coordinates(gm.means[k:k + 1])[0])
                      / se_mean) < 5.0


@pytest.mark.parametrize("num_classes", [2, 3])
def test_means_split_the_mahalanobis_distance_evenly_between_the_subspaces(num_classes):
    gm = GaussianMixture(num_classes=num_classes, mean_distance=2.5, seed=1)
    whitened = gm.coordinates(gm.means) / np.sqrt(gm.eigenvalues)
    for a in range(num_classes):
        for b in range(a):
            diff = whitened[a] - whitened[b]
            assert np.sum(diff**2) == pytest.approx(2.5**2)
            assert np.sum(diff[gm.large_subspace] ** 2) == pytest.approx(2.5**2 / 2)


def test_seeds_reproduce(gm):
    x1, y1 = gm.sample(64, seed=7)
    x2, y2 = GaussianMixture(seed=0).sample(64, seed=7)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, gm.sample(64, seed=8)[0])
    assert not np.allclose(GaussianMixture(seed=1).eigenvectors, gm.eigenvectors)
    weights = []
    for _ in range(2):
        clf = theory.logistic_regression(gm.dim, seed=5)
        theory.train_classifier(clf, gm, x1, y1, epochs=2, batch_size=16, seed=3)
        weights.append(clf.get_weights()[0])
    np.testing.assert_array_equal(*weights)


def test_encode_and_generate_round_trip_exactly(gm):
    x, y = gm.sample(500, seed=5)
    z, residual = gm.encode(x, y)
    np.testing.assert_allclose(gm.generate(z, y) + residual, x, rtol=0, atol=1e-12)
    # The residual lives in the small-variance subspace; z has the prior N(0, I_k).
    assert np.abs(gm.coordinates(residual)[:, gm.large_subspace]).max() < 1e-12
    assert np.abs(z.mean(0)).max() < 5 / np.sqrt(len(z))
    # The Keras decoder maps the latent codes back to x in float32.
    w = gm.latent_codes(x, y)
    assert w.shape == (500, gm.manifold_dim + gm.dim)
    decoded = ops.convert_to_numpy(gm.decoder(w))
    np.testing.assert_allclose(decoded, x, rtol=0, atol=1e-5)


def test_linear_generator_stops_the_anchor_gradient_and_round_trips_its_config(gm):
    import tensorflow as tf

    w = tf.constant(gm.latent_codes(*gm.sample(4, seed=0)))
    with tf.GradientTape() as tape:
        tape.watch(w)
        out = tf.reduce_sum(gm.decoder(w) ** 2)
    grad = tape.gradient(out, w).numpy()
    assert np.all(grad[:, gm.manifold_dim:] == 0) and np.abs(grad[:, :gm.manifold_dim]).max() > 0
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(gm.decoder))
    assert isinstance(clone, LinearGenerator)
    np.testing.assert_array_equal(ops.convert_to_numpy(clone(w)),
                                  ops.convert_to_numpy(gm.decoder(w)))


def test_bayes_classifier_is_lda_with_the_theoretical_accuracy(gm, bayes):
    delta = gm.means[1] - gm.means[0]
    np.testing.assert_allclose(gm.bayes_direction(), np.linalg.solve(gm.covariance, delta),
                               rtol=1e-10)
    kernel, _ = theory.affine_weights(bayes, gm.dim)
    assert cosine(kernel[:, 1] - kernel[:, 0], gm.bayes_direction()) > 1 - 1e-6
    # Bayes accuracy Φ(Δ/2) for Mahalanobis distance Δ = 3: 0.9332; 4 binomial standard errors.
    x, y = gm.sample(4000, seed=6)
    assert abs(accuracy(bayes, x, y) - 0.9332) < 4 * np.sqrt(0.9332 * 0.0668 / 4000)


# === Regular vs generative perturbations ===

def test_pgd_l2_on_the_bayes_classifier_finds_the_closed_form_direction(gm, bayes, test_data):
    x, y = test_data
    optimal = theory.optimal_l2_perturbation(bayes, x, y, EPS)
    np.testing.assert_allclose(np.linalg.norm(optimal, axis=1), EPS)
    sign = np.where(y == 1, -1.0, 1.0)[:, None]  # towards the other class
    assert np.all(cosine(optimal, sign * gm.bayes_direction()) > 1 - 1e-6)
    # From x itself every L2 step is along the gradient, which is the closed-form direction.
    delta = theory.regular_attack(bayes, x, y, EPS, norm="l2", random_start=False) - x
    assert np.all(np.linalg.norm(delta, axis=1) <= EPS * (1 + 1e-5))
    assert cosine(delta, optimal).min() > 0.9999
    # A random start leaves an orthogonal part that each projected step shrinks.
    delta = theory.regular_attack(bayes, x, y, EPS, norm="l2", num_steps=20,
                                  step_size=EPS / 5) - x
    assert cosine(delta, optimal).min() > 0.99


def test_pgd_l2_on_a_trained_logistic_regression_matches_its_closed_form(gm, trained,
                                                                         test_data):
    x, y = test_data
    model = trained["standard"]
    kernel, _ = theory.affine_weights(model, gm.dim)
    # 2000 examples estimate the 45 small-variance weights only roughly (measured 0.95).
    assert cosine(kernel[:, 1] - kernel[:, 0], gm.bayes_direction()) > 0.85
    delta = theory.regular_attack(model, x, y, EPS, norm="l2", random_start=False) - x
    assert cosine(delta, theory.optimal_l2_perturbation(model, x, y, EPS)).min() > 0.99


def test_regular_energy_is_in_small_variance_directions_and_latent_energy_all_large(
        gm, bayes, test_data):
    x, y = test_data
    l2 = theory.regular_attack(bayes, x, y, EPS, norm="l2", random_start=False) - x
    energy = theory.energy_by_direction(l2, gm)
    np.testing.assert_allclose(energy.sum(1), np.sum(l2.astype("float64") ** 2, 1), rtol=1e-9)
    # Theory: δ ∝ Σ⁻¹Δμ, whose energy along u_i is (u_iᵀΔμ / λ_i)².
    w = gm.coordinates(gm.bayes_direction()[None])[0] ** 2
    expected = w[~gm.large_subspace].sum() / w.sum()  # λ_L / (λ_L + λ_S) = 0.988 here
    split = theory.energy_split(l2, gm)
    np.testing.assert_allclose(split["small"], expected, atol=1e-4)
    np.testing.assert_allclose(split["small"] + split["large"], 1.0)
    linf = theory.regular_attack(bayes, x, y, EPS / 5, norm="linf") - x
    assert theory.energy_split(linf, gm)["small"].mean() > 0.9
    latent = theory.generative_attack(bayes, gm, x, y, ETA) - x
    split = theory.energy_split(latent, gm)
    # All of it, up to float32 rounding of x (relative 1e-7 per coordinate).
    assert split["small"].max() < 1e-9 and split["large"].min() > 1 - 1e-9
    # The latent budget bounds z: ||δ|| <= sqrt(λ_1) · eta.
    assert np.linalg.norm(latent, axis=1).max() <= np.sqrt(gm.eigenvalues[0]) * ETA * 1.0001
    assert accuracy(bayes, x + latent, y) < accuracy(bayes, x, y)


def test_generative_attack_on_an_mlp_stays_in_the_large_variance_subspace(gm, test_data):
    x, y = test_data
    model = theory.mlp(gm.dim, width=16, seed=0)
    latent = theory.generative_attack(model, gm, x[:64], y[:64], ETA, num_steps=5) - x[:64]
    assert theory.energy_split(latent, gm)["small"].max() < 1e-9


def test_energy_split_of_a_zero_perturbation_is_nan(gm):
    split = theory.energy_split(np.zeros((2, gm.dim)), gm)
    assert np.all(np.isnan(split["large"])) and np.all(np.isnan(split["small"]))


# === The boundary ===

def test_boundary_margin_of_an_affine_classifier_matches_the_formula(gm, bayes, test_data):
    x = test_data[0][:40]
    margin = theory.boundary_margin(bayes, x, gm, max_distance=30.0)
    kernel, bias = theory.affine_weights(bayes, gm.dim)
    w, b = kernel[:, 1] - kernel[:, 0], bias[1] - bias[0]
    exact = np.abs(x @ w + b)[:, None] / np.abs(gm.eigenvectors.T @ w)[None]
    reached = exact < 30.0
    assert reached.mean() > 0.9
    # Bisection error 30 / 64 / 2^24, plus float32 evaluation of the logits.
    np.testing.assert_allclose(margin[reached], exact[reached], rtol=1e-3, atol=1e-4)
    assert np.all(margin[~reached] == 30.0)


def test_adversarial_training_moves_the_boundary_along_the_attacked_directions(
        gm, trained, test_data):
    x = test_data[0][:100]
    margins = {name: theory.boundary_margin(model, x, gm, num_grid=32)
               for name, model in trained.items()}
    regular = theory.boundary_shift(margins["standard"], margins["regular"], gm)
    latent = theory.boundary_shift(margins["standard"], margins["latent"], gm)
    # Measured (seed 0): regular {large 0.62, small 6.9}, latent {large 3.7, small 0.51}.
    assert regular["small"] > latent["small"] and latent["large"] > regular["large"]
    assert regular["small"] > 1 > regular["large"]
    assert latent["large"] > 1 > latent["small"]


def test_boundary_slice_holds_the_logits_on_the_plane(gm, bayes):
    s, t, logits = theory.boundary_slice(bayes, gm, 0, resolution=7)
    assert s.shape == t.shape == (7,) and logits.shape == (7, 7, 2)
    assert s[-1] == pytest.approx(4 * np.sqrt(gm.eigenvalues[0]))
    assert t[-1] == pytest.approx(4 * np.sqrt(gm.eigenvalues[gm.manifold_dim]))
    point = (gm.means.mean(0) + s[2] * gm.eigenvectors[:, 0]
             + t[5] * gm.eigenvectors[:, gm.manifold_dim])
    expected = ops.convert_to_numpy(bayes(point[None].astype("float32")))[0]
    np.testing.assert_allclose(logits[5, 2], expected, rtol=1e-5, atol=1e-5)


def test_robust_accuracy_matrix(gm, bayes, test_data):
    x, y = test_data
    table = theory.robust_accuracy_matrix(
        {"bayes": bayes},
        {"none": lambda m, a, b: a,
         "l2": lambda m, a, b: theory.regular_attack(m, a, b, EPS, random_start=False)}, x, y)
    row = table["bayes"]
    assert list(row) == ["clean", "none", "l2"]
    assert row["none"] == row["clean"] == accuracy(bayes, x, y)
    assert row["l2"] < row["clean"] - 0.2


# === Plots ===

def test_plot_energy_spectrum_draws_one_normalised_line_per_attack(gm):
    energies = {"regular": np.linspace(1.0, 3.0, gm.dim),
                "latent": np.r_[np.ones(gm.manifold_dim), np.zeros(gm.dim - gm.manifold_dim)]}
    ax = plot_energy_spectrum(energies, gm.eigenvalues, manifold_dim=gm.manifold_dim)
    lines = [line for line in ax.get_lines() if line.get_label() in energies]
    assert [line.get_label() for line in lines] == ["regular", "latent"]
    np.testing.assert_allclose(lines[0].get_ydata().sum(), 1.0)
    assert lines[1].get_ydata()[-1] == 1e-12  # zeros drawn at the floor
    assert ax.get_yscale() == "log"
    twin = [a for a in ax.figure.axes if a is not ax][0]
    assert twin.get_yscale() == "log"
    np.testing.assert_allclose(twin.get_lines()[0].get_ydata(), gm.eigenvalues)
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        "regular", "latent", "eigenvalue λ_i"]


def test_plot_boundary_slice_draws_one_boundary_per_model(gm):
    s, t = np.linspace(-1, 1, 21), np.linspace(-2, 2, 31)
    ss, tt = np.meshgrid(s, t)
    logits = np.stack([np.zeros_like(ss), ss + tt], axis=-1)  # boundary s + t = 0
    three = np.stack([ss, tt, 0.3 * np.ones_like(ss)], axis=-1)
    points = np.array([[0.5, 0.5], [-0.5, -0.5]])
    ax = plot_boundary_slice({"a": logits, "b": ss - 0.2, "c": three}, s, t, points=points,
                             labels=np.array([1, 0]))
    assert len(ax.collections) == 2 + 3  # two scatter classes, three contour sets
    contour = ax.collections[2]
    vertices = np.concatenate([p.vertices for p in contour.get_paths()])
    np.testing.assert_allclose(vertices.sum(axis=1), 0.0, atol=1e-9)
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        "class 0", "class 1", "a", "b", "c"]


# === Bad arguments ===

@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 1}, "dim"),
    ({"dim": 5, "manifold_dim": 5}, "manifold_dim"),
    ({"num_classes": 1}, "num_classes"),
    ({"num_classes": 6}, "num_classes"),
    ({"spectrum": "flat"}, "spectrum"),
    ({"spectrum": np.ones(49)}, "spectrum"),
    ({"spectrum": np.r_[np.ones(49), -1.0]}, "spectrum"),
    ({"spectrum": np.ones(50)}, "gap"),
    ({"large_variance": 0.01}, "large_variance"),
    ({"mean_distance": 0.0}, "mean_distance"),
    ({"seed": "a"}, "seed"),
])
def test_bad_mixture_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_bad_call_arguments_raise(gm, bayes):
    x, y = gm.sample(4, seed=0)
    cases = [
        (lambda: gm.sample(0), "`n`"),
        (lambda: gm.encode(x[:, :3], y), "`x`"),
        (lambda: gm.encode(x, y + 2), "`y`"),
        (lambda: gm.generate(np.zeros((4, 2)), y), "`z`"),
        (lambda: GaussianMixture(num_classes=3).bayes_direction(), "two classes"),
        (lambda: theory.training_attacks(gm, "fancy"), "method"),
        (lambda: theory.training_attacks(gm, "regular"), "eps"),
        (lambda: theory.training_attacks(gm, "latent", eta=-1.0), "eta"),
        (lambda: theory.regular_attack(bayes, x, y, eps=-1.0), "eps"),
        (lambda: theory.generative_attack(bayes, gm, x, y, eta=0.5, norm="l3"), "norm"),
        (lambda: theory.optimal_l2_perturbation(
            theory.logistic_regression(gm.dim, 3), x, y, 1.0), "two-class"),
        (lambda: theory.affine_weights(theory.mlp(gm.dim, seed=0), gm.dim), "affine"),
        (lambda: theory.boundary_margin(bayes, x, gm, max_distance=-1.0), "max_distance"),
        (lambda: theory.boundary_slice(bayes, gm, 3, 3), "differ"),
        (lambda: theory.boundary_slice(bayes, gm, 0, 50), "`j`"),
        (lambda: theory.boundary_shift(np.ones((3, 50)), np.ones((4, 50)), gm), "before"),
        (lambda: theory.train_classifier(bayes, gm, x, y, epochs=0), "epochs"),
        (lambda: plot_energy_spectrum({"a": np.ones(3)}, gm.eigenvalues), "energies"),
        (lambda: plot_energy_spectrum({}, gm.eigenvalues), "energies"),
        (lambda: plot_boundary_slice({"a": np.ones((3, 3))}, np.arange(4), np.arange(3)),
         "grids"),
        (lambda: plot_boundary_slice({"a": np.ones((3, 3))}, np.arange(3), np.arange(3),
                                     points=np.ones((2, 3))), "points"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
