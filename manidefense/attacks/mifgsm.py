"""Momentum iterative FGSM.

Reference:
    Dong, Liao, Pang, Su, Zhu, Hu, Li, "Boosting Adversarial Attacks with Momentum", CVPR 2018.
"""

import keras

from manidefense.attacks.pgd import PGD
from manidefense.validation import check_non_negative


@keras.saving.register_keras_serializable(package="manidefense")
class MIFGSM(PGD):
    """Iterative gradient attack with a momentum of L1-normalised gradients (Dong et al.).

    `g_{t+1} = decay * g_t + grad / mean(|grad|)`, then a steepest-ascent step along
    `g_{t+1}` of length `step_size` (default `eps / num_steps`, the paper's choice), projected
    onto the eps-ball. Momentum stabilises the direction, which helps transfer to other models.

    Args:
        eps: perturbation budget in `norm`, in the units of `bounds`.
        norm: `"linf"`, `"l2"` or `"l1"`.
        step_size: step length; default `eps / num_steps`.
        num_steps: iterations.
        decay: momentum decay factor μ (1.0 in the paper).
        random_start: start from a random point of the ball (off in the paper).
        l1_sparsity: see `PGD`.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.MIFGSM(eps=0.1, num_steps=10)(model, x, y)
    """

    def __init__(self, eps: float = 0.1, norm: str = "linf", step_size: float | None = None,
                 num_steps: int = 10, decay: float = 1.0, random_start: bool = False,
                 l1_sparsity: float = 0.99, **kwargs):
        super().__init__(eps=eps, norm=norm, step_size=step_size, num_steps=num_steps,
                         random_start=random_start, l1_sparsity=l1_sparsity, **kwargs)
        self.decay = check_non_negative("decay", decay)

    @property
    def _momentum(self):
        return self.decay

    def _default_step_size(self):
        return self.eps / self.num_steps
