"""Plots of GAT's generative attack: adversarial examples per layer group and for style vs noise
(the paper's Fig. 3), and the histogram of the iterations the attack needed.

They take arrays (or `manidefense.attacks.GenerativeExamples`, read through their attributes)
and never run a generator, an attack or a classifier.

Reference:
    Poursaeed, Jiang, Yang, Belongie, Lim, "Robustness and Generalization via Generative
    Adversarial Training", ICCV 2021, Fig. 3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from manidefense.validation import check_bounds, check_positive_int
from manidefense.visualization.images import _figure
from manidefense.visualization.rbf import _finite_array, _grid_axes, _show

if TYPE_CHECKING:
    from matplotlib.axes import Axes


NOT_FOOLED = "not fooled"
_GREY = "0.5"


def plot_generative_examples(originals: ArrayLike, adversarial: Mapping[str, Any], *,
                             predictions: Mapping[str, ArrayLike] | None = None,
                             labels: ArrayLike | None = None,
                             class_names: Sequence[str] | None = None, num_examples: int = 8,
                             bounds: tuple[float, float] = (0.0, 1.0),
                             axes: np.ndarray | None = None) -> np.ndarray:
    """The generated images `g(y, η)`, then one row of adversarial images per attack setting.

    The analogue of Fig. 3 of the GAT paper (Poursaeed et al.): the first row holds the
    original samples, each further row the adversarial images of one entry of `adversarial`
    (e.g. style or noise, by layer group), column `i` always showing example `i`. The row's
    name is the y-label of its first Axes. When an entry has a `success` mask (as
    `GenerativeExamples` has), each cell is titled "fooled" (with the iterations it took,
    when known) or, in grey with a dashed grey frame, "not fooled". Predicted classes are
    written under each image (its x-label), and the true labels above the originals.

    Args:
        originals: the generated images `(n, H, W, C)`, C = 1 or 3.
        adversarial: an ordered mapping `{row title: images}`, each value an array shaped like
            `originals` or an object with an `.images` array (and optionally `.success` and
            `.iterations`, one per example), such as `manidefense.attacks.GenerativeExamples`.
        predictions: optional `{"original" or row title: predicted classes (n,)}`; rows
            missing from it show no prediction.
        labels: optional true classes `(n,)` of the originals.
        class_names: optional sequence mapping classes to names.
        num_examples: columns to draw (the first `num_examples` examples).
        bounds: value range of the images.
        axes: a grid of at least `(1 + len(adversarial)) × columns` Axes to draw on; a new
            figure when None.

    Returns:
        A 2-D numpy array of matplotlib Axes, `(1 + len(adversarial), columns)`;
        `axes.flat[0].figure.savefig(...)` saves the figure.

    Raises:
        ValueError: if `originals` is not a non-empty, finite batch of 1- or 3-channel images,
            `adversarial` is empty or an entry is not shaped like `originals`, a `success` mask
            or a prediction or label vector does not hold one value per example, `predictions`
            names an unknown row, or a class has no name in `class_names`.

    Example:
    >>> styles, noises, x = generator.sample(y, seed=0)
    >>> rows = {f"style, layers {g}": GenerativeAttack(generator, perturb="style", layers=g)(
    ...     classifier, (styles, noises), y) for g in ((0, 1), (2, 3))}
    >>> axes = plot_generative_examples(x, rows, labels=y, class_names=FASHION_CLASSES)
    >>> axes.flat[0].figure.savefig("gat_examples.png")
    """
    originals = _images("originals", originals)
    bounds = check_bounds(bounds)
    n = len(originals)
    rows = _adversarial_rows(adversarial, originals.shape)
    if class_names is not None:
        class_names = list(class_names)
        if not class_names:
            raise ValueError("Argument `class_names` must name at least one class. "
                             "Received: an empty sequence")
    labels = None if labels is None else _classes("labels", labels, n, class_names)
    predictions = _predictions(predictions, [title for title, _, _, _ in rows], n, class_names)
    cols = min(check_positive_int("num_examples", num_examples), n)
    grid = _grid_axes("axes", axes, 1 + len(rows), cols, (1.25 * cols + 0.6,
                                                          1.6 * (1 + len(rows)) + 0.2))

    def name_of(label):
        return str(class_names[label]) if class_names is not None else str(label)

    for i in range(cols):
        title = "" if labels is None else f"true: {name_of(labels[i])}"
        _show(grid[0, i], originals[i], title, bounds)
        for r, (_, images, success, iterations) in enumerate(rows, start=1):
            ax = grid[r, i]
            _show(ax, images[i], "", bounds)
            if success is not None:
                _mark(ax, bool(success[i]), None if iterations is None else iterations[i])
    for r, key in enumerate(["original", *(title for title, _, _, _ in rows)]):
        grid[r, 0].set_ylabel("original g(y, η)" if r == 0 else key, fontsize=7)
        if key in predictions:
            for i in range(cols):
                grid[r, i].set_xlabel(name_of(predictions[key][i]), fontsize=7)
    if axes is None:
        grid.flat[0].figure.tight_layout()
    return grid


def plot_iterations_histogram(results: Mapping[str, Any], *, max_iterations: int | None = None,
                              ax: Axes | None = None, title: str | None = None) -> Axes:
    """Fraction of the examples fooled after 0, 1, ..., `max_iterations` iterations, and not.

    One group of bars per iteration count, one bar per run (grouped side by side, in the
    order of `results`), and a last, hatched group "not fooled" for the examples the attack
    never fooled. The heights are fractions of each run's examples, so a run's bars sum to 1.
    The legend gives each run's success rate and the mean iterations of its fooled examples
    (the figure the GAT paper reports in its supplementary material).

    Args:
        results: `{run name: examples}`, each value an object with `.iterations` and
            `.success` (a `GenerativeExamples`) or a pair `(iterations, success)` of `(n,)`
            arrays: non-negative integer iteration counts and a boolean success mask.
        max_iterations: the last iteration count on the x axis; default the largest count
            found (the attack's budget when some example was not fooled).
        ax: matplotlib Axes to draw on; a new figure when None.
        title: axes title.

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: if `results` is empty, a run's iterations are not non-negative whole
            numbers or its success mask is not boolean, the two differ in length or are
            empty, or a fooled example took more than `max_iterations` iterations.

    Example:
    >>> ax = plot_iterations_histogram({"style": attack_style(classifier, latents, y),
    ...                                 "noise": attack_noise(classifier, latents, y)})
    >>> ax.figure.savefig("gat_iterations.png")
    """
    if not isinstance(results, Mapping) or not results:
        raise ValueError("Argument `results` must be a non-empty mapping {run name: examples "
                         "with .iterations and .success, or (iterations, success)}. "
                         f"Received: {_describe(results)}")
    runs = [(str(name), *_run(name, value)) for name, value in results.items()]
    largest = max(int(iterations.max()) for _, iterations, _ in runs)
    if max_iterations is None:
        max_iterations = largest
    elif (isinstance(max_iterations, bool) or not isinstance(max_iterations, (int, np.integer))
          or max_iterations < 0):
        raise ValueError("Argument `max_iterations` must be an integer >= 0. "
                         f"Received: max_iterations={max_iterations!r}")
    max_iterations = int(max_iterations)
    for name, iterations, success in runs:
        if success.any() and int(iterations[success].max()) > max_iterations:
            raise ValueError(
                f"Argument `max_iterations` must cover every fooled example's iterations. "
                f"Received: max_iterations={max_iterations}, but run {name!r} fooled an "
                f"example after {int(iterations[success].max())} iterations")
    created = ax is None
    if created:
        width = 1.0 + 0.45 * (max_iterations + 2) * max(1.0, len(runs) / 2)
        ax = _figure((min(width, 12.0), 3.2)).add_subplot()
    positions = np.arange(max_iterations + 2)
    width = 0.8 / len(runs)
    for r, (name, iterations, success) in enumerate(runs):
        counts = np.bincount(iterations[success], minlength=max_iterations + 1)
        heights = np.append(counts, np.sum(~success)) / len(success)
        rate = float(success.mean())
        mean = f", mean {iterations[success].mean():.1f} it." if success.any() else ""
        bars = ax.bar(positions + (r - (len(runs) - 1) / 2) * width, heights, width,
                      label=f"{name} (fooled {100 * rate:.0f}%{mean})")
        bars.patches[-1].set_hatch("//")
    ax.axvline(max_iterations + 0.5, color=_GREY, linestyle=":", linewidth=1)
    ax.set_xticks(positions, [*map(str, positions[:-1]), NOT_FOOLED.replace(" ", "\n")])
    ax.set_xlabel("iterations to fool the classifier")
    ax.set_ylabel("fraction of examples")
    ax.set_ylim(0.0, 1.0)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    if created:
        ax.figure.tight_layout()
    return ax


# --- validation ---------------------------------------------------------------------------

def _describe(value):
    return f"{type(value).__name__} {value!r}"[:200]


def _images(name, value):
    """A finite `(n, H, W, C)` float batch with C in {1, 3} and n >= 1 (no rank-3 guessing)."""
    array = _finite_array(name, value)
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or array.shape[0] == 0:
        raise ValueError(f"Argument `{name}` must be a non-empty batch of images (n, height, "
                         "width, channels) with 1 or 3 channels. "
                         f"Received: {name}.shape={array.shape}")
    return array


def _adversarial_rows(adversarial, shape):
    """`[(row title, images, success or None, iterations or None)]` in the mapping's order."""
    if not isinstance(adversarial, Mapping) or not adversarial:
        raise ValueError("Argument `adversarial` must be a non-empty mapping {row title: "
                         f"images or GenerativeExamples}}. Received: {_describe(adversarial)}")
    rows = []
    for key, value in adversarial.items():
        title, name = str(key), f"adversarial[{key!r}]"
        if title == "original":
            raise ValueError("Argument `adversarial` must not use the row title 'original': "
                             "it is the key of the originals in `predictions`. "
                             f"Received: keys {list(adversarial)}")
        images = _images(name, getattr(value, "images", value))
        if images.shape != shape:
            raise ValueError(f"Argument `{name}` must hold images shaped like `originals` "
                             f"{shape}. Received: shape {images.shape}")
        success = getattr(value, "success", None)
        if success is not None:
            success = _mask(f"{name}.success", success, shape[0])
        iterations = getattr(value, "iterations", None)
        if iterations is not None:
            iterations = _counts(f"{name}.iterations", iterations)
            if iterations.shape != (shape[0],):
                raise ValueError(f"Argument `{name}.iterations` must hold one count per "
                                 f"example ({shape[0]}). Received: shape {iterations.shape}")
        rows.append((title, images, success, iterations))
    return rows


def _predictions(predictions, titles, n, class_names):
    if predictions is None:
        return {}
    if not isinstance(predictions, Mapping):
        raise ValueError("Argument `predictions` must be a mapping {'original' or row title: "
                         f"predicted classes}}. Received: {_describe(predictions)}")
    known = ["original", *titles]
    unknown = [key for key in predictions if str(key) not in known]
    if unknown:
        raise ValueError(f"Argument `predictions` names rows that do not exist: {unknown}. "
                         f"Expected keys among {known}")
    return {str(key): _classes(f"predictions[{key!r}]", value, n, class_names)
            for key, value in predictions.items()}


def _classes(name, value, n, class_names):
    """Integer classes `(n,)` in [0, len(class_names)) (>= 0 without names)."""
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer) or array.shape != (n,):
        raise ValueError(f"Argument `{name}` must hold {n} integer classes, one per example. "
                         f"Received: {name}.shape={array.shape}, dtype={array.dtype}")
    limit = len(class_names) if class_names is not None else None
    if array.min() < 0 or (limit is not None and array.max() >= limit):
        expected = f"[0, {limit})" if limit is not None else ">= 0"
        raise ValueError(f"Argument `{name}` must hold classes in {expected}"
                         f"{' (one name each in `class_names`)' if limit else ''}. "
                         f"Received: classes in [{array.min()}, {array.max()}]")
    return array.astype(np.int64)


