"""Projected gradient descent: the one gradient loop behind PGD, FGSM and MI-FGSM.

Reference:
    Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018.
"""

import math

import keras
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense.attacks import norms
from manidefense.attacks.base import Attack, better, select
from manidefense.attacks.gradients import logits_function, value_and_grad
from manidefense.attacks.objectives import is_successful, objective
from manidefense.validation import (
    check_choice,
    check_fraction,
    check_non_negative,
    check_norm,
    check_positive,
    check_positive_int,
)


def default_step_size(eps, num_steps):
    """Madry et al.'s rule: 2.5 * eps / num_steps lets a walk cross the ball and back."""
    return 2.5 * eps / num_steps


METHODS = ("pgd", "frank_wolfe")


def check_method(method, norm):
    """Checks an optimisation method for `norm`; Frank–Wolfe is written for L1 only."""
    method = check_choice("method", method, METHODS)
    if method == "frank_wolfe" and norm != "l1":
        raise ValueError("Argument `method='frank_wolfe'` needs norm='l1'. "
                         f"Received: norm={norm!r}")
    return method


def pgd_loop(logits_fn, x, labels, target=None, *, eps, norm, step_size, num_steps,
             random_start=True, loss="ce", bounds=(0.0, 1.0), momentum=0.0,
             l1_sparsity=0.99, keep_best=True, seed=None, method="pgd", initial=None,
             constraint=None, penalty=None, stop_on_success=False):
    """The PGD iteration on a float32 batch, graph-safe; returns `(x_adv, loss, success)`.

    Each step: value and gradient of the objective; optionally a momentum average of
    L1-normalised gradients (MI-FGSM); a steepest-ascent step of length `step_size` in the
    norm that spends nothing on coordinates the box blocks (`norms.ascent_step`); projection
    onto the eps-ball; clipping to `bounds`. With `keep_best`, the most damaging iterate seen
    (success first, then loss) is returned instead of the last one: free, because every
    iterate's loss is computed anyway.

    The same loop optimises any hidden variable, not only pixels (latent codes, the
    unforeseen attacks' fog, snow and flow parameters): `x` is then the centre of the
    variable's eps-ball and `bounds` its box, and three hooks cover the rest.

    Args:
        method: `"pgd"`, or `"frank_wolfe"` (L1 only; Kang et al.'s attack): each step moves
            a fraction `1 / (t + 2)` of the way to the vertex of the L1 ball ∩ box that
            maximises the linearised objective (`norms.l1_vertex`); `step_size` is unused and
            no projection is needed, since every iterate is a convex combination of feasible
            points.
        initial: a starting point (instead of `x` or a random start), e.g. sparse impulses.
        constraint: `z -> z`, applied after every projection (e.g. a density budget or a
            fixed sparsity mask); it must keep `z` feasible.
        penalty: `z -> (batch,)` values subtracted from the objective (e.g. StAdv's flow
            smoothness); ranking of iterates uses the penalised value.
        step_size: a number, or a tensor broadcasting against `x` (per-coordinate step
            lengths for `norm="linf"`; a zero freezes a coordinate bit for bit).
        stop_on_success: freeze each example at the first iterate that succeeds (GAT's
            "iterate until the classifier is fooled") and stop the whole loop once every
            example has; `keep_best` is then ignored and the result is
            `(x_adv, loss, success, iterations)`, where `iterations` (int32) is the number of
            steps an example took to succeed (0: already at the start), or `num_steps` if
            it never did.
    """
    x = ops.cast(x, "float32")
    batch = ops.shape(x)[0]
    frank_wolfe = check_method(method, norm) == "frank_wolfe"
    unconstrained = isinstance(eps, (int, float)) and math.isinf(eps)

    def evaluate(z):
        logits = logits_fn(z)
        value = objective(loss, logits, labels, target)
        if penalty is not None:
            value = value - penalty(z)
        return value, logits

    x0 = x
    if initial is not None:
        x0 = ops.cast(initial, "float32")
    elif random_start:
        delta = norms.random_start(ops.shape(x), eps, norm, seed=seed)
        x0 = norms.clip_to_bounds(x + delta, bounds)

    def update(i, xk, m, grad):
        if momentum:
            scale = ops.mean(ops.abs(grad), axis=tuple(range(1, len(x.shape))), keepdims=True)
            m = momentum * m + grad / ops.maximum(scale, 1e-12)
            grad = m
        if frank_wolfe:
            vertex = x + norms.l1_vertex(grad, x, eps, bounds)
            x_next = xk + (vertex - xk) / (ops.cast(i, "float32") + 2.0)
        else:
            x_next = xk + norms.ascent_step(grad, xk, step_size, norm, bounds, l1_sparsity)
            if not unconstrained:  # eps = inf (GAT): no ball, so no rounding through x
                x_next = x + norms.project(x_next - x, eps, norm)
            x_next = norms.clip_to_bounds(x_next, bounds)
        if constraint is not None:
            x_next = constraint(x_next)
        return x_next, m

    if stop_on_success:
        return _until_success(evaluate, update, x0, labels, target, num_steps)

    def step(i, state):
        xk, m, bx, bl, bs = state
        value, logits, grad = value_and_grad(evaluate, xk)
        success = is_successful(logits, labels, target)
        take = better(value, success, bl, bs)
        bx, bl, bs = select(take, xk, bx), ops.where(take, value, bl), ops.logical_or(bs, success)
        x_next, m = update(i, xk, m, grad)
        return x_next, m, bx, bl, bs

    state = (x0, ops.zeros_like(x), x0, ops.full((batch,), float("-inf")),
             ops.zeros((batch,), dtype="bool"))
    x_last, _, bx, bl, bs = ops.fori_loop(0, num_steps, step, state)
    value, logits = evaluate(x_last)
    success = is_successful(logits, labels, target)
    if not keep_best:
        return x_last, value, success
    take = better(value, success, bl, bs)
    return select(take, x_last, bx), ops.where(take, value, bl), ops.logical_or(bs, success)


