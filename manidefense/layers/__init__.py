"""Defense layers: RBF-CNN's RBF and reconstruction layers and the defended-model builder."""

from manidefense.layers.defense import RepeatSamples, SampleAverage, rbf_defense
from manidefense.layers.rbf import RBFLayer
from manidefense.layers.reconstruction import TEST_BETA1, TRAIN_BETA1, ReconstructionLayer

__all__ = ["RBFLayer", "ReconstructionLayer", "RepeatSamples", "SampleAverage", "TEST_BETA1",
           "TRAIN_BETA1", "rbf_defense"]
