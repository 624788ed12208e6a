"""Plots of the RBF-CNN defense: filters, reconstructions, β2 trade-off (no model is run)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from manidefense.layers import RBFLayer  # noqa: E402
from manidefense.visualization.rbf import (  # noqa: E402
    plot_beta2_tradeoff,
    plot_rbf_filters,
    plot_reconstructions,
)

RNG = np.random.default_rng(0)


def images(n, channels, size=10):
    return RNG.random((n, size, size, channels)).astype("float32")


def drawn(axes):
    """The Axes of a grid that hold an image, in drawing order."""
    return [ax for ax in np.asarray(axes).flat if ax.images]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# === plot_rbf_filters ===

@pytest.mark.parametrize("channels", [1, 3])
def test_filters_draw_one_enlarged_patch_per_filter_sorted_by_variance(channels):
    means = RNG.random((7, 3, 3, channels))
    variances = np.array([0.5, 0.01, 0.3, 0.9, 1e-4, 0.2, 0.05])
    axes = plot_rbf_filters(means, variances, columns=4)
    assert axes.shape == (2, 4)
    shown = drawn(axes)
    assert len(shown) == 7 and not axes[1, 3].axison  # the unused cell is hidden
    order = np.argsort(variances)
    assert [ax.get_title() for ax in shown] == [f"#{j} v={variances[j]:.2g}" for j in order]
    for ax, j in zip(shown, order, strict=True):
        image = ax.images[0]
        assert image.get_interpolation() == "nearest"
        expected = means[j, ..., 0] if channels == 1 else means[j]
        np.testing.assert_allclose(image.get_array(), expected)


def test_filters_keep_the_fitted_order_without_variances_and_honour_num_filters():
    means = RNG.random((6, 3, 3))  # (K, ph, pw) is read as grey
    axes = plot_rbf_filters(means, num_filters=4)
    assert [ax.get_title() for ax in drawn(axes)] == ["#0", "#1", "#2", "#3"]
    # variances may cover the whole capacity while only the first num_filters are drawn
    axes = plot_rbf_filters(means, np.arange(6.0, 0.0, -1.0), num_filters=3, sort=False)
    assert [ax.get_title() for ax in drawn(axes)] == ["#0 v=6", "#1 v=5", "#2 v=4"]


def test_filters_of_a_fitted_rbf_layer_draw_only_its_fitted_filters():
    rbf = RBFLayer(max_filters=8)
    with pytest.raises(ValueError, match="`means`.*adapt"):
        plot_rbf_filters(rbf)
    rbf.set_filters(RNG.random((3, 3, 3, 1)), np.array([0.2, 0.1, 0.3]))
    axes = plot_rbf_filters(rbf)
    assert [ax.get_title() for ax in drawn(axes)] == ["#1 v=0.1", "#0 v=0.2", "#2 v=0.3"]


def test_filters_draw_on_given_axes():
    _, given = plt.subplots(2, 3)
    axes = plot_rbf_filters(RNG.random((5, 3, 3, 3)), axes=given)
    assert axes.shape == (2, 3) and axes[0, 0] is given[0, 0]
    assert len(drawn(given)) == 5


@pytest.mark.parametrize("kwargs, name", [
    (dict(means=np.full((4, 3, 3, 1), np.nan)), "means"),
    (dict(means=np.zeros((4, 3, 3, 2))), "means"),
    (dict(means=np.zeros((4, 9))), "means"),
    (dict(means=np.zeros((4, 3, 3, 1)), variances=np.ones(3)), "variances"),
    (dict(means=np.zeros((4, 3, 3, 1)), variances=[1.0, np.nan, 1.0, 1.0]), "variances"),
    (dict(means=np.zeros((4, 3, 3, 1)), variances=-np.ones(4)), "variances"),
    (dict(means=np.zeros((4, 3, 3, 1)), num_filters=5), "num_filters"),
    (dict(means=np.zeros((4, 3, 3, 1)), num_filters=0), "num_filters"),
    (dict(means=np.zeros((4, 3, 3, 1)), axes=[None, None]), "axes"),
])
def test_filters_reject_bad_input_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        plot_rbf_filters(**kwargs)


# === plot_reconstructions ===

@pytest.mark.parametrize("channels", [1, 3])
def test_reconstructions_show_inputs_and_reconstructions_with_their_distances(channels):
    x = images(5, channels)
    x_rec = np.clip(x + 0.1 * RNG.standard_normal(x.shape), 0.0, 1.0)
    axes = plot_reconstructions(x, x_rec, labels=np.arange(5), class_names="abcde",
                                num_examples=4)
    assert axes.shape == (2, 4) and len(drawn(axes)) == 8
    assert [ax.get_title() for ax in axes[0]] == ["a", "b", "c", "d"]
    diff = (x_rec - x).reshape(5, -1)
    for i, ax in enumerate(axes[1]):
        l2, linf = np.linalg.norm(diff[i]), np.abs(diff[i]).max()
        assert ax.get_title() == f"L2 {l2:.2f} L∞ {linf:.2f}"
    assert axes[1, 0].get_ylabel().startswith("reconstructed")
    shape = (10, 10) if channels == 1 else (10, 10, 3)
    assert axes[0, 0].images[0].get_array().shape == shape


def test_reconstructions_add_adversarial_rows_measured_against_the_right_reference():
    x, x_rec = images(3, 1), images(3, 1)
    x_adv = np.clip(x + 0.1, 0.0, 1.0)
    x_adv_rec = np.clip(x_rec + 0.05, 0.0, 1.0)
    axes = plot_reconstructions(x, x_rec, x_adversarial=x_adv,
                                x_adversarial_reconstructed=x_adv_rec)
    assert axes.shape == (4, 3) and len(drawn(axes)) == 12
    assert [ax.get_title() for ax in axes[0]] == ["input 0", "input 1", "input 2"]
    linf_adv = np.abs(x_adv - x).reshape(3, -1).max(axis=1)
    linf_rec = np.abs(x_adv_rec - x_rec).reshape(3, -1).max(axis=1)
    assert all(ax.get_title().endswith(f"L∞ {v:.2f}") for ax, v in zip(axes[2], linf_adv,
                                                                        strict=True))
    assert all(ax.get_title().endswith(f"L∞ {v:.2f}") for ax, v in zip(axes[3], linf_rec,
                                                                        strict=True))
    assert "vs. reconstructed" in axes[3, 0].get_ylabel()
    # adversarial inputs alone give three rows
    assert plot_reconstructions(x, x_rec, x_adversarial=x_adv).shape == (3, 3)


def test_reconstructions_draw_on_given_axes():
    _, given = plt.subplots(2, 2)
    x = images(2, 3)
    axes = plot_reconstructions(x, x, axes=given)
    assert axes[1, 1] is given[1, 1] and axes[1, 1].get_title() == "L2 0.00 L∞ 0.00"


@pytest.mark.parametrize("kwargs, name", [
    (dict(x_reconstructed=np.zeros((4, 10, 10, 3))), "x_reconstructed"),
    (dict(x_reconstructed=np.zeros((3, 10, 10, 1))), "x_reconstructed"),
    (dict(x=np.full((4, 10, 10, 1), np.nan)), "x"),
    (dict(x=np.zeros((4, 10, 10, 2)), x_reconstructed=np.zeros((4, 10, 10, 2))), "x"),
    (dict(x_adversarial=np.full((4, 10, 10, 1), np.nan)), "x_adversarial"),
    (dict(x_adversarial=np.zeros((4, 8, 8, 1))), "x_adversarial"),
    (dict(x_adversarial_reconstructed=np.zeros((4, 10, 10, 1))), "x_adversarial_reconstructed"),
    (dict(labels=np.arange(3)), "labels"),
    (dict(labels=np.zeros(4)), "labels"),
    (dict(num_examples=0), "num_examples"),
])
def test_reconstructions_reject_bad_input_naming_the_argument(kwargs, name):
    args = dict(x=np.zeros((4, 10, 10, 1)), x_reconstructed=np.zeros((4, 10, 10, 1)))
    with pytest.raises(ValueError, match=f"`{name}`"):
        plot_reconstructions(**{**args, **kwargs})


# === plot_beta2_tradeoff ===

def test_tradeoff_draws_clean_and_robust_lines_in_percent_with_error_bars():
    beta2 = [1.75, 0.0, 1.0]  # drawn in increasing order
    clean, robust = [0.82, 0.85, 0.84], [0.40, 0.30, 0.35]
    interval = [(0.35, 0.45), (0.25, 0.36), (0.30, 0.40)]
    ax = plot_beta2_tradeoff(beta2, clean, robust, robust_interval=interval,
                             robust_label="PGD-L∞ 0.1, BPDA+EoT")
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["clean", "PGD-L∞ 0.1, BPDA+EoT"]
    assert list(handles[0].get_xdata()) == [0.0, 1.0, 1.75]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "1.75"]
    np.testing.assert_allclose(handles[0].get_ydata(), [85.0, 84.0, 82.0])
    np.testing.assert_allclose(handles[1].get_ydata(), [30.0, 35.0, 40.0])
    assert len(ax.collections) == 1  # one set of error bars, on the robust line
    segments = ax.collections[0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in segments], [[25, 36], [30, 40], [35, 45]])
    ax = plot_beta2_tradeoff([0.0], [0.9], [0.1], clean_interval=[(0.8, 0.95)],
                             robust_interval=[(0.05, 0.2)])
    assert len(ax.collections) == 2
    assert len(plot_beta2_tradeoff([0.0, 1.0], [0.9, 0.8], [0.2, 0.3]).collections) == 0


def test_tradeoff_draws_on_a_given_axes():
    _, given = plt.subplots()
    assert plot_beta2_tradeoff([0.0, 1.75], [0.9, 0.8], [0.2, 0.3], ax=given) is given


@pytest.mark.parametrize("kwargs, name", [
    (dict(robust_accuracy=[0.2, 0.3]), "robust_accuracy"),
    (dict(clean_accuracy=[0.9, np.nan, 0.8]), "clean_accuracy"),
    (dict(clean_accuracy=[90.0, 85.0, 80.0]), "clean_accuracy"),
    (dict(beta2_values=[0.0, -1.0, 1.75]), "beta2_values"),
    (dict(beta2_values=[[0.0, 1.0, 1.75]]), "beta2_values"),
    (dict(robust_interval=[(0.1, 0.3), (0.2, 0.4)]), "robust_interval"),
    (dict(robust_interval=[(0.1, 0.3), (0.2, 0.4), (np.nan, 0.5)]), "robust_interval"),
    (dict(robust_interval=[(0.3, 0.4), (0.2, 0.4), (0.3, 0.5)]), "robust_interval"),
    (dict(clean_interval=[(0.86, 0.95)] * 3), "clean_interval"),
])
def test_tradeoff_rejects_bad_input_naming_the_argument(kwargs, name):
    args = dict(beta2_values=[0.0, 1.0, 1.75], clean_accuracy=[0.9, 0.85, 0.8],
                robust_accuracy=[0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=f"`{name}`"):
        plot_beta2_tradeoff(**{**args, **kwargs})
