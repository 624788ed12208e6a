"""Reference architectures: small classifiers and the generators the manifold defenses use."""

from manidefense.zoo.classifiers import small_cnn
from manidefense.zoo.generators import DCGAN, VAE
from manidefense.zoo.style import StyleGenerator

__all__ = ["DCGAN", "VAE", "StyleGenerator", "small_cnn"]
