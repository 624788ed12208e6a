"""Training procedures written as `train_step`s, so `fit`, callbacks, `tf.data` and
`tf.distribute` work unchanged."""

from manidefense.training.dual_manifold import DualManifoldTrainer
from manidefense.training.generative import GenerativeAdversarialTrainer

__all__ = ["DualManifoldTrainer", "GenerativeAdversarialTrainer"]
