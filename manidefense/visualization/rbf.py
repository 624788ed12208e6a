"""Plots of the RBF-CNN defense: its filters, its reconstructions and its β2 trade-off.

They draw arrays (or a fitted `RBFLayer`'s weights) and never run a model or an attack:
compute the reconstructions and accuracies first, then plot them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from manidefense.validation import check_bounds, check_positive_int
from manidefense.visualization.images import _figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from manidefense.layers.rbf import RBFLayer


def _finite_array(name, value, dtype="float64"):
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"Argument `{name}` must be an array of numbers. "
                         f"Received: {type(value).__name__}") from None
    if not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise ValueError(f"Argument `{name}` must be finite. Received: {bad} NaN or Inf "
                         f"values in {name}")
    return array


def _image_batch(name, value):
    """`(n, H, W, C)` float images with C in {1, 3}; `(n, H, W)` is read as grey."""
    array = _finite_array(name, value)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or array.shape[0] == 0:
        raise ValueError(f"Argument `{name}` must be images (n, height, width, channels) with "
                         f"1 or 3 channels. Received: {name}.shape={np.shape(value)}")
    return array


def _grid_axes(name, axes, rows, cols, figsize):
    """A `(rows, cols)` array of Axes: new ones, or the caller's (at least rows × cols)."""
    if axes is None:
        figure = _figure(figsize)
        return np.array(figure.subplots(rows, cols, squeeze=False))
    array = np.asarray(axes, dtype=object)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.size < rows * cols or not all(hasattr(a, "imshow") for a in array.flat):
        raise ValueError(f"Argument `{name}` must hold at least {rows * cols} matplotlib Axes "
                         f"({rows} × {cols}). Received: {array.size} item(s)")
    if array.ndim == 2 and array.shape[0] >= rows and array.shape[1] >= cols:
        return array[:rows, :cols]
    return array.reshape(-1)[:rows * cols].reshape(rows, cols)


