"""Reference architectures: small classifiers now; generators arrive with their defenses."""

from manidefense.zoo.classifiers import small_cnn

__all__ = ["small_cnn"]
