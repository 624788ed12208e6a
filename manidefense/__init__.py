"""manidefense: manifold-based adversarial defenses and honest attacks for Keras 3."""

__version__ = "0.1.0.dev0"

# visualization imports matplotlib only when a figure is drawn, so importing it here is cheap.
from manidefense import (  # noqa: E402
    attacks,
    callbacks,
    certification,
    datasets,
    evaluation,
    layers,
    manifold,
    serving,
    shells,
    stats,
    theory,
    training,
    validation,
    visualization,
    zoo,
)

__all__ = ["attacks", "callbacks", "certification", "datasets", "evaluation", "layers",
           "manifold", "serving", "shells", "stats", "theory", "training", "validation",
           "visualization", "zoo", "__version__"]