def _show(ax, image, title, bounds):
    low, high = bounds
    image = np.clip(image, low, high)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    else:  # RGB: imshow wants [0, 1]
        ax.imshow((image - low) / (high - low), interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


# --- filters ------------------------------------------------------------------------------

def plot_rbf_filters(means: ArrayLike | RBFLayer, variances: ArrayLike | None = None,
                     num_filters: int | None = None,
                     axes: Sequence[Axes] | np.ndarray | None = None, columns: int = 8,
                     sort: bool = True, bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Draws the RBF filter means as enlarged patches, one per Axes (RBF-CNN Fig. 2).

    Args:
        means: filter means `(K, ph, pw, C)` with C = 1 (grey) or 3 (RGB), or `(K, ph, pw)`;
            or a fitted `RBFLayer`, whose fitted means, variances and count are then used.
        variances: optional `(K,)` trace variances `v_j` (non-negative); when given, the
            filters are sorted by increasing variance (with `sort=True`) and each title
            shows `v_j`.
        num_filters: draw only the first `num_filters` filters (an `RBFLayer` keeps unused
            capacity after its fitted filters); None draws all K.
        axes: Axes to draw on (at least one per filter, in a sequence or a 2-D array; the
            ones left over are hidden); a new figure when None.
        columns: filters per row of a new figure.
        sort: sort by variance when `variances` is given (False keeps the fitted order).
        bounds: value range of the pixels (the colour scale).

    Returns:
        A 2-D numpy array of matplotlib Axes (`axes` itself when given; unused cells are
        hidden); `axes.flat[0].figure` is the figure.

    Example:
    >>> axes = plot_rbf_filters(rbf)   # or plot_rbf_filters(means, variances, num_filters=k)
    >>> axes.flat[0].figure.savefig("filters.png")
    """
    if hasattr(means, "num_filters") and hasattr(means, "adapt"):  # an RBFLayer
        layer = means
        if not layer.num_filters:
            raise ValueError("Argument `means` is an RBFLayer without fitted filters: call "
                             "its `adapt(data)` (or `set_filters`) first.")
        if variances is None:
            variances = np.asarray(layer.variances)
        if num_filters is None:
            num_filters = layer.num_filters
        means = np.asarray(layer.means)
    means = _finite_array("means", means)
    if means.ndim == 3:
        means = means[..., None]
    if means.ndim != 4 or means.shape[-1] not in (1, 3) or means.shape[0] == 0:
        raise ValueError("Argument `means` must have shape (K, patch_height, patch_width, "
                         "channels) with 1 or 3 channels and K >= 1. "
                         f"Received: means.shape={means.shape}")
    total = means.shape[0]
    if num_filters is None:
        num_filters = total
    num_filters = check_positive_int("num_filters", num_filters)
    if num_filters > total:
        raise ValueError(f"Argument `num_filters` must be at most the {total} filters in "
                         f"`means`. Received: num_filters={num_filters}")
    columns = check_positive_int("columns", columns)
    bounds = check_bounds(bounds)
    means = means[:num_filters]
    order = np.arange(num_filters)
    if variances is not None:
        variances = _finite_array("variances", variances)
        if variances.ndim != 1 or len(variances) not in (total, num_filters):
            raise ValueError(f"Argument `variances` must have shape ({total},), one per "
                             f"filter of `means`. Received: variances.shape={variances.shape}")
        if np.any(variances < 0):
            raise ValueError("Argument `variances` must be >= 0. Received: "
                             f"minimum {variances.min():.3g}")
        variances = variances[:num_filters]
        if sort:
            order = np.argsort(variances, kind="stable")
    if axes is None:
        cols = min(columns, num_filters)
        rows = -(-num_filters // cols)
        grid = _grid_axes("axes", None, rows, cols, (0.95 * cols + 0.3, 1.05 * rows + 0.3))
    else:  # the caller's layout, all of it
        grid = np.asarray(axes, dtype=object)
        grid = grid.reshape(1, -1) if grid.ndim < 2 else grid.reshape(grid.shape[0], -1)
        _grid_axes("axes", grid, 1, num_filters, None)  # checks the count and the type
    for cell, ax in enumerate(grid.flat):
        if cell >= num_filters:
            ax.set_axis_off()
            continue
        j = int(order[cell])
        title = f"#{j}" if variances is None else f"#{j} v={variances[j]:.2g}"
        _show(ax, means[j], title, bounds)
    if axes is None:
        grid.flat[0].figure.tight_layout()
    return grid


# --- reconstructions -----------------------------------------------------------------------

def _distances(a, b):
    diff = (a - b).reshape(len(a), -1)
    return np.sqrt(np.sum(diff ** 2, axis=1)), np.max(np.abs(diff), axis=1)


def plot_reconstructions(x: ArrayLike, x_reconstructed: ArrayLike, labels: ArrayLike | None = None,
                         class_names: Sequence[str] | None = None,
                         x_adversarial: ArrayLike | None = None,
                         x_adversarial_reconstructed: ArrayLike | None = None,
                         num_examples: int = 6, axes: np.ndarray | None = None,
                         bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Images before and after the reconstruction, with the distances (RBF-CNN Fig. 3).

    One column per example. Rows:

    1. the inputs `x` (titled with their label, or their index);
    2. their reconstructions, titled with the L2 and L∞ distances to `x` (what the
       reconstruction changes in a clean image);
    3. optionally the adversarial inputs, titled with their distances to `x` (the
       perturbation);
    4. optionally their reconstructions, titled with their distances to the clean
       reconstructions (the perturbation that survives the reconstruction; Fig. 3 compares
       these two rows).

    The first Axes of each row carries the row's name and reference as its y-label.

    Args:
        x: clean inputs `(n, H, W, C)`, C = 1 or 3 (`(n, H, W)` is read as grey).
        x_reconstructed: their reconstructions, shaped like `x`.
        labels: optional integer labels `(n,)`.
        class_names: optional sequence mapping labels to names.
        x_adversarial: optional adversarial inputs, shaped like `x`.
        x_adversarial_reconstructed: optional reconstructions of `x_adversarial`, shaped like
            `x` (needs `x_adversarial`).
        num_examples: columns to draw (the first `num_examples` examples).
        axes: a `(rows, num_examples)` grid of Axes to draw on; a new figure when None.
        bounds: value range of the images.

    Returns:
        A 2-D numpy array of matplotlib Axes (rows as above, columns = examples).

    Example:
    >>> recon = manidefense.layers.ReconstructionLayer(rbf)
    >>> axes = plot_reconstructions(x[:6], recon(x[:6]), labels=y[:6])
    """
    x = _image_batch("x", x)
    bounds = check_bounds(bounds)
    rows_of = [("input", x)]
    x_reconstructed = _image_batch("x_reconstructed", x_reconstructed)
    rows_of.append(("reconstructed", x_reconstructed))
    if x_adversarial_reconstructed is not None and x_adversarial is None:
        raise ValueError("Argument `x_adversarial_reconstructed` needs `x_adversarial`, the "
                         "adversarial inputs it reconstructs. Received: x_adversarial=None")
    if x_adversarial is not None:
        rows_of.append(("adversarial", _image_batch("x_adversarial", x_adversarial)))
    if x_adversarial_reconstructed is not None:
        rows_of.append(("adv. reconstructed",
                        _image_batch("x_adversarial_reconstructed", x_adversarial_reconstructed)))
    names = {"reconstructed": "x_reconstructed", "adversarial": "x_adversarial",
             "adv. reconstructed": "x_adversarial_reconstructed"}
    for kind, images in rows_of[1:]:
        if images.shape != x.shape:
            raise ValueError(f"Argument `{names[kind]}` must have the shape of `x`, "
                             f"{x.shape}. Received: {names[kind]}.shape={images.shape}")
    n = len(x)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"Argument `labels` must hold {n} integer labels, one per image "
                             f"of `x`. Received: labels.shape={labels.shape}, "
                             f"dtype={labels.dtype}")
    cols = min(check_positive_int("num_examples", num_examples), n)
    grid = _grid_axes("axes", axes, len(rows_of), cols, (1.35 * cols + 0.3,
                                                          1.55 * len(rows_of) + 0.2))
    references = {"reconstructed": x, "adversarial": x,
                  "adv. reconstructed": x_reconstructed}
    row_labels = {"input": "input", "reconstructed": "reconstructed\n(vs. input)",
                  "adversarial": "adversarial\n(vs. input)",
                  "adv. reconstructed": "adv. reconstructed\n(vs. reconstructed)"}
    for r, (kind, images) in enumerate(rows_of):
        if kind != "input":
            l2, linf = _distances(images[:cols], references[kind][:cols])
        for i in range(cols):
            if kind != "input":
                title = f"L2 {l2[i]:.2f} L∞ {linf[i]:.2f}"
            elif labels is None:
                title = f"input {i}"
            else:
                label = int(labels[i])
                title = str(class_names[label]) if class_names is not None else str(label)
            _show(grid[r, i], images[i], title, bounds)
        grid[r, 0].set_ylabel(row_labels[kind], fontsize=7)
    if axes is None:
        grid.flat[0].figure.tight_layout()
    return grid


# --- the β2 trade-off ------------------------------------------------------------------------

def _interval(name, interval, accuracy):
    interval = _finite_array(name, interval)
    if interval.shape != (len(accuracy), 2):
        raise ValueError(f"Argument `{name}` must have shape ({len(accuracy)}, 2), one "
                         f"(low, high) pair per β2 value. Received: {name}.shape="
                         f"{interval.shape}")
    low, high = interval[:, 0], interval[:, 1]
    tolerance = 1e-9
    if np.any(low < -tolerance) or np.any(high > 1 + tolerance) or np.any(
            low > accuracy + tolerance) or np.any(high < accuracy - tolerance):
        raise ValueError(f"Argument `{name}` must hold intervals 0 <= low <= accuracy <= high "
                         f"<= 1 around each accuracy. Received: {interval.tolist()}")
    return interval


def plot_beta2_tradeoff(beta2_values: ArrayLike, clean_accuracy: ArrayLike,
                        robust_accuracy: ArrayLike, robust_interval: ArrayLike | None = None,
                        clean_interval: ArrayLike | None = None, ax: Axes | None = None,
                        title: str | None = None, robust_label: str = "robust") -> Axes:
    """Clean and robust accuracy against the noise level β2 (RBF-CNN Table VII).

    Args:
        beta2_values: the β2 values evaluated, `(n,)`, >= 0.
        clean_accuracy: clean accuracy at each β2, fractions in [0, 1], `(n,)`.
        robust_accuracy: robust accuracy at each β2, same shape.
        robust_interval: optional `(n, 2)` (low, high) confidence intervals of the robust
            accuracies (e.g. each report's `robust_interval`), drawn as error bars.
        clean_interval: optional `(n, 2)` intervals of the clean accuracies.
        ax: matplotlib Axes to draw on; a new figure when None.
        title: axes title (default: "Accuracy vs β2").
        robust_label: legend label of the robust line (e.g. "PGD-L∞ 0.1, BPDA+EoT").

    Returns:
        The matplotlib Axes, with one line per accuracy ("clean", `robust_label`).

    Example:
    >>> reports = [evaluate_robustness(rbf_defense(cnn, rbf, beta2=b), x, y, eps=0.1)
    ...            for b in (0.0, 1.0, 1.75)]
    >>> ax = plot_beta2_tradeoff([0.0, 1.0, 1.75], [r.clean_accuracy for r in reports],
    ...                          [r.robust_accuracy for r in reports],
    ...                          robust_interval=[r.robust_interval for r in reports])
    """
    beta2 = _finite_array("beta2_values", beta2_values)
    if beta2.ndim != 1 or len(beta2) == 0:
        raise ValueError("Argument `beta2_values` must be a 1-D sequence of β2 values. "
                         f"Received: shape {beta2.shape}")
    if np.any(beta2 < 0):
        raise ValueError(f"Argument `beta2_values` must be >= 0. Received: {beta2.tolist()}")
    accuracies = {}
    for name, value in (("clean_accuracy", clean_accuracy),
                        ("robust_accuracy", robust_accuracy)):
        values = _finite_array(name, value)
        if values.shape != beta2.shape:
            raise ValueError(f"Argument `{name}` must have shape {beta2.shape}, one accuracy "
                             f"per β2 value. Received: {name}.shape={values.shape}")
        if np.any(values < 0) or np.any(values > 1):
            raise ValueError(f"Argument `{name}` must hold fractions in [0, 1] (not "
                             f"percentages). Received: {values.tolist()}")
        accuracies[name] = values
    intervals = {
        "clean_accuracy": None if clean_interval is None else _interval(
            "clean_interval", clean_interval, accuracies["clean_accuracy"]),
        "robust_accuracy": None if robust_interval is None else _interval(
            "robust_interval", robust_interval, accuracies["robust_accuracy"]),
    }
    new_figure = ax is None
    if new_figure:
        ax = _figure((4.5, 3.2)).add_subplot()
    order = np.argsort(beta2, kind="stable")
    styles = {"clean_accuracy": ("clean", "#4f81bd", "o"),
              "robust_accuracy": (str(robust_label), "#c0504d", "s")}
    for name, (label, color, marker) in styles.items():
        values = accuracies[name][order]
        ax.plot(beta2[order], 100 * values, marker=marker, color=color, label=label)
        interval = intervals[name]
        if interval is not None:
            interval = interval[order]
            yerr = 100 * np.stack([values - interval[:, 0], interval[:, 1] - values])
            ax.errorbar(beta2[order], 100 * values, yerr=np.maximum(yerr, 0.0), fmt="none",
                        ecolor=color, capsize=4)
    ax.set_xlabel("β2 (noise level of the reconstruction)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(beta2[order], [f"{value:g}" for value in beta2[order]])
    ax.set_title("Accuracy vs β2" if title is None else title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if new_figure:
        ax.figure.tight_layout()
    return ax
