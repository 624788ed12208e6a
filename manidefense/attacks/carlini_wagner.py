"""Carlini–Wagner minimum-distance attacks (L2 and L∞) and the parts EAD shares with them.

Both attacks minimise a distance plus `c · f(x')`, where `f` is the κ-margin of the logits, and
keep, per example, the closest successful iterate. Everything (the search over `c` or τ and
the Adam steps) runs inside one compiled graph.

Reference:
    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", S&P 2017:
    objective f6 (§IV-A), change of variables (§IV-C), L2 attack (§V-A), L∞ attack (§V-C).
"""

import math

import keras
from keras import ops

from manidefense.attacks import norms
from manidefense.attacks.base import Attack, select
from manidefense.attacks.gradients import value_and_grad
from manidefense.attacks.objectives import is_successful, objective
from manidefense.validation import (
    check_fraction,
    check_non_negative,
    check_positive,
    check_positive_int,
)

_NO_UPPER = 1e10  # "no successful c yet" in Carlini's binary search bookkeeping
_TANH_SHRINK = 0.999999  # keeps arctanh finite at the box edges, as in Carlini's code


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"Argument `{name}` must be True or False. Received: {name}={value!r}")
    return value


def check_above(name, value, floor):
    value = check_positive(name, value)
    if value <= floor:
        raise ValueError(f"Argument `{name}` must be > {floor}. Received: {name}={value!r}")
    return value


def check_eps(eps):
    return None if eps is None else check_non_negative("eps", eps)


def per_example_sum(v):
    """Sum over all but the batch axis (for loss terms, not for norms: those live in norms.py)."""
    return ops.sum(v, axis=tuple(range(1, len(v.shape))))


def column(v, x):
    """A `(batch,)` tensor shaped to broadcast against the batch `x`."""
    return ops.reshape(v, (-1,) + (1,) * (len(x.shape) - 1))


def margin_loss(logits, labels, target, confidence):
    """CW's f6 shifted by κ, `max(κ − g, 0)` with `g` the margin objective, and success.

    `g` is positive once the example is adversarial, so `f = 0` exactly when it is adversarial
    by at least κ. Success is Carlini's test: misclassified (or the target) with margin ≥ κ.
    """
    g = objective("margin", logits, labels, target)
    success = ops.logical_and(is_successful(logits, labels, target), g >= confidence)
    return ops.relu(confidence - g), success


def to_tanh_space(x, bounds):
    low, high = bounds
    return ops.arctanh(((x - low) / (high - low) * 2.0 - 1.0) * _TANH_SHRINK)


def from_tanh_space(w, bounds):
    low, high = bounds
    return low + (high - low) * (ops.tanh(w) + 1.0) / 2.0


def adam_step(w, grad, m, v, t, learning_rate):
    """One Adam step (Kingma & Ba defaults) with step count `t` (scalar or broadcastable)."""
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * ops.square(grad)
    m_hat = m / (1.0 - ops.power(0.9, t))
    v_hat = v / (1.0 - ops.power(0.999, t))
    return w - learning_rate * m_hat / (ops.sqrt(v_hat) + 1e-8), m, v


def keep_closest(dist, success, x_new, best_dist, best_x):
    """Per example: replace the best result by `x_new` when it succeeds closer."""
    take = ops.logical_and(success, dist < best_dist)
    return ops.where(take, dist, best_dist), select(take, x_new, best_x)


def finish(x, best_x, best_dist, eps, norm):
    """The best result where one was found (and, with `eps`, within it), else `x` itself."""
    keep = ops.isfinite(best_dist)
    if eps is not None:
        keep = ops.logical_and(keep, norms.distance(x, best_x, norm) <= eps)
    return select(keep, best_x, x)


