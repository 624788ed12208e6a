"""Certified robustness by randomized smoothing (Cohen, Rosenfeld & Kolter 2019).

- `SmoothedClassifier`: PREDICT, CERTIFY, vote frequencies as a Keras model, and Gaussian
  data augmentation through `fit`.
- `certified_accuracy`, `average_certified_radius`: the curves and the ACR of a certification.
"""

from manidefense.certification.curves import average_certified_radius, certified_accuracy
from manidefense.certification.smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    max_certifiable_radius,
)

__all__ = ["ABSTAIN", "SmoothedClassifier", "average_certified_radius", "certified_accuracy",
           "max_certifiable_radius"]
