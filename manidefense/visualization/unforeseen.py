"""Plots of unforeseen attacks: example grids at increasing eps and accuracy-vs-eps curves.

They take arrays computed elsewhere (the attacks run in `manidefense.attacks`, the scores in
`manidefense.evaluation.uar`) and never run a model.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from manidefense.validation import check_bounds, check_positive_int
from manidefense.visualization.images import _figure, _show

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_unforeseen_grid(x: ArrayLike, examples: Mapping[str, Mapping[float, ArrayLike]],
                         num_examples: int = 3,
                         bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Clean images, each attack's adversarial examples at increasing eps, and the differences.

    The analogue of Fig. 5 of the DMAT paper (Lin et al., 2020). Each example takes a block
    of two rows: the top row holds the clean image, then for every attack (in the order of
    `examples`) its adversarial images by increasing eps; the row below holds the difference
    `x_adv - x` under each (the channel mean for colour images), in a diverging colormap with
    limits `±max|x_adv - x|` over that attack's panels of the block, written in the title.

    Args:
        x: clean images `(n, H, W, C)` with C = 1 or 3, within `bounds`.
        examples: `{attack name: {eps: x_adv}}`, each `x_adv` shaped like `x`.
        num_examples: number of row blocks (the first examples of `x`).
        bounds: value range of the images.

    Returns:
        A 2-D numpy array of matplotlib Axes, `(2 * num_examples, 1 + number of (attack, eps)
        pairs)`; `axes.flat[0].figure.savefig(...)` saves the figure.

    Raises:
        ValueError: if `x` is not a batch of 1- or 3-channel images, `examples` is empty, an
            eps is not a number, or an `x_adv` is not shaped like `x`.

    Example:
    >>> axes = plot_unforeseen_grid(x, {"fog": {0.25: x_fog1, 0.5: x_fog2}}, num_examples=2)
    >>> axes.flat[0].figure.savefig("unforeseen.png")
    """
    x = _images(x)
    bounds = check_bounds(bounds)
    rows = min(check_positive_int("num_examples", num_examples), len(x))
    columns = _columns(x, examples)
    figure = _figure((1.2 * (1 + len(columns)), 2.6 * rows))
    axes = np.array(figure.subplots(2 * rows, 1 + len(columns), squeeze=False))
    for i in range(rows):
        top, bottom = axes[2 * i], axes[2 * i + 1]
        _show(top[0], _unit(x[i], bounds), "clean")
        bottom[0].axis("off")
        diffs = [(x_adv[i] - x[i]).mean(axis=-1) for _, _, x_adv in columns]
        scales = {}
        for (name, _, _), diff in zip(columns, diffs, strict=True):
            scales[name] = max(scales.get(name, 1e-8), float(np.abs(diff).max()))
        for j, ((name, eps, x_adv), diff) in enumerate(zip(columns, diffs, strict=True)):
            _show(top[1 + j], _unit(x_adv[i], bounds), f"{name}\neps={eps:g}")
            scale = scales[name]
            _show(bottom[1 + j], diff, f"diff ±{scale:.2g}", cmap="seismic",
                  limits=(-scale, scale))
    figure.tight_layout()
    return axes


