"""manidefense: manifold-based adversarial defenses and honest attacks for Keras 3."""

__version__ = "0.1.0.dev0"

from manidefense import attacks, datasets, validation, zoo  # noqa: E402

__all__ = ["attacks", "datasets", "validation", "zoo", "__version__"]
