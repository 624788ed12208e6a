"""Model-shell plots: what the search did to an image (the paper's Figs. 1–2), and the base
model's confidence before and after the search."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from manidefense.visualization.images import _figure
from manidefense.visualization.rbf import _finite_array, _grid_axes, _image_batch, _show

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_shell_search(x: ArrayLike, x_adv: ArrayLike, z: ArrayLike,
                      predictions: Mapping[str, ArrayLike], confidences: Mapping[str, ArrayLike],
                      labels: ArrayLike | None = None, class_names: Sequence[str] | None = None,
                      num_examples: int = 4, bounds: tuple[float, float] = (0.0, 1.0),
                      axes: np.ndarray | None = None) -> np.ndarray:
    """Rows of: clean image, adversarial image, the shell's embedded point H(F, x_adv), and
    the embedded point's difference to the adversarial image (scaled to its largest value).

    Args:
        x: clean images `(n, H, W, C)`.
        x_adv: their adversarial examples, shaped like `x`.
        z: the search's output for the adversarial ones (`ModelShell.search(x_adv)[0]`).
        predictions: dict with `"clean"`, `"adversarial"` and `"shell"` predicted labels of
            the base model on x and x_adv and of the shell on x_adv (each `(n,)`).
        confidences: dict with the same keys: the base model's confidence at x, at x_adv and
            at z.
        labels: optional true labels `(n,)`.
        class_names: optional sequence mapping labels to names.
        num_examples: rows to draw.
        bounds: value range of the images.
        axes: optional Axes to draw into (at least rows × 4).

    Returns:
        The `(rows, 4)` array of Axes.

    Example:
    >>> z, classes, conf, _ = shell.search(x_adv)
    >>> plot_shell_search(x, x_adv, z, {"clean": p0, "adversarial": p1, "shell": classes},
    ...                   {"clean": c0, "adversarial": c1, "shell": conf})
    """
    x, x_adv, z = (_image_batch(n, v) for n, v in (("x", x), ("x_adv", x_adv), ("z", z)))
    if not x.shape == x_adv.shape == z.shape:
        raise ValueError("Arguments `x`, `x_adv` and `z` must have the same shape. Received: "
                         f"{x.shape}, {x_adv.shape}, {z.shape}")
    keys = ("clean", "adversarial", "shell")
    for name, value in (("predictions", predictions), ("confidences", confidences)):
        if not isinstance(value, dict) or any(k not in value for k in keys):
            raise ValueError(f"Argument `{name}` must be a dict with keys {keys}. "
                             f"Received: {sorted(value) if isinstance(value, dict) else value!r}")
    rows = min(int(num_examples), len(x))
    grid = _grid_axes("axes", axes, rows, 4, (9.0, 2.3 * rows))

    def name_of(label):
        return str(class_names[int(label)]) if class_names is not None else str(int(label))

    for i in range(rows):
        truth = "" if labels is None else f" (true {name_of(labels[i])})"
        images = (x[i], x_adv[i], z[i])
        for j, (key, image) in enumerate(zip(keys, images, strict=True)):
            title = (f"{key}: {name_of(predictions[key][i])} "
                     f"{100 * float(confidences[key][i]):.0f}%")
            _show(grid[i, j], image, title + (truth if j == 0 else ""), bounds)
        diff = z[i] - x_adv[i]
        scale = max(float(np.abs(diff).max()), 1e-12)
        low, high = bounds
        _show(grid[i, 3], low + (high - low) * (0.5 + 0.5 * diff / scale),
              f"z − x_adv (±{scale:.3f})", bounds)
    return grid


def plot_confidence_shift(before: ArrayLike, after: ArrayLike, ax: Axes | None = None,
                          title: str = "Confidence before and after the search") -> Axes:
    """Histogram of the base model's confidence ‖F(·)‖∞ at the inputs and at the points the
    search returned (the postulate: the search moves points to where F is confident).

    Args:
        before: confidences at the inputs, `(n,)` in [0, 1].
        after: confidences at the search's points, `(n,)`.
        ax: matplotlib Axes; a new figure when None.
        title: axes title.

    Returns:
        The matplotlib Axes.

    Example:
    >>> shell = manidefense.shells.ModelShell(model, manidefense.shells.MCN(delta=0.1))
    >>> before = np.max(keras.ops.softmax(model(x)), axis=-1)
    >>> z, classes, after, reached = shell.search(x)
    >>> ax = manidefense.visualization.plot_confidence_shift(before, after)
    >>> ax.get_xlabel()
    'base model confidence'
    """
    before, after = _finite_array("before", before), _finite_array("after", after)
    if before.ndim != 1 or before.shape != after.shape:
        raise ValueError("Arguments `before` and `after` must be 1-D arrays of the same length. "
                         f"Received: {before.shape} and {after.shape}")
    if ax is None:
        ax = _figure((4.5, 3.2)).add_subplot()
    bins = np.linspace(0, 1, 21)
    ax.hist(before, bins=bins, alpha=0.6, label=f"input (mean {before.mean():.2f})")
    ax.hist(after, bins=bins, alpha=0.6, label=f"after search (mean {after.mean():.2f})")
    ax.set_xlabel("base model confidence")
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return ax
