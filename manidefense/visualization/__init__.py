"""Plots of arrays and reports; never runs a model or an attack. Needs `manidefense[plot]`."""

from manidefense.visualization.images import plot_adversarial_grid

__all__ = ["plot_adversarial_grid"]
