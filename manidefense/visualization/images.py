"""Image grids of clean inputs, adversarial examples and their differences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike


def _figure(figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(
            "Plotting needs matplotlib: `pip install manidefense[plot]`."
        ) from err
    # A bare Figure needs no GUI backend, so library code never opens a window.
    return Figure(figsize=figsize)


def _show(ax, image, title, cmap=None, limits=(0.0, 1.0)):
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
        cmap = cmap or "gray"
    ax.imshow(image, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_adversarial_grid(x: ArrayLike, adversarials: Mapping[str, ArrayLike],
                          labels: ArrayLike | None = None,
                          predictions: Mapping[str, ArrayLike] | None = None,
                          class_names: Sequence[str] | None = None, num_examples: int = 6,
                          bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Draws clean inputs, then for each attack its adversarial example and the difference.

    Args:
        x: clean inputs, `(n, H, W, C)` within `bounds`.
        adversarials: dict `{attack name: x_adv}`, each shaped like `x`.
        labels: optional true labels `(n,)`, shown above the clean images.
        predictions: optional dict `{name: predicted labels}` with `"clean"` and attack names.
        class_names: optional sequence mapping labels to names.
        num_examples: rows to draw (the first `num_examples` examples).
        bounds: value range of the images.

    Returns:
        A 2-D numpy array of matplotlib Axes (rows = examples); `axes.flat[0].figure`
        is the figure to save.

    Example:
    >>> axes = plot_adversarial_grid(x, {"PGD-Linf": x_adv}, labels=y)
    >>> axes.flat[0].figure.savefig("grid.png")
    """
    x = np.asarray(x)
    rows = min(int(num_examples), len(x))
    names = list(adversarials)
    cols = 1 + 2 * len(names)
    figure = _figure((1.3 * cols, 1.45 * rows))
    axes = np.array(figure.subplots(rows, cols, squeeze=False))
    predictions = predictions or {}

    def name_of(label):
        return str(class_names[label]) if class_names is not None else str(label)

    for i in range(rows):
        title = "clean"
        if labels is not None:
            title += f"\n{name_of(int(labels[i]))}"
        if "clean" in predictions:
            title += f" → {name_of(int(predictions['clean'][i]))}"
        _show(axes[i, 0], x[i], title, limits=bounds)
        for j, name in enumerate(names):
            x_adv = np.asarray(adversarials[name])
            title = name
            if name in predictions:
                title += f"\n→ {name_of(int(predictions[name][i]))}"
            _show(axes[i, 1 + 2 * j], x_adv[i], title, limits=bounds)
            diff = (x_adv[i] - x[i]).mean(axis=-1)
            scale = max(float(np.abs(diff).max()), 1e-8)
            _show(axes[i, 2 + 2 * j], diff, f"diff ±{scale:.2g}", cmap="seismic",
                  limits=(-scale, scale))
    figure.tight_layout()
    return axes
