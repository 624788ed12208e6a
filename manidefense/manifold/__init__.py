"""Manifold machinery shared by the defenses: patches, the non-parametric EM."""

from manidefense.manifold import em, patches

__all__ = ["em", "patches"]