def binary_search(run_round, x, initial_const, steps):
    """Carlini's per-example search over `c`, shared by CW-L2 and EAD.

    `c` grows ×10 until a round succeeds, then bisects between the largest failing and the
    smallest succeeding value; with ≥ 10 steps the last round retries the upper bound.
    `run_round(const, best_dist, best_x) -> (found, best_dist, best_x)` runs one optimisation
    at a per-example `const` and reports which examples succeeded in it.

    Returns:
        `(best_dist, best_x)`; `best_dist` is inf where nothing succeeded.
    """
    batch = ops.shape(x)[0]

    def search_step(r, state):
        const, lower, upper, best_dist, best_x = state
        if steps >= 10:
            const = ops.where(r == steps - 1, upper, const)
        found, best_dist, best_x = run_round(const, best_dist, best_x)
        upper = ops.where(found, ops.minimum(upper, const), upper)
        lower = ops.where(found, lower, ops.maximum(lower, const))
        const = ops.where(upper < _NO_UPPER / 10, (lower + upper) / 2, const * 10)
        return const, lower, upper, best_dist, best_x

    state = (ops.full((batch,), initial_const), ops.zeros((batch,)),
             ops.full((batch,), _NO_UPPER), ops.full((batch,), float("inf")), x)
    return ops.fori_loop(0, steps, search_step, state)[3:]


