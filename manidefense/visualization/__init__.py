"""Plots of arrays and reports; never runs a model or an attack. Needs `manidefense[plot]`."""

from manidefense.visualization.certification import plot_certified_accuracy
from manidefense.visualization.generative import (
    plot_generative_examples,
    plot_iterations_histogram,
)
from manidefense.visualization.images import plot_adversarial_grid
from manidefense.visualization.rbf import (
    plot_beta2_tradeoff,
    plot_rbf_filters,
    plot_reconstructions,
)
from manidefense.visualization.robustness import plot_attack_bars, plot_security_curve
from manidefense.visualization.shells import plot_confidence_shift, plot_shell_search
from manidefense.visualization.theory import plot_boundary_slice, plot_energy_spectrum
from manidefense.visualization.unforeseen import plot_accuracy_vs_eps, plot_unforeseen_grid

__all__ = ["plot_accuracy_vs_eps", "plot_adversarial_grid", "plot_attack_bars",
           "plot_beta2_tradeoff",
           "plot_boundary_slice", "plot_certified_accuracy", "plot_confidence_shift",
           "plot_energy_spectrum", "plot_generative_examples", "plot_iterations_histogram",
           "plot_rbf_filters", "plot_reconstructions",
           "plot_security_curve", "plot_shell_search", "plot_unforeseen_grid"]
