"""Plots of GAT's generative attack: the Fig. 3 example grid and the iterations histogram."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from manidefense.attacks import GenerativeExamples  # noqa: E402
from manidefense.visualization.generative import (  # noqa: E402
    plot_generative_examples,
    plot_iterations_histogram,
)

RNG = np.random.default_rng(0)
NAMES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat"]


def images(n, channels, size=6):
    return RNG.random((n, size, size, channels))


def examples(x, iterations, success):
    """A tiny `GenerativeExamples` built by hand (no generator, no attack)."""
    return GenerativeExamples(styles=[np.zeros((len(x), 2))], noises=[np.zeros((len(x), 4))],
                              images=x, iterations=np.asarray(iterations, np.int32),
                              success=np.asarray(success, bool), target=None)


def is_grey(color):
    r, g, b, _ = matplotlib.colors.to_rgba(color)
    return r == g == b and 0.2 < r < 0.8


# === plot_generative_examples ===

@pytest.mark.parametrize("channels", [1, 3])
def test_grid_has_the_originals_then_one_row_per_setting_and_a_column_per_example(channels):
    x = images(5, channels)
    rows = {"style, layers 0-1": images(5, channels), "noise, layers 4-5": images(5, channels),
            "style, layers 2-3": images(5, channels)}
    axes = plot_generative_examples(x, rows, num_examples=4)
    assert axes.shape == (4, 4)
    assert len(axes.flat[0].figure.axes) == 16
    assert all(len(ax.images) == 1 for ax in axes.flat)
    # rows keep the mapping's order and are named by their first Axes' y-label
    assert [ax.get_ylabel() for ax in axes[:, 0]] == [
        "original g(y, η)", "style, layers 0-1", "noise, layers 4-5", "style, layers 2-3"]
    assert [ax.get_ylabel() for ax in axes[:, 1]] == [""] * 4
    # column i shows example i of each row, grey for one channel and RGB for three
    for r, batch in enumerate([x, *rows.values()]):
        for i in range(4):
            expected = batch[i, ..., 0] if channels == 1 else batch[i]
            np.testing.assert_allclose(axes[r, i].images[0].get_array(), expected)
    if channels == 1:
        assert all(ax.images[0].get_cmap().name == "gray" for ax in axes.flat)


def test_grid_caps_the_columns_at_the_batch_and_rescales_other_bounds():
    x = images(3, 3) * 2 - 1
    adv = images(3, 3) * 2 - 1
    axes = plot_generative_examples(x, {"noise": adv}, num_examples=8, bounds=(-1, 1))
    assert axes.shape == (2, 3)
    np.testing.assert_allclose(axes[0, 2].images[0].get_array(), (x[2] + 1) / 2)
    np.testing.assert_allclose(axes[1, 0].images[0].get_array(), (adv[0] + 1) / 2)


def test_predictions_are_written_under_each_image_by_class_name_and_labels_above():
    x = images(4, 1)
    rows = {"style": images(4, 1), "noise": images(4, 1)}
    predictions = {"original": np.array([0, 1, 2, 3]), "style": np.array([4, 0, 2, 1])}
    labels = np.array([0, 1, 3, 3])
    axes = plot_generative_examples(x, rows, predictions=predictions, labels=labels,
                                    class_names=NAMES)
    assert [ax.get_xlabel() for ax in axes[0]] == ["T-shirt", "Trouser", "Pullover", "Dress"]
    assert [ax.get_xlabel() for ax in axes[1]] == ["Coat", "T-shirt", "Pullover", "Trouser"]
    assert [ax.get_xlabel() for ax in axes[2]] == [""] * 4  # no predictions for "noise"
    assert [ax.get_title() for ax in axes[0]] == [
        "true: T-shirt", "true: Trouser", "true: Dress", "true: Dress"]
    # plain arrays carry no success mask: adversarial cells are left untitled
    assert [ax.get_title() for ax in axes[1:].flat] == [""] * 8


def test_predictions_without_class_names_show_the_class_numbers():
    x = images(2, 3)
    axes = plot_generative_examples(x, {"style": images(2, 3)}, labels=np.array([7, 3]),
                                    predictions={"style": np.array([12, 0])})
    assert [ax.get_xlabel() for ax in axes[1]] == ["12", "0"]
    assert [ax.get_title() for ax in axes[0]] == ["true: 7", "true: 3"]


def test_generative_examples_mark_the_cells_the_attack_did_not_fool():
    x = images(5, 1)
    style = examples(images(5, 1), iterations=[0, 3, 10, 2, 10],
                     success=[True, True, False, True, False])
    noise = images(5, 1)
    axes = plot_generative_examples(x, {"style": style, "noise": noise},
                                    predictions={"style": np.array([1, 2, 0, 4, 1])},
                                    class_names=NAMES)
    titles = [ax.get_title() for ax in axes[1]]
    assert titles == ["fooled (0 it.)", "fooled (3 it.)", "not fooled", "fooled (2 it.)",
                      "not fooled"]
    for ax, fooled in zip(axes[1], style.success, strict=True):
        assert is_grey(ax.title.get_color()) is not fooled
        assert (ax.spines["left"].get_linestyle() == "--") is not fooled
    np.testing.assert_allclose(axes[1, 2].images[0].get_array(), style.images[2, ..., 0])
    assert axes[1, 2].get_xlabel() == "T-shirt"
    assert [ax.get_title() for ax in axes[2]] == [""] * 5  # the array row has no mask


def test_success_without_iterations_is_marked_without_counts():
    class Result:
        def __init__(self, images, success):
            self.images, self.success = images, success

    result = Result(images(3, 1), np.array([False, True, False]))
    axes = plot_generative_examples(images(3, 1), {"noise": result})
    assert [ax.get_title() for ax in axes[1]] == ["not fooled", "fooled", "not fooled"]


def test_grid_draws_on_given_axes():
    figure = Figure()
    given = np.array(figure.subplots(2, 3, squeeze=False))
    axes = plot_generative_examples(images(3, 1), {"noise": images(3, 1)}, axes=given)
    assert axes.shape == (2, 3) and all(a is b for a, b in zip(axes.flat, given.flat,
                                                                    strict=True))
    assert len(figure.axes) == 6 and all(ax.images for ax in figure.axes)


X = images(3, 1)
GOOD = {"style": images(3, 1)}
NAN = images(3, 1)
NAN[1, 2, 2, 0] = np.nan


@pytest.mark.parametrize(("x", "adversarial", "kwargs", "match"), [
    (NAN, GOOD, {}, "`originals` must be finite"),
    (X, {"style": NAN}, {}, r"`adversarial\['style'\]` must be finite"),
    (X[..., 0], GOOD, {}, r"`originals`.*Received: originals.shape=\(3, 6, 6\)"),
    (images(3, 2), GOOD, {}, "`originals`.*1 or 3 channels"),
    (X[:0], GOOD, {}, "`originals` must be a non-empty batch"),
    (X, {}, {}, "`adversarial` must be a non-empty mapping"),
    (X, [("style", X)], {}, "`adversarial` must be a non-empty mapping"),
    (X, {"style": images(4, 1)}, {}, r"`adversarial\['style'\]`.*shaped like `originals`"),
    (X, {"style": images(3, 1, size=7)}, {}, r"shaped like `originals` \(3, 6, 6, 1\)"),
    (X, {"original": X}, {}, "row title 'original'"),
    (X, {"style": examples(X, [1, 2], [True, False])}, {},
     r"`adversarial\['style'\].success` must hold one value per example \(3\)"),
    (X, {"style": examples(X, [1, 2, 3, 4], [True, False, True])}, {},
     r"`adversarial\['style'\].iterations` must hold one count per example"),
    (X, GOOD, {"predictions": {"noise": np.array([0, 1, 2])}}, "do not exist: \\['noise'\\]"),
    (X, GOOD, {"predictions": {"style": np.array([0, 1])}},
     r"`predictions\['style'\]` must hold 3 integer classes"),
    (X, GOOD, {"predictions": {"original": np.array([0.0, 1.0, 2.0])}},
     r"`predictions\['original'\]` must hold 3 integer classes"),
    (X, GOOD, {"predictions": {"style": np.array([0, 5, 1])}, "class_names": NAMES},
     r"`predictions\['style'\]` must hold classes in \[0, 5\)"),
    (X, GOOD, {"predictions": {"style": np.array([0, -1, 1])}},
     r"`predictions\['style'\]` must hold classes in >= 0"),
    (X, GOOD, {"labels": np.array([0, 1, 2, 3])}, "`labels` must hold 3 integer classes"),
    (X, GOOD, {"class_names": []}, "`class_names` must name at least one class"),
    (X, GOOD, {"num_examples": 0}, "`num_examples` must be an integer >= 1"),
    (X, GOOD, {"bounds": (1, 0)}, "`bounds`"),
])
def test_grid_rejects_bad_inputs(x, adversarial, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_generative_examples(x, adversarial, **kwargs)


# === plot_iterations_histogram ===

def fractions_by_counting(iterations, success, max_iterations):
    """Bar heights counted one example at a time: fooled at k = 0..max, then not fooled."""
    n = len(iterations)
    heights = [sum(1 for it, ok in zip(iterations, success, strict=True) if ok and it == k) / n
               for k in range(max_iterations + 1)]
    return [*heights, sum(1 for ok in success if not ok) / n]


STYLE = examples(images(8, 1), iterations=[0, 3, 10, 2, 10, 3, 3, 1],
                 success=[True, True, False, True, False, True, True, True])
NOISE = (np.array([1, 1, 2, 10, 10, 4]), np.array([True, True, True, False, True, False]))


def test_histogram_bar_heights_are_the_fractions_of_each_run():
    ax = plot_iterations_histogram({"style": STYLE, "noise": NOISE}, title="GAT iterations")
    assert len(ax.containers) == 2
    expected = [fractions_by_counting(STYLE.iterations, STYLE.success, 10),
                fractions_by_counting(*NOISE, 10)]
    for container, heights in zip(ax.containers, expected, strict=True):
        assert len(container.patches) == 12  # 0..10 and "not fooled"
        np.testing.assert_allclose([p.get_height() for p in container.patches], heights)
        assert sum(heights) == pytest.approx(1.0)
    # spot values: style fooled 3 of 8 at iteration 3 and missed 2; noise fooled one at 10
    assert ax.containers[0].patches[3].get_height() == pytest.approx(3 / 8)
    assert ax.containers[0].patches[-1].get_height() == pytest.approx(2 / 8)
    assert ax.containers[1].patches[10].get_height() == pytest.approx(1 / 6)
    assert all(c.patches[-1].get_hatch() == "//" for c in ax.containers)
    assert all(not c.patches[0].get_hatch() for c in ax.containers)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == [str(k) for k in range(11)] + ["not\nfooled"]
    assert ax.get_ylabel() == "fraction of examples"
    assert ax.get_title() == "GAT iterations"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["style (fooled 75%, mean 2.0 it.)", "noise (fooled 67%, mean 3.5 it.)"]


def test_histogram_groups_the_runs_side_by_side_without_overlap():
    ax = plot_iterations_histogram({"a": NOISE, "b": NOISE, "c": NOISE})
    for k in range(12):
        bars = [c.patches[k] for c in ax.containers]
        lefts = [b.get_x() for b in bars]
        assert lefts == sorted(lefts)
        for left, right in zip(bars, bars[1:], strict=False):
            assert left.get_x() + left.get_width() <= right.get_x() + 1e-12
        centre = np.mean([b.get_x() + b.get_width() / 2 for b in bars])
        assert centre == pytest.approx(k)


def test_histogram_axis_ends_at_the_largest_count_or_the_given_maximum():
    run = (np.array([0, 2, 1]), np.array([True, True, True]))
    ax = plot_iterations_histogram({"run": run})
    assert len(ax.containers[0].patches) == 4  # 0, 1, 2, not fooled
    assert ax.containers[0].patches[-1].get_height() == 0.0
    ax = plot_iterations_histogram({"run": run}, max_iterations=5)
    heights = [p.get_height() for p in ax.containers[0].patches]
    np.testing.assert_allclose(heights, fractions_by_counting(*run, 5))
    assert len(heights) == 7


def test_histogram_draws_on_a_given_axes():
    ax = Figure().add_subplot()
    assert plot_iterations_histogram({"noise": NOISE}, ax=ax) is ax
    assert len(ax.containers) == 1


@pytest.mark.parametrize(("results", "kwargs", "match"), [
    ({}, {}, "`results` must be a non-empty mapping"),
    ([NOISE], {}, "`results` must be a non-empty mapping"),
    ({"run": (np.array([1, -2]), np.array([True, True]))}, {},
     r"`results\['run'\] iterations` must hold whole numbers >= 0"),
    ({"run": (np.array([1.0, np.nan]), np.array([True, True]))}, {},
     r"`results\['run'\] iterations` must be finite"),
    ({"run": (np.array([1.0, 2.5]), np.array([True, True]))}, {}, "whole numbers"),
    ({"run": (np.array([[1, 2]]), np.array([True, True]))}, {}, "must be 1-D"),
    ({"run": (np.array([1, 2, 3]), np.array([True, True]))}, {},
     r"`results\['run'\] success` must hold one value per example \(3\)"),
    ({"run": (np.array([1, 2]), np.array([1, 2]))}, {}, "boolean mask"),
    ({"run": (np.array([], int), np.array([], bool))}, {}, "at least one example"),
    ({"run": np.array([1, 2, 3])}, {}, r"`results\['run'\]` must have `.iterations`"),
    ({"run": NOISE}, {"max_iterations": 5}, "must cover every fooled example"),
    ({"run": NOISE}, {"max_iterations": -1}, "`max_iterations` must be an integer >= 0"),
    ({"run": NOISE}, {"max_iterations": 2.5}, "`max_iterations` must be an integer >= 0"),
])
def test_histogram_rejects_bad_inputs(results, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_iterations_histogram(results, **kwargs)