def _mask(name, value, n):
    array = np.asarray(value)
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.number) or not np.isin(array, (0, 1)).all():
            raise ValueError(f"Argument `{name}` must be a boolean mask. "
                             f"Received: dtype={array.dtype}")
    if array.shape != (n,):
        raise ValueError(f"Argument `{name}` must hold one value per example ({n}). "
                         f"Received: shape {array.shape}")
    return array.astype(bool)


def _counts(name, value):
    """Non-negative whole numbers, 1-D, as int64."""
    array = _finite_array(name, value)
    if array.ndim != 1:
        raise ValueError(f"Argument `{name}` must be 1-D, one count per example. "
                         f"Received: shape {array.shape}")
    if np.any(array < 0) or np.any(array != np.round(array)):
        raise ValueError(f"Argument `{name}` must hold whole numbers >= 0. "
                         f"Received: values in [{array.min():g}, {array.max():g}]")
    return array.astype(np.int64)


def _run(name, value):
    """`(iterations, success)` of one entry of `results`."""
    label = f"results[{name!r}]"
    if hasattr(value, "iterations") and hasattr(value, "success"):
        iterations, success = value.iterations, value.success
    else:
        try:
            iterations, success = value
        except (TypeError, ValueError):
            raise ValueError(f"Argument `{label}` must have `.iterations` and `.success` or "
                             f"be a pair (iterations, success). Received: {_describe(value)}"
                             ) from None
    iterations = _counts(f"{label} iterations", iterations)
    if iterations.size == 0:
        raise ValueError(f"Argument `{label}` must hold at least one example. "
                         "Received: 0 iterations")
    success = _mask(f"{label} success", success, iterations.size)
    return iterations, success


def _mark(ax, fooled, iterations):
    """Titles a cell "fooled" (with its iterations) or greys it as "not fooled"."""
    if fooled:
        suffix = "" if iterations is None else f" ({iterations} it.)"
        ax.set_title("fooled" + suffix, fontsize=7)
        return
    ax.set_title(NOT_FOOLED, fontsize=7, color=_GREY)
    for spine in ax.spines.values():
        spine.set_edgecolor(_GREY)
        spine.set_linestyle("--")
