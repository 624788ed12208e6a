"""Small exact models for checking claims: the disentangling lab (Gaussian mixtures)."""

from manidefense.theory.gaussian_mixture import GaussianMixture, LinearGenerator
from manidefense.theory.mixture_analysis import (
    affine_weights,
    bayes_classifier,
    boundary_margin,
    boundary_shift,
    boundary_slice,
    energy_by_direction,
    energy_split,
    generative_attack,
    logistic_regression,
    mlp,
    optimal_l2_perturbation,
    regular_attack,
    robust_accuracy_matrix,
    train_classifier,
    training_attacks,
)

__all__ = ["GaussianMixture", "LinearGenerator", "affine_weights", "bayes_classifier",
           "boundary_margin", "boundary_shift", "boundary_slice", "energy_by_direction",
           "energy_split", "generative_attack", "logistic_regression", "mlp",
           "optimal_l2_perturbation", "regular_attack", "robust_accuracy_matrix",
           "train_classifier", "training_attacks"]
