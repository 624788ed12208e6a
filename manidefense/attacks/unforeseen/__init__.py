"""Unforeseen attacks: optimised fog, snow, Gabor noise, elastic warps, JPEG, spatial, StAdv.

Each optimises its own transform's hidden variables with the library's one PGD loop;
`corrupt` applies the same transforms at random, fixed strength. Each attack is its own threat
model (`threat_model`, `eps_units`): never mixed into an Lp worst case.
"""

from manidefense.attacks.unforeseen.base import UnforeseenAttack, bilinear_sample
from manidefense.attacks.unforeseen.corrupt import KINDS, SEVERITIES, corrupt, corruption
from manidefense.attacks.unforeseen.fog import Fog
from manidefense.attacks.unforeseen.gabor import Gabor
from manidefense.attacks.unforeseen.jpeg import JPEG
from manidefense.attacks.unforeseen.snow import Snow
from manidefense.attacks.unforeseen.spatial import Spatial
from manidefense.attacks.unforeseen.warp import Elastic, StAdv

__all__ = ["Elastic", "Fog", "Gabor", "JPEG", "KINDS", "SEVERITIES", "Snow", "Spatial", "StAdv",
           "UnforeseenAttack", "bilinear_sample", "corrupt", "corruption"]
