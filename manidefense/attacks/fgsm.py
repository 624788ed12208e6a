"""Fast gradient (sign) method: one steepest-ascent step of length eps.

Reference:
    Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
"""

import keras

from manidefense.attacks.pgd import PGD


@keras.saving.register_keras_serializable(package="manidefense")
class FGSM(PGD):
    """One gradient step of length `eps` in `norm` from the clean input (FGSM for L∞, FGM for L2).

    It returns the stepped point itself (not the best of clean and stepped), as fast
    adversarial training expects.

    Args:
        eps: perturbation budget in `norm`, in the units of `bounds`.
        norm: `"linf"`, `"l2"` or `"l1"` (L1 uses the sparse SLIDE step).
        l1_sparsity: see `PGD`.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.FGSM(eps=0.1)(model, x, y)
    """

    _keep_best = False

    def __init__(self, eps: float = 0.1, norm: str = "linf", l1_sparsity: float = 0.99, **kwargs):
        super().__init__(eps=eps, norm=norm, step_size=None, num_steps=1, random_start=False,
                         l1_sparsity=l1_sparsity, **kwargs)

    def _default_step_size(self):
        return self.eps