def _until_success(evaluate, update, x0, labels, target, num_steps):
    """`pgd_loop(stop_on_success=True)`: an example stops moving at its first success; the
    loop ends when all have succeeded or after `num_steps` steps."""
    batch = ops.shape(x0)[0]

    def record(i, logits, done, iterations):
        success = is_successful(logits, labels, target)
        iterations = ops.where(ops.logical_and(success, ops.logical_not(done)), i, iterations)
        return ops.logical_or(done, success), iterations

    def body(i, xk, m, done, iterations):
        _, logits, grad = value_and_grad(evaluate, xk)
        done, iterations = record(i, logits, done, iterations)
        x_next, m = update(i, xk, m, grad)
        return i + 1, select(done, xk, x_next), m, done, iterations

    def keep_going(i, xk, m, done, iterations):
        return ops.logical_and(i < num_steps, ops.logical_not(ops.all(done)))

    state = (ops.convert_to_tensor(0, "int32"), x0, ops.zeros_like(x0),
             ops.zeros((batch,), dtype="bool"), ops.full((batch,), num_steps, dtype="int32"))
    i, x_last, _, done, iterations = ops.while_loop(keep_going, body, state)
    value, logits = evaluate(x_last)
    done, iterations = record(i, logits, done, iterations)
    return x_last, value, done, iterations


_compiled_loops = {}


