"""Attacks: `attack(model, x, y, target=None) -> x_adv`, one compiled graph per batch."""

from manidefense.attacks import norms, objectives
from manidefense.attacks.adaptive import BPDA, EoT, adaptive_model
from manidefense.attacks.apgd import APGD
from manidefense.attacks.base import Attack
from manidefense.attacks.carlini_wagner import CarliniWagnerL2, CarliniWagnerLinf
from manidefense.attacks.ead import EAD
from manidefense.attacks.fgsm import FGSM
from manidefense.attacks.latent import GenerativeAttack, GenerativeExamples, LatentPGD
from manidefense.attacks.mifgsm import MIFGSM
from manidefense.attacks.noise import UniformNoise
from manidefense.attacks.pgd import PGD, projected_gradient_descent
from manidefense.attacks.spsa import SPSA
from manidefense.attacks.square import Square
from manidefense.attacks.unforeseen import (
    JPEG,
    Elastic,
    Fog,
    Gabor,
    Snow,
    Spatial,
    StAdv,
    corrupt,
)
from manidefense.attacks.wrappers import RunnerUpTargets, Transfer

__all__ = ["APGD", "Attack", "BPDA", "CarliniWagnerL2", "CarliniWagnerLinf", "EAD", "Elastic",
           "EoT", "FGSM", "Fog", "Gabor", "GenerativeAttack", "GenerativeExamples", "JPEG",
           "LatentPGD", "MIFGSM", "PGD", "RunnerUpTargets",
           "SPSA", "Snow", "Spatial", "Square", "StAdv", "Transfer", "UniformNoise",
           "adaptive_model", "corrupt", "norms", "objectives", "projected_gradient_descent"]
