"""Manifold machinery shared by the defenses: patches, the non-parametric EM, and projection
onto a generator's manifold (with the on-manifold dataset built from it)."""

from manidefense.manifold import em, patches, projection
from manidefense.manifold.projection import (
    OnManifoldData,
    Projection,
    build_on_manifold_dataset,
    project,
)

__all__ = ["OnManifoldData", "Projection", "build_on_manifold_dataset", "em", "patches", "project",
           "projection"]