class MinimumDistanceAttack(Attack):
    """Base of the attacks that search per example for the closest adversarial point with a
    binary search over the loss constant `c` (`CarliniWagnerL2`, `EAD`): it holds and checks
    their shared arguments, documented on those classes."""

    def __init__(self, confidence: float = 0.0, learning_rate: float = 0.01, num_steps: int = 1000,
                 binary_search_steps: int = 9, initial_const: float = 1e-3,
                 abort_early: bool = True, eps: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.confidence = check_non_negative("confidence", confidence)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.binary_search_steps = check_positive_int("binary_search_steps", binary_search_steps)
        self.initial_const = check_positive("initial_const", initial_const)
        self.abort_early = check_bool("abort_early", abort_early)
        self.eps = check_eps(eps)


@keras.saving.register_keras_serializable(package="manidefense")
class CarliniWagnerL2(MinimumDistanceAttack):
    """Carlini–Wagner L2 attack: the smallest L2 perturbation that changes the prediction.

    In tanh space `x' = low + (high − low)(tanh(w) + 1)/2` (always inside `bounds`), Adam
    minimises `||x' − x||² + c · max(κ − margin(x'), 0)` per example; a binary search over `c`
    (×10 until the first success, then bisection) keeps the closest successful iterate.
    Examples never broken are returned unchanged. There is no budget: the result is as close
    as the attack can make it. With `eps`, results farther than `eps` (L2) are returned as
    `x`, so the attack can join a fixed-budget evaluation.

    Args:
        confidence: κ, the margin by which the result must be adversarial.
        learning_rate: Adam step size on `w`.
        num_steps: Adam steps per value of `c`.
        binary_search_steps: values of `c` tried per example.
        initial_const: first value of `c`.
        abort_early: end a round when the batch loss has not decreased by 0.01% over
            `num_steps // 10` steps.
        eps: optional L2 budget (see above), or None.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.CarliniWagnerL2(num_steps=200)(model, x, y)

    Reference:
        Carlini & Wagner, S&P 2017, §V-A (objective f6 of §IV-A, change of variables §IV-C).
    """

    # The norm its distances and optional `eps` are measured in. Not `norm`: that would make
    # the base class project the result onto the ball, where this attack returns `x` instead.
    threat_norm = "l2"

    def _attack_batch(self, logits_fn, x, labels, target):
        x = ops.cast(x, "float32")
        w0 = to_tanh_space(x, self.bounds)

        def run_round(const, best_dist, best_x):
            def loss_fn(w):
                x_adv = from_tanh_space(w, self.bounds)
                dist = per_example_sum(ops.square(x_adv - x))
                f, success = margin_loss(logits_fn(x_adv), labels, target, self.confidence)
                return dist + const * f, (x_adv, dist, success)

            return self._descend(loss_fn, w0, best_dist, best_x)

        best_dist, best_x = binary_search(run_round, x, self.initial_const,
                                          self.binary_search_steps)
        return finish(x, best_x, best_dist, self.eps, "l2")

    def _descend(self, loss_fn, w0, best_dist, best_x):
        """One round of Adam from `w0`; returns `(found, best_dist, best_x)`."""
        check_every = max(self.num_steps // 10, 1)

        def cond(i, w, m, v, prev, stop, found, best_dist, best_x):
            return ops.logical_and(i < self.num_steps, ops.logical_not(stop))

        def body(i, w, m, v, prev, stop, found, best_dist, best_x):
            loss, (x_adv, dist, success), grad = value_and_grad(loss_fn, w)
            best_dist, best_x = keep_closest(dist, success, x_adv, best_dist, best_x)
            found = ops.logical_or(found, success)
            total, at_check = ops.sum(loss), ops.equal(i % check_every, 0)
            if self.abort_early:
                stop = ops.logical_and(at_check, total > prev * 0.9999)
            prev = ops.where(at_check, total, prev)
            w, m, v = adam_step(w, grad, m, v, ops.cast(i + 1, "float32"), self.learning_rate)
            return i + 1, w, m, v, prev, stop, found, best_dist, best_x

        zeros = ops.zeros_like(w0)
        state = (ops.convert_to_tensor(0), w0, zeros, zeros, ops.convert_to_tensor(float("inf")),
                 ops.convert_to_tensor(False), ops.zeros_like(best_dist, dtype="bool"),
                 best_dist, best_x)
        return ops.while_loop(cond, body, state)[6:]


@keras.saving.register_keras_serializable(package="manidefense")
class CarliniWagnerLinf(Attack):
    """Carlini–Wagner L∞ attack: shrink a soft L∞ bound τ while the attack keeps succeeding.

    In tanh space, Adam minimises `c · max(κ − margin(x'), 0) + Σ_i max(|x'_i − x_i| − τ, 0)`.
    A τ-round succeeds at the first step where the example is adversarial and the loss is
    below `1e-4 · c`; then τ becomes `tau_decrease · min(τ, ||x' − x||∞)` and the next round
    starts from `x'` (Adam reset). After `num_steps` steps without success `c` is multiplied
    by `const_factor`; the attack stops at `c ≥ largest_const` or `τ ≤ min_tau`. Every example
    runs its own schedule inside one graph loop; the smallest-L∞ successful iterate is
    returned (`x` when none).

    The model-shell paper (Wu et al.) used this attack as its MCN oracle with one fixed τ:
    `initial_tau=min_tau=1/32, const_factor=1e4` (c = 1e-5, then 0.1) on a [−0.5, 0.5] box.

    Args:
        confidence: κ, the margin by which the result must be adversarial.
        learning_rate: Adam step size.
        num_steps: Adam steps per value of `c` within a τ-round.
        initial_const, largest_const, const_factor: the schedule of `c`.
        initial_tau: first τ, in input units. tau_decrease: factor in (0, 1).
        min_tau: stop once τ falls to this value; `min_tau = initial_tau` means one fixed τ.
        eps: optional L∞ budget: farther results are returned as `x`. None for no budget.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.CarliniWagnerLinf(num_steps=100)(model, x, y)

    Reference:
        Carlini & Wagner, S&P 2017, §V-C; Carlini's `li_attack.py` for the schedule defaults.
    """

    # The norm its distances and optional `eps` are measured in. Not `norm`: that would make
    # the base class project the result onto the ball, where this attack returns `x` instead.
    threat_norm = "linf"

    def __init__(self, confidence: float = 0.0, learning_rate: float = 5e-3, num_steps: int = 1000,
                 initial_const: float = 1e-5, largest_const: float = 20.0,
                 const_factor: float = 2.0, initial_tau: float = 1.0, tau_decrease: float = 0.9,
                 min_tau: float = 1 / 256, eps: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.confidence = check_non_negative("confidence", confidence)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.initial_const = check_positive("initial_const", initial_const)
        self.largest_const = check_above("largest_const", largest_const, self.initial_const)
        self.const_factor = check_above("const_factor", const_factor, 1.0)
        self.initial_tau = check_positive("initial_tau", initial_tau)
        self.tau_decrease = check_fraction("tau_decrease", tau_decrease, 0.0, 1.0)
        self.min_tau = check_positive("min_tau", min_tau)
        if self.min_tau > self.initial_tau:
            raise ValueError(f"Argument `min_tau` must be <= initial_tau={self.initial_tau}. "
                             f"Received: min_tau={min_tau!r}")
        self.eps = check_eps(eps)

    def _max_iterations(self):
        # c never decreases and τ shrinks geometrically, so every step belongs to one of at
        # most (c levels + τ levels) rounds of `num_steps`: a bound the loop never reaches.
        const_levels = math.ceil(math.log(self.largest_const / self.initial_const)
                                 / math.log(self.const_factor))
        tau_levels = math.ceil(math.log(self.min_tau / self.initial_tau)
                               / math.log(self.tau_decrease))
        return (const_levels + tau_levels + 2) * self.num_steps

    def _attack_batch(self, logits_fn, x, labels, target):
        x = ops.cast(x, "float32")
        batch = ops.shape(x)[0]

        def loss_fn(w, const, tau):
            x_adv = from_tanh_space(w, self.bounds)
            f, success = margin_loss(logits_fn(x_adv), labels, target, self.confidence)
            hinge = per_example_sum(ops.relu(ops.abs(x_adv - x) - column(tau, x)))
            return const * f + hinge, (x_adv, norms.distance(x, x_adv, "linf"), success)

        def cond(w, m, v, t, const, tau, step, done, best_dist, best_x):
            return ops.any(ops.logical_not(done))

        def body(w, m, v, t, const, tau, step, done, best_dist, best_x):
            loss, (x_adv, dist, success), grad = value_and_grad(
                lambda z: loss_fn(z, const, tau), w)
            active = ops.logical_not(done)
            success = ops.logical_and(success, active)
            best_dist, best_x = keep_closest(dist, success, x_adv, best_dist, best_x)
            accepted = ops.logical_and(success, loss < 1e-4 * const)
            exhausted = ops.logical_and(ops.logical_and(active, ops.logical_not(accepted)),
                                        step + 1 >= self.num_steps)
            new_tau = ops.minimum(tau, dist) * self.tau_decrease
            const = ops.where(exhausted, const * self.const_factor, const)
            done = ops.logical_or(done, ops.logical_or(
                ops.logical_and(accepted, new_tau <= self.min_tau),
                ops.logical_and(exhausted, const >= self.largest_const)))
            tau = ops.where(accepted, new_tau, tau)
            step = ops.where(ops.logical_or(accepted, exhausted), 0, step + 1)
            # An accepted round restarts from its result with a fresh Adam; others keep going.
            move = ops.logical_and(ops.logical_not(done), ops.logical_not(accepted))
            w2, m2, v2 = adam_step(w, grad, m, v, column(t + 1.0, x), self.learning_rate)
            w = select(move, w2, w)
            m = select(accepted, ops.zeros_like(m), select(move, m2, m))
            v = select(accepted, ops.zeros_like(v), select(move, v2, v))
            t = ops.where(accepted, 0.0, ops.where(move, t + 1.0, t))
            return w, m, v, t, const, tau, step, done, best_dist, best_x

        zeros = ops.zeros_like(x)
        state = (to_tanh_space(x, self.bounds), zeros, zeros, ops.zeros((batch,)),
                 ops.full((batch,), self.initial_const), ops.full((batch,), self.initial_tau),
                 ops.zeros((batch,), dtype="int32"), ops.zeros((batch,), dtype="bool"),
                 ops.full((batch,), float("inf")), x)
        out = ops.while_loop(cond, body, state, maximum_iterations=self._max_iterations())
        return finish(x, out[9], out[8], self.eps, "linf")
