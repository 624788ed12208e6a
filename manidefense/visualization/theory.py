"""Plots of the disentangling lab (`manidefense.theory`): perturbation energy per eigen-direction
and decision boundaries on a plane of two eigenvectors.

They draw arrays computed beforehand (`theory.energy_by_direction`, `theory.boundary_slice`)
and never run a model or an attack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from manidefense.visualization.images import _figure
from manidefense.visualization.rbf import _finite_array

if TYPE_CHECKING:
    from matplotlib.axes import Axes


_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def plot_energy_spectrum(energies: Mapping[str, ArrayLike], eigenvalues: ArrayLike,
                         ax: Axes | None = None, manifold_dim: int | None = None,
                         normalize: bool = True, floor: float = 1e-12,
                         title: str = "Perturbation energy per eigen-direction") -> Axes:
    """One line per attack: the energy of its perturbations along each eigenvector, with the
    eigenvalues on a second log axis (the paper's claim: regular attacks spend their energy
    where the variance is small, generative ones where it is large).

    Args:
        energies: dict name -> `(dim,)` mean squared projection per eigen-direction, ordered
            by decreasing variance (e.g. `theory.energy_by_direction(delta, gm).mean(0)`).
        eigenvalues: `(dim,)` variances in the same order.
        ax: matplotlib Axes; a new figure when None.
        manifold_dim: when given, a vertical line separates the large-variance subspace.
        normalize: draw each attack's share of its total energy instead of raw energy.
        floor: smallest value drawn (exact zeros have no place on a log axis).
        title: axes title.

    Returns:
        The matplotlib Axes of the energies (the eigenvalues are on its twin).

    Example:
    >>> energy = {"PGD-L2": theory.energy_by_direction(x_l2 - x, gm).mean(0),
    ...           "latent": theory.energy_by_direction(x_gen - x, gm).mean(0)}
    >>> ax = plot_energy_spectrum(energy, gm.eigenvalues, manifold_dim=gm.manifold_dim)
    """
    eigenvalues = _finite_array("eigenvalues", eigenvalues)
    if eigenvalues.ndim != 1 or eigenvalues.size == 0 or np.any(eigenvalues <= 0):
        raise ValueError("Argument `eigenvalues` must be a non-empty 1-D array of positive "
                         f"variances. Received: shape {eigenvalues.shape}")
    if not isinstance(energies, dict) or not energies:
        raise ValueError("Argument `energies` must be a non-empty dict name -> (dim,) energies. "
                         f"Received: {type(energies).__name__}")
    index = np.arange(1, eigenvalues.size + 1)
    if ax is None:
        ax = _new_axes((6.0, 3.4))
    for k, (name, energy) in enumerate(energies.items()):
        energy = _finite_array(f"energies[{name!r}]", energy)
        if energy.shape != eigenvalues.shape or np.any(energy < 0):
            raise ValueError(f"Argument `energies[{name!r}]` must hold {eigenvalues.size} "
                             f"non-negative values. Received: shape {energy.shape}")
        if normalize:
            energy = energy / max(energy.sum(), np.finfo(float).tiny)
        ax.plot(index, np.maximum(energy, floor), marker="o", markersize=3,
                color=_COLORS[k % len(_COLORS)], label=str(name))
    ax.set_yscale("log")
    ax.set_xlabel("eigen-direction i (decreasing variance)")
    ax.set_ylabel("energy share" if normalize else "energy")
    if manifold_dim is not None:
        ax.axvline(manifold_dim + 0.5, color="black", linewidth=0.8, linestyle=":")
    twin = ax.twinx()
    twin.step(index, eigenvalues, where="mid", color="#888888", linestyle="--",
              label="eigenvalue λ_i")
    twin.set_yscale("log")
    twin.set_ylabel("eigenvalue λ_i", color="#666666")
    handles = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7)
    ax.set_title(title, fontsize=9)
    return ax


def plot_boundary_slice(grids: Mapping[str, ArrayLike], s: ArrayLike, t: ArrayLike,
                        points: ArrayLike | None = None, labels: ArrayLike | None = None,
                        ax: Axes | None = None, axis_labels: tuple[str, str] = ("u_i", "u_j"),
                        title: str = "Decision boundaries") -> Axes:
    """Decision boundaries of several models on one plane, over scattered samples.

    Args:
        grids: dict name -> values on the grid, indexed `[t, s]`: `(len(t), len(s))` decision
            values (boundary at 0) or `(len(t), len(s), num_classes)` logits (boundary where
            the argmax changes), as returned by `theory.boundary_slice`.
        s: the grid coordinates along the plane's first direction.
        t: the grid coordinates along its second direction.
        points: optional `(n, 2)` coordinates `(s, t)` of samples on the plane.
        labels: optional `(n,)` integer classes colouring the points.
        ax: matplotlib Axes; a new figure when None.
        axis_labels: names of the two directions.
        title: axes title.

    Returns:
        The matplotlib Axes.

    Example:
    >>> s, t, before = theory.boundary_slice(standard, gm, 0, gm.manifold_dim)
    >>> _, _, after = theory.boundary_slice(robust, gm, 0, gm.manifold_dim)
    >>> ax = plot_boundary_slice({"standard": before, "AT": after}, s, t)
    """
    s, t = _finite_array("s", s), _finite_array("t", t)
    if s.ndim != 1 or t.ndim != 1 or s.size < 2 or t.size < 2:
        raise ValueError("Arguments `s` and `t` must be 1-D grids of at least 2 points. "
                         f"Received: shapes {s.shape} and {t.shape}")
    if not isinstance(grids, dict) or not grids:
        raise ValueError("Argument `grids` must be a non-empty dict name -> grid values. "
                         f"Received: {type(grids).__name__}")
    if ax is None:
        ax = _new_axes((5.0, 4.0))
    if points is not None:
        _scatter(ax, points, labels)
    handles = []
    for k, (name, values) in enumerate(grids.items()):
        values, levels = _boundary_field(f"grids[{name!r}]", values, (t.size, s.size))
        color = _COLORS[k % len(_COLORS)]
        if values.min() < levels[-1] and values.max() > levels[0]:
            ax.contour(s, t, values, levels=levels, colors=[color], linewidths=1.5)
        handles.append(_line(color, str(name)))
    ax.set_xlim(s[0], s[-1])
    ax.set_ylim(t[0], t[-1])
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    scattered = ax.get_legend_handles_labels()[0]
    ax.legend(handles=scattered + handles, fontsize=7)
    ax.set_title(title, fontsize=9)
    return ax


def _new_axes(figsize):
    figure = _figure(figsize)
    figure.set_layout_engine("constrained")  # keeps the twin axis' label inside the figure
    return figure.add_subplot()


def _boundary_field(name, values, shape):
    """A scalar field and the contour levels where its model's decision changes."""
    values = _finite_array(name, values)
    if values.shape[:2] != shape or values.ndim not in (2, 3):
        raise ValueError(f"Argument `{name}` must have shape {shape} or {shape} + "
                         f"(num_classes,), indexed [t, s]. Received: shape {values.shape}")
    if values.ndim == 2:
        return values, [0.0]
    if values.shape[-1] == 2:
        return values[..., 1] - values[..., 0], [0.0]
    classes = values.shape[-1]
    return np.argmax(values, axis=-1).astype("float64"), [c + 0.5 for c in range(classes - 1)]


def _scatter(ax, points, labels):
    points = _finite_array("points", points)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError("Argument `points` must have shape (n, 2). "
                         f"Received: shape {points.shape}")
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, color="#555555", alpha=0.5)
        return
    labels = np.asarray(labels)
    if labels.shape != (len(points),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Argument `labels` must be ({len(points)},) integers. "
                         f"Received: dtype {labels.dtype}, shape {labels.shape}")
    palette = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
    for c in np.unique(labels):
        mask = labels == c
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.5,
                   color=palette[int(c) % len(palette)], label=f"class {int(c)}")


def _line(color, label):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, linewidth=1.5, label=label)