def projected_gradient_descent(model: keras.Model, x: ArrayLike | tf.Tensor,
                               y: ArrayLike | tf.Tensor, *, eps: float, norm: str = "linf",
                               step_size: float | None = None, num_steps: int = 20,
                               random_start: bool = True, loss: str = "ce",
                               target: ArrayLike | tf.Tensor | None = None,
                               bounds: tuple[float, float] = (0.0, 1.0), momentum: float = 0.0,
                               l1_sparsity: float = 0.99, keep_best: bool = True,
                               seed: int | keras.random.SeedGenerator | None = None,
                               output: str = "auto") -> tf.Tensor:
    """Functional PGD on one batch of tensors, usable inside a `train_step`.

    No data-dependent validation is done here (it must run inside graphs); use the `PGD`
    class for checked, batched, restartable attacks. When called eagerly the loop is compiled
    with `tf.function` so that no step runs as Python.

    Args:
        model: Keras classifier (logits or probabilities; see `gradients.logits_function`).
        x: float inputs within `bounds`.
        y: integer labels.
        eps: perturbation budget in `norm`, as in `PGD`.
        norm: `"linf"`, `"l2"` or `"l1"`.
        step_size: step length; default `2.5 * eps / num_steps`.
        num_steps: gradient steps.
        random_start: start uniformly inside the eps-ball.
        loss: `"ce"`, `"margin"` or `"dlr"`.
        target: integer targets, or None for an untargeted attack.
        bounds: valid input range `(low, high)`.
        momentum: MI-FGSM decay factor; 0 for plain PGD.
        l1_sparsity: fraction of coordinates left unchanged by an L1 step.
        keep_best: return the most damaging iterate instead of the last one.
        seed: an int (the same random start on every call), a `keras.random.SeedGenerator`
            created outside the compiled function (fresh noise on every call, as adversarial
            training needs), or None (eager calls only).
        output: `"auto"`, `"logits"` or `"probabilities"`.

    Returns:
        Adversarial inputs as a float32 tensor.

    Example:
    >>> x_adv = manidefense.attacks.projected_gradient_descent(
    ...     model, x, y, eps=0.1, num_steps=10, seed=0)
    >>> bool(np.max(np.abs(x_adv - x)) <= 0.1 + 1e-6)
    True
    """
    norm = check_norm(norm)
    step_size = default_step_size(eps, num_steps) if step_size is None else step_size
    if seed is None:
        if not tf.executing_eagerly():
            raise ValueError(
                "Argument `seed` must be an int or a `keras.random.SeedGenerator` when "
                "`projected_gradient_descent` runs inside a compiled function (a generator "
                "created outside it gives fresh noise on every call). Received: seed=None"
            )
        seed = keras.random.SeedGenerator()
    kwargs = dict(eps=eps, norm=norm, step_size=step_size, num_steps=num_steps,
                  random_start=random_start, loss=loss, bounds=tuple(bounds), momentum=momentum,
                  l1_sparsity=l1_sparsity, keep_best=keep_best, seed=seed)
    logits_fn = logits_function(model, output)

    def run(x, y, target):
        return pgd_loop(logits_fn, x, y, target, **kwargs)[0]

    x = ops.cast(x, "float32")
    if tf.executing_eagerly():
        run = tf.function(run, reduce_retracing=True)
    return run(x, y, target)


@keras.saving.register_keras_serializable(package="manidefense")
class PGD(Attack):
    """Projected gradient descent in the L∞, L2 or L1 ball (Madry et al.).

    Args:
        eps: perturbation budget in `norm`, in the units of `bounds` (e.g. 0.1 of [0, 1]).
        norm: `"linf"`, `"l2"` or `"l1"`.
        step_size: step length in `norm`; default `2.5 * eps / num_steps`.
        num_steps: gradient steps per restart.
        random_start: start from a uniform point of the eps-ball.
        l1_sparsity: for `norm="l1"`, the fraction of coordinates an L1 step leaves alone
            (the step goes along the sign of the largest `1 - l1_sparsity` share of gradient
            coordinates, as in SLIDE).
        method: `"pgd"` or, for `norm="l1"`, `"frank_wolfe"` (Kang et al.'s L1 attack of the
            UAR protocol: steps towards the best vertex of the L1 ball ∩ box, no step size).
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> attack = manidefense.attacks.PGD(eps=0.1, norm="linf", num_steps=20, seed=0)
    >>> x_adv = attack(model, x, y)

    Reference:
        Madry et al., ICLR 2018; Tramèr & Boneh, NeurIPS 2019 (sparse L1 steps).
    """

    _momentum = 0.0
    _keep_best = True

    def __init__(self, eps: float = 0.1, norm: str = "linf", step_size: float | None = None,
                 num_steps: int = 20, random_start: bool = True, l1_sparsity: float = 0.99,
                 method: str = "pgd", **kwargs):
        super().__init__(**kwargs)
        self.eps = check_non_negative("eps", eps)
        self.norm = check_norm(norm)
        self.method = check_method(method, self.norm)
        self.step_size = None if step_size is None else check_positive("step_size", step_size)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.random_start = bool(random_start)
        self.l1_sparsity = check_fraction("l1_sparsity", l1_sparsity, 0.0, 1.0)

    def _default_step_size(self):
        return default_step_size(self.eps, self.num_steps)

    def _attack_batch(self, logits_fn, x, labels, target):
        step_size = self.step_size or self._default_step_size()
        return pgd_loop(
            logits_fn, x, labels, target, eps=self.eps, norm=self.norm, step_size=step_size,
            num_steps=self.num_steps, random_start=self.random_start and self.eps > 0,
            loss=self.loss, bounds=self.bounds, momentum=self._momentum,
            l1_sparsity=self.l1_sparsity, keep_best=self._keep_best, seed=self._seed_generator,
            method=self.method,
        )[0]
