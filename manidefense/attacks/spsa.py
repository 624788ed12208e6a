"""SPSA: gradient-free projected Adam on finite-difference gradient estimates.

Reference:
    Uesato, O'Donoghue, van den Oord, Kohli, "Adversarial Risk and the Dangers of Evaluating
    Against Weak Attacks", ICML 2018, Algorithm 1 (SPSA with Adam), and CleverHans' `spsa`.
"""

import math

import keras
import numpy as np
from keras import ops, random

from manidefense.attacks import norms
from manidefense.attacks.base import Attack, better, select
from manidefense.attacks.objectives import is_successful, objective
from manidefense.validation import (
    check_non_negative,
    check_norm,
    check_positive,
    check_positive_int,
)

# Adam's constants as in CleverHans' SPSAAdam (the Keras defaults).
_BETA_1, _BETA_2, _ADAM_EPSILON = 0.9, 0.999, 1e-7
# Upper bound on the input floats of one forward pass; larger estimates run in chunks.
_MAX_ELEMENTS = 2**24


def samples_per_chunk(num_samples, batch_size, num_features):
    """Directions evaluated per forward pass so that one pass holds at most `_MAX_ELEMENTS`."""
    fits = _MAX_ELEMENTS // max(2 * batch_size * num_features, 1)
    return max(1, min(num_samples, fits))


def spsa_gradient(evaluate, x, *, perturbation_size, num_samples, chunk, seed):
    """SPSA estimate of the gradient of `evaluate` (per example) at the batch `x`.

    `mean_k v_k * (L(x + c v_k) - L(x - c v_k)) / (2c)` over `num_samples` Rademacher
    directions `v_k` per example, all evaluated in batched forward passes of `chunk`
    directions each (the last chunk's surplus directions get weight zero). As in CleverHans,
    the points `x ± c v` are not clipped to the bounds, which would bias the difference.
    """
    batch, feature_shape = ops.shape(x)[0], tuple(x.shape[1:])
    num_chunks = math.ceil(num_samples / chunk)

    def add_chunk(n, total):
        v = ops.cast(random.randint((chunk, batch) + feature_shape, 0, 2, seed=seed), "float32")
        v = 2.0 * v - 1.0
        points = ops.concatenate([x[None] + perturbation_size * v, x[None] - perturbation_size * v])
        values = ops.reshape(evaluate(ops.reshape(points, (-1,) + feature_shape)),
                             (2, chunk, batch))
        weight = ops.cast(n * chunk + ops.arange(chunk) < num_samples, "float32")[:, None]
        slope = (values[0] - values[1]) / (2.0 * perturbation_size) * weight
        return total + ops.sum(ops.reshape(slope, (chunk, -1) + (1,) * len(feature_shape)) * v,
                               axis=0)

    return ops.fori_loop(0, num_chunks, add_chunk, ops.zeros_like(x)) / num_samples


def spsa_loop(logits_fn, x, labels, target=None, *, eps, norm, num_steps, step_size,
              perturbation_size, num_samples, chunk, loss="margin", bounds=(0.0, 1.0),
              seed=None):
    """SPSA on one float32 batch, graph-safe; returns `(x_adv, loss, success)`.

    From a uniform random start in the eps-ball, each step estimates the gradient of the
    objective by SPSA, takes an Adam ascent step of learning rate `step_size`, projects onto
    the eps-ball and clips to `bounds`. The most damaging point seen (the clean input
    included) is returned; the loop stops early once every example is successful.
    """
    x = ops.cast(x, "float32")
    tile = 2 * chunk

    def evaluate(z):
        logits = logits_fn(z)
        return objective(loss, logits, labels, target), is_successful(logits, labels, target)

    def evaluate_tiled(z):  # the labels of `chunk` directions at ±c, in `spsa_gradient` order
        tiled_target = None if target is None else ops.tile(target, (tile,))
        return objective(loss, logits_fn(z), ops.tile(labels, (tile,)), tiled_target)

    def constrain(z):
        return norms.clip_to_bounds(x + norms.project(z - x, eps, norm), bounds)

    def cond(i, xk, m, u, bx, bl, bs):
        return ops.logical_and(i < num_steps, ops.logical_not(ops.all(bs)))

    def body(i, xk, m, u, bx, bl, bs):
        g = spsa_gradient(evaluate_tiled, xk, perturbation_size=perturbation_size,
                          num_samples=num_samples, chunk=chunk, seed=seed)
        t = ops.cast(i + 1, "float32")
        m = _BETA_1 * m + (1.0 - _BETA_1) * g
        u = _BETA_2 * u + (1.0 - _BETA_2) * ops.square(g)
        m_hat, u_hat = m / (1.0 - _BETA_1**t), u / (1.0 - _BETA_2**t)
        # Ascent: the objective is maximised (CleverHans minimises its negation).
        xk = constrain(xk + step_size * m_hat / (ops.sqrt(u_hat) + _ADAM_EPSILON))
        value, success = evaluate(xk)
        take = better(value, success, bl, bs)
        return (i + 1, xk, m, u, select(take, xk, bx), ops.where(take, value, bl),
                ops.logical_or(bs, success))

    x0 = constrain(x + norms.random_start(ops.shape(x), eps, norm, seed=seed))
    clean_loss, clean_success = evaluate(x)
    zeros = ops.zeros_like(x)
    state = (ops.convert_to_tensor(0), x0, zeros, zeros, x, clean_loss, clean_success)
    _, _, _, _, bx, bl, bs = ops.while_loop(cond, body, state)
    return bx, bl, bs


@keras.saving.register_keras_serializable(package="manidefense")
class SPSA(Attack):
    """SPSA attack: projected Adam on gradients estimated from model outputs only.

    Useful when gradients are missing, zero or misleading (quantisation, non-differentiable
    preprocessing, gradient masking): it needs only the model's logits. Each step costs
    `2 * num_samples` model evaluations per example, batched into large forward passes.

    Args:
        eps: perturbation budget in `norm`, in the units of `bounds`.
        norm: `"linf"` (the paper's), `"l2"` or `"l1"` (projection by `norms.project`).
        num_steps: Adam steps per restart (stops early once every example is broken).
        step_size: Adam's learning rate.
        perturbation_size: finite-difference half-width c: each direction is evaluated at
            `x ± c v`, v in {-1, +1}^d. It must exceed the input quantisation step.
        num_samples: random directions per example and step (CleverHans' `spsa_samples=128`
            counts evaluations, i.e. 64 directions).
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss` (default `"margin"`, the
            logit difference of the paper and CleverHans), `seed`, `verbose`, `jit_compile`,
            `output` of `Attack`.

    Example:
    >>> attack = manidefense.attacks.SPSA(eps=0.1, num_steps=100, seed=0)
    >>> x_adv = attack(model, x, y)

    Reference:
        Uesato et al., ICML 2018, Algorithm 1 (SPSA gradient estimate with Adam updates).
    """

    uses_gradients = False  # queries outputs only (the evaluation audits it as such)

    def __init__(self, eps: float = 0.1, norm: str = "linf", num_steps: int = 100,
                 step_size: float = 0.01, perturbation_size: float = 0.01, num_samples: int = 128,
                 **kwargs):
        kwargs.setdefault("loss", "margin")
        super().__init__(**kwargs)
        self.eps = check_non_negative("eps", eps)
        self.norm = check_norm(norm)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.step_size = check_positive("step_size", step_size)
        self.perturbation_size = check_positive("perturbation_size", perturbation_size)
        self.num_samples = check_positive_int("num_samples", num_samples)

    def _attack_batch(self, logits_fn, x, labels, target):
        if self.eps == 0:
            return x
        batch = x.shape[0] or self.batch_size
        chunk = samples_per_chunk(self.num_samples, batch, int(np.prod(x.shape[1:])))
        return spsa_loop(
            logits_fn, x, labels, target, eps=self.eps, norm=self.norm,
            num_steps=self.num_steps, step_size=self.step_size,
            perturbation_size=self.perturbation_size, num_samples=self.num_samples,
            chunk=chunk, loss=self.loss, bounds=self.bounds, seed=self._seed_generator,
        )[0]
