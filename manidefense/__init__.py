"""manidefense: manifold-based adversarial defenses and honest attacks for Keras 3."""

__version__ = "0.1.0.dev0"

# visualization imports matplotlib only when a figure is drawn, so importing it here is cheap.
from manidefense import attacks, datasets, validation, visualization, zoo  # noqa: E402

__all__ = ["attacks", "datasets", "validation", "visualization", "zoo", "__version__"]
