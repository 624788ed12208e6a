"""Attacks: `attack(model, x, y, target=None) -> x_adv`, one compiled graph per batch."""

from manidefense.attacks import norms, objectives
from manidefense.attacks.base import Attack
from manidefense.attacks.fgsm import FGSM
from manidefense.attacks.mifgsm import MIFGSM
from manidefense.attacks.pgd import PGD, projected_gradient_descent

__all__ = ["Attack", "FGSM", "MIFGSM", "PGD", "norms", "objectives", "projected_gradient_descent"]
