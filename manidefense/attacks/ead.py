"""EAD: elastic-net attacks, the L1-oriented generalisation of Carlini–Wagner L2.

Reference:
    Chen, Sharma, Zhang, Yi, Hsieh, "EAD: Elastic-Net Attacks to Deep Neural Networks via
    Adversarial Examples", AAAI 2018 (Algorithm 1); the authors' reference code for the
    square-root learning-rate decay and the binary search.
"""

import keras
from keras import ops

from manidefense.attacks import norms
from manidefense.attacks.carlini_wagner import (
    MinimumDistanceAttack,
    binary_search,
    finish,
    keep_closest,
    margin_loss,
    per_example_sum,
)
from manidefense.attacks.gradients import value_and_grad
from manidefense.validation import check_choice, check_non_negative

DECISION_RULES = ("en", "l1")


def shrink_threshold(z, x, beta, bounds):
    """EAD's projected shrinkage-thresholding `S_β`: the L1 proximal step, clipped to the box.

    Coordinates within β of the original stay at `x`; the others move β towards it.
    """
    low, high = bounds
    delta = z - x
    return ops.where(delta > beta, ops.minimum(z - beta, high),
                     ops.where(delta < -beta, ops.maximum(z + beta, low), x))


@keras.saving.register_keras_serializable(package="manidefense")
class EAD(MinimumDistanceAttack):
    """Elastic-net attack: minimises `c · f(x') + ||x' − x||₂² + β ||x' − x||₁` in the box.

    The non-smooth L1 term is handled by ISTA: a gradient step on the smooth part
    `c · f + ||·||₂²` at a slack point `y`, then the projected shrinkage-thresholding `S_β`;
    FISTA momentum sets `y_{k+1} = x_{k+1} + k/(k+3) (x_{k+1} − x_k)`, and the learning rate
    decays as `lr · sqrt(1 − k/num_steps)`. A binary search over `c` (shared with
    `CarliniWagnerL2`) keeps, per example, the best successful iterate by the decision rule:
    elastic-net distance (`"en"`) or L1 distance (`"l1"`). Examples never broken are returned
    unchanged; with `eps`, results farther than `eps` in L1 are returned as `x`.

    Args:
        beta: β, the weight of the L1 term (and the shrinkage threshold).
        confidence: κ, the margin by which the result must be adversarial.
        learning_rate: initial ISTA step size.
        num_steps: ISTA iterations per value of `c`.
        binary_search_steps: values of `c` tried per example.
        initial_const: first value of `c`.
        decision_rule: `"en"` or `"l1"`, how the best successful iterate is chosen.
        abort_early: end a round when the batch loss has not decreased by 0.01% over
            `num_steps // 10` iterations.
        eps: optional L1 budget (see above), or None.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.EAD(beta=1e-2, decision_rule="l1")(model, x, y)

    Reference:
        Chen et al., AAAI 2018, Algorithm 1 (EAD with `S_β` and FISTA).
    """

    # The norm its distances and optional `eps` are measured in. Not `norm`: that would make
    # the base class project the result onto the ball, where this attack returns `x` instead.
    threat_norm = "l1"

    def __init__(self, beta: float = 1e-2, confidence: float = 0.0, learning_rate: float = 1e-2,
                 num_steps: int = 1000, binary_search_steps: int = 9, initial_const: float = 1e-3,
                 decision_rule: str = "en", abort_early: bool = True, eps: float | None = None,
                 **kwargs):
        super().__init__(confidence, learning_rate, num_steps, binary_search_steps,
                         initial_const, abort_early, eps, **kwargs)
        self.beta = check_non_negative("beta", beta)
        self.decision_rule = check_choice("decision_rule", decision_rule, DECISION_RULES)

    def _attack_batch(self, logits_fn, x, labels, target):
        x = ops.cast(x, "float32")

        def run_round(const, best_dist, best_x):
            return self._ista(logits_fn, x, labels, target, const, best_dist, best_x)

        best_dist, best_x = binary_search(run_round, x, self.initial_const,
                                          self.binary_search_steps)
        return finish(x, best_x, best_dist, self.eps, "l1")

    def _ista(self, logits_fn, x, labels, target, const, best_dist, best_x):
        """One round of FISTA at a per-example `const`; returns `(found, best_dist, best_x)`."""
        check_every = max(self.num_steps // 10, 1)

        def smooth_loss(y):
            f, _ = margin_loss(logits_fn(y), labels, target, self.confidence)
            return const * f + per_example_sum(ops.square(y - x)), None

        def cond(k, xk, yk, prev, stop, found, best_dist, best_x):
            return ops.logical_and(k < self.num_steps, ops.logical_not(stop))

        def body(k, xk, yk, prev, stop, found, best_dist, best_x):
            kf = ops.cast(k, "float32")
            lr = self.learning_rate * ops.sqrt(1.0 - kf / self.num_steps)
            _, _, grad = value_and_grad(smooth_loss, yk)
            x_next = shrink_threshold(yk - lr * grad, x, self.beta, self.bounds)
            y_next = x_next + (kf + 1.0) / (kf + 4.0) * (x_next - xk)
            # The iterate x_next is the candidate: score it with the full elastic-net loss.
            f, success = margin_loss(logits_fn(x_next), labels, target, self.confidence)
            l1 = norms.distance(x, x_next, "l1")
            elastic = per_example_sum(ops.square(x_next - x)) + self.beta * l1
            dist = elastic if self.decision_rule == "en" else l1
            best_dist, best_x = keep_closest(dist, success, x_next, best_dist, best_x)
            found = ops.logical_or(found, success)
            total, at_check = ops.sum(const * f + elastic), ops.equal(k % check_every, 0)
            if self.abort_early:
                stop = ops.logical_and(at_check, total > prev * 0.9999)
            prev = ops.where(at_check, total, prev)
            return k + 1, x_next, y_next, prev, stop, found, best_dist, best_x

        state = (ops.convert_to_tensor(0), x, x, ops.convert_to_tensor(float("inf")),
                 ops.convert_to_tensor(False), ops.zeros_like(best_dist, dtype="bool"),
                 best_dist, best_x)
        return ops.while_loop(cond, body, state)[5:]