def plot_accuracy_vs_eps(curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
                         ata: Mapping[str, ArrayLike | None] | None = None,
                         ax: Axes | None = None) -> Axes:
    """Accuracy against the calibrated eps index k = 1..6, one line per attack.

    Each attack's eps are in its own units (pixels of flow, JPEG quantization steps, L∞ on
    [0, 1], ...), so the x axis is the index k and the legend lists each attack's eps values.

    Args:
        curves: `{attack name: (eps values, accuracies)}`, accuracies as fractions in [0, 1].
        ata: optional `{attack name: ATA values}` (one per eps of that attack; None skips
            the attack), drawn dashed in the attack's colour.
        ax: matplotlib Axes to draw on; a new figure when None.

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: if `curves` is empty, a curve's eps and accuracies differ in length, an
            accuracy is not a fraction, or `ata` names an unknown attack or has the wrong
            length.

    Example:
    >>> ax = plot_accuracy_vs_eps({"elastic": ([.125, .25, .5, 1, 2, 8],
    ...                                        [.8, .7, .6, .5, .4, .2])})
    >>> ax.figure.savefig("accuracy_vs_eps.png")
    """
    if not isinstance(curves, dict) or not curves:
        raise ValueError("Argument `curves` must be a non-empty dict {attack name: (eps, "
                         f"accuracies)}}. Received: curves={curves!r}")
    ata = {} if ata is None else dict(ata)
    unknown = sorted(set(map(str, ata)) - set(map(str, curves)))
    if unknown:
        raise ValueError(f"Argument `ata` names attacks missing from `curves`: {unknown}. "
                         f"Expected a subset of {list(curves)}")
    created = ax is None
    if created:
        ax = _figure((5.0, 3.4)).add_subplot()
    longest = 1
    for name, curve in curves.items():
        eps, accuracy = _curve(name, curve)
        k = np.arange(1, len(eps) + 1)
        longest = max(longest, len(eps))
        values = ", ".join(f"{e:g}" for e in eps)
        (line,) = ax.plot(k, accuracy, marker="o", label=f"{name} (eps {values})")
        if ata.get(name) is not None:
            reference = _fractions(f"ata[{name!r}]", ata[name])
            if reference.size != len(eps):
                raise ValueError(f"Argument `ata[{name!r}]` must hold one value per eps "
                                 f"({len(eps)}). Received: {reference.size} values")
            ax.plot(k, reference, linestyle="--", color=line.get_color(), label=f"{name} ATA")
    ax.set_xticks(np.arange(1, longest + 1))
    ax.set_xlabel("calibrated eps index k")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    # Outside the axes: with several attacks an inside legend hides the curves.
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    if created:
        ax.figure.tight_layout()
    return ax


def _images(x):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number) or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError("Argument `x` must be a batch of images (n, H, W, C) with C = 1 or 3. "
                         f"Received: x.shape={x.shape}, x.dtype={x.dtype}")
    if len(x) == 0:
        raise ValueError(f"Argument `x` must hold at least one image. Received: x.shape={x.shape}")
    return x.astype(np.float64)


def _columns(x, examples):
    """`(attack, eps, x_adv)` triples, attacks in the given order, eps ascending."""
    if not isinstance(examples, dict) or not examples:
        raise ValueError("Argument `examples` must be a non-empty dict {attack name: {eps: "
                         f"x_adv}}}}. Received: examples={examples!r}")
    columns = []
    for name, by_eps in examples.items():
        if not isinstance(by_eps, dict) or not by_eps:
            raise ValueError(f"Argument `examples[{name!r}]` must be a non-empty dict {{eps: "
                             f"x_adv}}. Received: {type(by_eps).__name__}")
        for eps in by_eps:
            if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
                raise ValueError(f"Argument `examples[{name!r}]` must be keyed by numeric eps. "
                                 f"Received: eps={eps!r}")
        for eps in sorted(by_eps):
            x_adv = np.asarray(by_eps[eps], dtype=np.float64)
            if x_adv.shape != x.shape:
                raise ValueError(f"Argument `examples[{name!r}][{eps!r}]` must be shaped like "
                                 f"`x` {x.shape}. Received: shape {x_adv.shape}")
            columns.append((str(name), float(eps), x_adv))
    return columns


def _unit(image, bounds):
    """Maps an image to [0, 1]: imshow ignores vmin/vmax for RGB arrays."""
    low, high = bounds
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def _curve(name, curve):
    try:
        eps, accuracy = curve
    except (TypeError, ValueError):
        raise ValueError(f"Argument `curves[{name!r}]` must be a pair (eps values, "
                         f"accuracies). Received: {curve!r}") from None
    eps = _numbers(f"curves[{name!r}] eps values", eps)
    accuracy = _fractions(f"curves[{name!r}] accuracies", accuracy)
    if eps.size == 0 or eps.size != accuracy.size:
        raise ValueError(f"Argument `curves[{name!r}]` must pair each eps with one accuracy. "
                         f"Received: {eps.size} eps and {accuracy.size} accuracies")
    return eps, accuracy


def _numbers(name, values):
    try:
        return np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"Argument `{name}` must hold numbers. Received: {values!r}") from None


def _fractions(name, values):
    values = _numbers(name, values)
    if not np.all(np.isfinite(values)) or np.any((values < 0) | (values > 1)):
        raise ValueError(f"Argument `{name}` must hold fractions in [0, 1] (not percents). "
                         f"Received: {values.tolist()}")
    return values
