"""Uniform random noise in the eps-ball: the checklist's sanity baseline (E14).

A gradient attack must find at least every adversarial example that random sampling finds;
when noise wins, the gradient is uninformative and the defense is masking it.
"""

import keras
from keras import ops

from manidefense.attacks import norms
from manidefense.attacks.base import Attack, better, select
from manidefense.attacks.objectives import is_successful, objective
from manidefense.validation import check_non_negative, check_norm, check_positive_int


@keras.saving.register_keras_serializable(package="manidefense")
class UniformNoise(Attack):
    """Draws `num_samples` uniform points of the eps-ball per example and keeps the most
    damaging one (a misclassified draw first, then the highest loss). Never reads gradients.

    Args:
        eps: budget in `norm`, in the units of `bounds`.
        norm: `"linf"`, `"l2"` or `"l1"`.
        num_samples: random draws per example.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_noisy = manidefense.attacks.UniformNoise(eps=0.1, num_samples=10, seed=0)(model, x, y)
    """

    uses_gradients = False

    def __init__(self, eps: float = 0.1, norm: str = "linf", num_samples: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.eps = check_non_negative("eps", eps)
        self.norm = check_norm(norm)
        self.num_samples = check_positive_int("num_samples", num_samples)

    def _attack_batch(self, logits_fn, x, labels, target):
        batch = ops.shape(x)[0]

        def draw(i, state):
            bx, bl, bs = state
            delta = norms.random_start(ops.shape(x), self.eps, self.norm, seed=self._seed_generator)
            z = norms.clip_to_bounds(x + delta, self.bounds)
            logits = logits_fn(z)
            value, success = objective(self.loss, logits, labels, target), is_successful(
                logits, labels, target)
            take = better(value, success, bl, bs)
            return select(take, z, bx), ops.where(take, value, bl), ops.logical_or(bs, success)

        state = (x, ops.full((batch,), float("-inf")), ops.zeros((batch,), dtype="bool"))
        return ops.fori_loop(0, self.num_samples, draw, state)[0]
