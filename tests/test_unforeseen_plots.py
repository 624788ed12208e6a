"""Plots of unforeseen attacks: the example grid and the accuracy-vs-eps curves (no model)."""

import matplotlib.colors
import numpy as np
import pytest

from manidefense.visualization.unforeseen import plot_accuracy_vs_eps, plot_unforeseen_grid

RNG = np.random.default_rng(0)


def images(n, channels, size=8):
    return RNG.random((n, size, size, channels))


def perturbed(x, scale):
    return np.clip(x + scale * RNG.standard_normal(x.shape), 0.0, 1.0)


# === plot_unforeseen_grid ===

@pytest.mark.parametrize("channels", [1, 3])
def test_grid_has_two_rows_per_example_and_a_column_per_attack_and_eps(channels):
    x = images(4, channels)
    examples = {"fog": {0.5: perturbed(x, 0.2), 0.25: perturbed(x, 0.1)},
                "elastic": {1.0: perturbed(x, 0.05), 2.0: perturbed(x, 0.1),
                            0.5: perturbed(x, 0.02)}}
    axes = plot_unforeseen_grid(x, examples, num_examples=3)
    assert axes.shape == (6, 6)
    assert len(axes.flat[0].figure.axes) == 36
    # the cell under each clean image is hidden; every other cell shows an image
    assert [ax.axison for ax in axes[1::2, 0]] == [False] * 3
    assert sum(bool(ax.images) for ax in axes.flat) == 36 - 3
    titles = [ax.get_title() for ax in axes[0, 1:]]
    assert titles == ["fog\neps=0.25", "fog\neps=0.5", "elastic\neps=0.5", "elastic\neps=1",
                      "elastic\neps=2"]
    # adversarial panels show the image itself (grey for one channel, RGB for three)
    shown = axes[2, 2].images[0].get_array()
    expected = examples["fog"][0.5][1]
    np.testing.assert_allclose(shown, expected[..., 0] if channels == 1 else expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_difference_panels_use_symmetric_limits_shared_per_attack(channels):
    x = images(2, channels)
    examples = {"snow": {0.1: perturbed(x, 0.05), 0.2: perturbed(x, 0.3)},
                "gabor": {6.25: perturbed(x, 0.01)}}
    axes = plot_unforeseen_grid(x, examples, num_examples=2)
    for block in range(2):
        diffs = [(examples["snow"][eps][block] - x[block]).mean(axis=-1) for eps in (0.1, 0.2)]
        scale = max(np.abs(d).max() for d in diffs)
        for column, diff in zip((1, 2), diffs, strict=True):
            image = axes[2 * block + 1, column].images[0]
            low, high = image.get_clim()
            assert low == pytest.approx(-scale) and high == pytest.approx(scale)
            np.testing.assert_allclose(image.get_array(), diff)
            assert isinstance(image.get_cmap(), matplotlib.colors.Colormap)
            assert image.get_cmap().name == "seismic"
            assert f"±{scale:.2g}" in axes[2 * block + 1, column].get_title()
        gabor = axes[2 * block + 1, 3].images[0].get_clim()
        assert gabor[0] == -gabor[1] and gabor[1] < scale  # its own, smaller limit


def test_grid_rescales_images_from_other_bounds():
    x = images(1, 3) * 2 - 1
    axes = plot_unforeseen_grid(x, {"fog": {1.0: x}}, num_examples=5, bounds=(-1, 1))
    assert axes.shape == (2, 2)  # num_examples is capped by the batch
    np.testing.assert_allclose(axes[0, 0].images[0].get_array(), (x[0] + 1) / 2)


@pytest.mark.parametrize(("x", "examples", "match"), [
    (images(2, 1), {"fog": {0.5: images(2, 1, size=9)}}, r"examples\['fog'\]\[0.5\]"),
    (images(2, 3), {"fog": {0.5: images(3, 3)}}, r"shaped like `x`"),
    (images(2, 2), {"fog": {0.5: images(2, 2)}}, "`x`.*C = 1 or 3"),
    (RNG.random((2, 8, 8)), {"fog": {0.5: RNG.random((2, 8, 8))}}, "`x`"),
    (images(2, 1), {}, "`examples`"),
    (images(2, 1), {"fog": {}}, r"examples\['fog'\]"),
    (images(2, 1), {"fog": {"high": images(2, 1)}}, "numeric eps"),
])
def test_grid_rejects_bad_shapes(x, examples, match):
    with pytest.raises(ValueError, match=match):
        plot_unforeseen_grid(x, examples)


# === plot_accuracy_vs_eps ===

CURVES = {"elastic": ([0.125, 0.25, 0.5, 1, 2, 8], [0.8, 0.7, 0.6, 0.5, 0.4, 0.2]),
          "jpeg-linf": ([0.03125, 0.0625, 0.125, 0.25, 0.5, 1], [0.9, 0.8, 0.6, 0.4, 0.2, 0.1]),
          "fog": ([0.5, 1, 2, 4], [0.7, 0.5, 0.3, 0.1])}


def test_accuracy_plot_draws_one_line_per_attack_against_the_eps_index():
    ax = plot_accuracy_vs_eps(CURVES)
    lines = ax.get_lines()
    assert len(lines) == 3
    for line, (eps, accuracy) in zip(lines, CURVES.values(), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, len(eps) + 1))
        np.testing.assert_allclose(line.get_ydata(), accuracy)
    assert ax.get_ylim() == (0.0, 1.0)
    assert list(ax.get_xticks()) == [1, 2, 3, 4, 5, 6]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "elastic (eps 0.125, 0.25, 0.5, 1, 2, 8)"


def test_accuracy_plot_adds_dashed_ata_lines_in_the_attack_colour():
    ata = {"elastic": [0.87, 0.81, 0.72, 0.58, 0.45, 0.28], "fog": None}
    ax = plot_accuracy_vs_eps(CURVES, ata=ata)
    lines = ax.get_lines()
    assert len(lines) == 4
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_label() == "elastic ATA"
    np.testing.assert_allclose(dashed[0].get_ydata(), ata["elastic"])
    assert dashed[0].get_color() == lines[0].get_color()


def test_accuracy_plot_draws_on_a_given_axes():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    assert plot_accuracy_vs_eps({"fog": ([1, 2], [0.5, 0.2])}, ax=ax) is ax


@pytest.mark.parametrize(("curves", "ata", "match"), [
    ({}, None, "`curves`"),
    ({"fog": ([1, 2, 3], [0.5, 0.2])}, None, "one accuracy"),
    ({"fog": ([1, 2], [50, 20])}, None, "not percents"),
    ({"fog": [1, 2, 3]}, None, "pair"),
    ({"fog": ([1, 2], [0.5, 0.2])}, {"snow": [0.9, 0.8]}, "missing from `curves`"),
    ({"fog": ([1, 2], [0.5, 0.2])}, {"fog": [0.9, 0.8, 0.7]}, "one value per eps"),
])
def test_accuracy_plot_rejects_bad_inputs(curves, ata, match):
    with pytest.raises(ValueError, match=match):
        plot_accuracy_vs_eps(curves, ata=ata)
