"""Certified accuracy against the L2 radius (Cohen et al.'s Fig. and Table VI of RBF-CNN)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from manidefense.certification import average_certified_radius, certified_accuracy
from manidefense.visualization.images import _figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_certified_accuracy(results: Mapping[str, tuple[ArrayLike, ArrayLike]], labels: ArrayLike,
                            ax: Axes | None = None, max_radius: float | None = None,
                            title: str | None = None) -> Axes:
    """Certified accuracy as a function of the radius, one step curve per certification.

    Args:
        results: `{name: (classes, radii)}`, the outputs of `SmoothedClassifier.certify`
            (e.g. one entry per σ or per model); the legend shows each curve's ACR.
        labels: the true labels of the certified points (shared by all entries).
        ax: matplotlib Axes to draw on; a new figure when None.
        max_radius: right end of the x axis (default: the largest radius, +10%).
        title: axes title.

    Returns:
        The matplotlib Axes.

    Example:
    >>> ax = plot_certified_accuracy({"σ = 0.25": smoothed.certify(x, 100, 10_000)}, y)
    """
    if not results:
        raise ValueError("Argument `results` must hold at least one (classes, radii) pair. "
                         "Received: an empty mapping")
    largest = max(float(np.max(radii)) for _, radii in results.values())
    end = max_radius if max_radius is not None else max(1.1 * largest, 0.1)
    grid = np.linspace(0.0, end, 400)
    if ax is None:
        ax = _figure((4.5, 3.2)).add_subplot()
    for name, (classes, radii) in results.items():
        curve = certified_accuracy(radii, classes, labels, grid)
        acr = average_certified_radius(radii, classes, labels)
        ax.step(grid, 100 * curve, where="post", label=f"{name} (ACR {acr:.3f})")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_xlim(0, end)
    ax.set_ylim(0, 100)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax
