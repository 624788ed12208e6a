"""Auto-PGD: PGD with momentum and a step size that halves itself when progress stalls.

Reference:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (Algorithm 1, Conditions 1 and 2, the checkpoints).
"""

import math
from fractions import Fraction

import keras
import numpy as np
from keras import ops

from manidefense.attacks import norms
from manidefense.attacks.base import Attack, better, select
from manidefense.attacks.compaction import compacting_while_loop
from manidefense.attacks.gradients import value_and_grad
from manidefense.attacks.objectives import is_successful, objective
from manidefense.validation import (
    check_non_negative,
    check_norm,
    check_positive,
    check_positive_int,
)


def checkpoints(num_steps):
    """The iterations `w_j = ceil(p_j * num_steps)` at which APGD may halve its step size.

    `p_0 = 0`, `p_1 = 0.22`, `p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)` while
    `p_j <= 1`. Exact fractions, because `0.22 * 100` is 22.000000000000004 in floats and its
    ceiling would be 23. Checkpoints that coincide for a small `num_steps` are kept once.

    Example:
    >>> checkpoints(100)
    [0, 22, 41, 57, 70, 80, 87, 93, 99]
    """
    num_steps = check_positive_int("num_steps", num_steps)
    points = [0]
    p_prev, p = Fraction(0), Fraction(22, 100)
    while p <= 1:
        w = math.ceil(p * num_steps)
        if w > points[-1]:
            points.append(w)
        p_prev, p = p, p + max(p - p_prev - Fraction(3, 100), Fraction(6, 100))
    return points


def _periods(num_steps):
    """`periods[t] = w_j - w_{j-1}` when iteration t is the checkpoint w_j, else 0."""
    points = checkpoints(num_steps)
    periods = np.zeros(num_steps + 1, dtype=np.int32)
    for previous, w in zip(points, points[1:], strict=False):
        periods[w] = w - previous
    return periods


def should_halve(num_increases, period, f_max, f_max_at_last_check, halved_at_last_check, rho):
    """The per-example step-size test of APGD at a checkpoint `w_j`.

    Condition 1: the loss rose (`f(x_{i+1}) > f(x_i)`) in fewer than `rho * period` of the
    `period = w_j - w_{j-1}` steps since the last checkpoint: the iterates oscillate.
    Condition 2: the step size was not halved at `w_{j-1}` and the best loss has not improved
    since then: the current step size finds nothing.

    Returns:
        A boolean `(batch,)` tensor: halve the step size and restart from the best point.
    """
    condition_1 = ops.cast(num_increases, "float32") < rho * ops.cast(period, "float32")
    condition_2 = ops.logical_and(ops.logical_not(halved_at_last_check),
                                  f_max <= f_max_at_last_check)
    return ops.logical_or(condition_1, condition_2)


def apgd_loop(logits_fn, x, labels, target=None, *, eps, norm, num_steps, rho=0.75, alpha=0.75,
              loss="ce", bounds=(0.0, 1.0), seed=None, stop_early=True):
    """Algorithm 1 of Croce & Hein on a float32 batch, graph-safe.

    One forward and backward pass per iteration: the gradient of each new iterate drives the
    next step, and the gradient of the best point is stored for restarts. With `stop_early`,
    examples leave the batch once they are successful (`compaction.compacting_while_loop`),
    so the work shrinks as the attack wins; an example that is never successful goes through
    the iterates of the full run (up to float rounding: kernels may round differently for a
    smaller batch), and one that leaves keeps its best iterate so far.

    Returns:
        `(x_adv, loss, success, step_size)`: the most damaging iterate per example (success
        first, then loss), its loss and success, and the final per-example step size.
    """
    x = ops.cast(x, "float32")
    column = (-1,) + (1,) * (len(x.shape) - 1)
    periods = ops.convert_to_tensor(_periods(num_steps))
    targeted = target is not None

    def evaluate(z, labels, target):
        logits = logits_fn(z)
        return objective(loss, logits, labels, target), logits

    def project(z, x):
        # P_S: onto the eps-ball around x, then into the box, as the reference code does.
        return norms.clip_to_bounds(x + norms.project(z - x, eps, norm), bounds)

    x0 = norms.clip_to_bounds(x + norms.random_start(ops.shape(x), eps, norm, seed=seed), bounds)
    f0, logits0, g0 = value_and_grad(lambda z: evaluate(z, labels, target), x0)
    s0 = is_successful(logits0, labels, target)
    eta = ops.ones_like(f0) * (2.0 * eps)  # eta^(0) = 2 eps

    def step(t, state):
        (x, labels, target, x_cur, x_prev, f_cur, g_cur, eta, x_max, f_max, g_max, ups, f_last,
         halved_last, x_best, l_best, s_best) = state
        target = target if targeted else None
        # The first step has no previous iterate: x^(1) = P(x^(0) + eta s(grad)), i.e. a = 1.
        a = ops.where(t == 1, 1.0, alpha)
        z = project(x_cur + norms.ascent_step(g_cur, x_cur, ops.reshape(eta, column), norm,
                                               bounds), x)
        x_new = project(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev), x)
        f_new, logits, g_new = value_and_grad(lambda v: evaluate(v, labels, target), x_new)
        success = is_successful(logits, labels, target)
        take = better(f_new, success, l_best, s_best)
        x_best, l_best = select(take, x_new, x_best), ops.where(take, f_new, l_best)
        s_best = ops.logical_or(s_best, success)
        ups = ups + ops.cast(f_new > f_cur, "int32")
        improved = f_new > f_max
        x_max, g_max = select(improved, x_new, x_max), select(improved, g_new, g_max)
        f_max = ops.where(improved, f_new, f_max)

        period = ops.take(periods, t)
        at_check = period > 0
        halve = ops.logical_and(at_check, should_halve(ups, period, f_max, f_last,
                                                       halved_last, rho))
        eta = ops.where(halve, 0.5 * eta, eta)
        x_next, g_next = select(halve, x_max, x_new), select(halve, g_max, g_new)
        f_next = ops.where(halve, f_max, f_new)
        ups = ops.where(at_check, 0, ups)
        f_last = ops.where(at_check, f_max, f_last)
        halved_last = ops.where(at_check, halve, halved_last)
        return (x, labels, target if targeted else labels, x_next, x_cur, f_next, g_next, eta,
                x_max, f_max, g_max, ups, f_last, halved_last, x_best, l_best, s_best)

    # Constant per-example inputs ride along in the state so that they shrink with it; an
    # untargeted run carries `labels` in the target slot (ignored).
    state = (x, labels, target if targeted else labels, x0, x0, f0, g0, eta, x0, f0, g0,
             ops.zeros(ops.shape(f0), "int32"), f0, ops.zeros_like(s0), x0, f0, s0)
    if stop_early:
        state = compacting_while_loop(step, state, lambda s: s[-1], num_steps=num_steps)
    else:
        state = ops.fori_loop(1, num_steps + 1, step, state)
    return state[14], state[15], state[16], state[7]


def _check_at_most_one(name, value, allow_zero):
    value = check_non_negative(name, value) if allow_zero else check_positive(name, value)
    if value > 1:
        raise ValueError(f"Argument `{name}` must be <= 1. Received: {name}={value!r}")
    return value


def _check_apgd_norm(norm):
    norm = check_norm(norm)
    if norm == "l1":
        raise ValueError(
            "Argument `norm` must be 'linf' or 'l2' for APGD: APGD-L1 (Croce & Hein, ICML 2021) "
            "is a different algorithm (adaptive sparsity, L1-box projection) and is not "
            "implemented; use PGD(norm='l1'). Received: norm='l1'"
        )
    return norm


@keras.saving.register_keras_serializable(package="manidefense")
class APGD(Attack):
    """Auto-PGD (APGD-CE, APGD-DLR, APGD-T) in the L∞ or L2 ball (Croce & Hein).

    PGD without a step-size parameter: the step starts at `2 * eps` and is halved per example
    at checkpoints (`checkpoints(num_steps)`) when the loss oscillates (it rose in fewer than
    a fraction `rho` of the steps since the last checkpoint) or stalls (no new best loss
    since an unchanged step size); each halving restarts from the best point found. Steps
    are averaged with the previous displacement (momentum `1 - alpha`). The most damaging
    iterate is returned.

    `loss="dlr"` gives APGD-DLR; a `target` at call time gives APGD-T (with `loss="dlr"` the
    targeted DLR-T loss, which needs four or more classes). Examples leave the batch once
    they are successful, so the attack costs less the more it wins; an example it never
    breaks runs every iteration, as in a full run.

    Args:
        eps: perturbation budget in `norm`, in the units of `bounds`.
        norm: `"linf"` (steps along the gradient sign) or `"l2"` (along the normalized
            gradient). APGD-L1 is a different algorithm and is rejected.
        num_steps: iterations `N_iter`; one forward and backward pass each, plus one at the start.
        rho: Condition 1 threshold: the fraction of steps that must raise the loss.
        alpha: weight of the new step against the previous displacement (1 = no momentum).
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> attack = manidefense.attacks.APGD(eps=8 / 255, loss="dlr", num_steps=100, seed=0)
    >>> x_adv = attack(model, x, y)
    >>> x_adv_t = attack(model, x, y, target=(y + 1) % 10)  # APGD-T

    Reference:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
        diverse parameter-free attacks", ICML 2020: Algorithm 1, Conditions 1-2, the DLR loss.
    """

    def __init__(self, eps: float = 0.1, norm: str = "linf", num_steps: int = 100,
                 rho: float = 0.75, alpha: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        self.eps = check_non_negative("eps", eps)
        self.norm = _check_apgd_norm(norm)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.rho = _check_at_most_one("rho", rho, allow_zero=True)
        self.alpha = _check_at_most_one("alpha", alpha, allow_zero=False)

    def _attack_batch(self, logits_fn, x, labels, target):
        return apgd_loop(
            logits_fn, x, labels, target, eps=self.eps, norm=self.norm,
            num_steps=self.num_steps, rho=self.rho, alpha=self.alpha, loss=self.loss,
            bounds=self.bounds, seed=self._seed_generator,
        )[0]
