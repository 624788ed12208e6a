"""Search factors of model shells (Wu, Jang, Chen, Jha): MCN, NCN, and a sampling vote.

A search factor H maps a base model F and an input x to a point H(F, x) that F classifies
(Definition 4). The two objectives of the paper are solved per class t, as targeted searches
(Algorithms 1 and 2), and here **all classes of all examples run in one batched graph**: the
batch is tiled over the classes (row i·C + t holds example i searched towards class t), so a
search costs `num_steps` forward+backward passes on C times the batch, not C separate loops.

Each factor's `find(logits_fn, x)` is graph-safe and returns `(z, classes, confidence,
reached)`: the chosen points, the class F gives them, F's confidence there and, per example,
whether the objective was met (NCN: some class reached p).
"""

import inspect
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from manidefense.attacks import norms
from manidefense.attacks.gradients import value_and_grad
from manidefense.attacks.pgd import default_step_size, pgd_loop
from manidefense.validation import (
    check_bounds,
    check_choice,
    check_fraction,
    check_norm,
    check_positive,
    check_positive_int,
)


def _tile_over_classes(x, num_classes):
    """Rows i·C + t: example i, class t. Returns the tiled batch and the class of each row."""
    batch = ops.shape(x)[0]
    tiled = ops.repeat(x, num_classes, axis=0)
    classes = ops.tile(ops.arange(num_classes, dtype="int64"), (batch,))
    return tiled, classes


def _per_example(values, num_classes):
    return ops.reshape(values, (-1, num_classes))


def _pick(z, index, num_classes):
    """Row `index[i]` of the C candidates of each example i."""
    rows = ops.arange(ops.shape(index)[0], dtype="int32") * num_classes + ops.cast(index, "int32")
    return ops.take(z, rows, axis=0)


def _answer(logits_fn, chosen, reached):
    """The search factor's result: the points, F's class and confidence there, `reached`."""
    probs = ops.softmax(logits_fn(chosen), axis=-1)
    return chosen, ops.argmax(probs, axis=-1), ops.max(probs, axis=-1), reached


class SearchFactor:
    """Base class: validation of the shared arguments and the config round trip.

    A subclass implements `find(logits_fn, x)`; `ModelShell` calls it inside its graph.

    Args:
        bounds: valid input range `(low, high)`.

    Example:
    >>> search = manidefense.shells.MCN(delta=0.1)
    >>> isinstance(search, SearchFactor), MCN.from_config(search.get_config()).delta
    (True, 0.1)
    """

    randomized = False

    def __init__(self, *, bounds: tuple[float, float] = (0.0, 1.0)):
        self.bounds = check_bounds(bounds)

    def find(self, logits_fn: Callable[[tf.Tensor], tf.Tensor],
             x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Graph-safe search on one float32 batch; returns `(z, classes, confidence, reached)`.

        Args:
            logits_fn: the base model as a function `x -> logits`.
            x: a float32 batch within `bounds`.

        Returns:
            `(z, classes, confidence, reached)`, one entry per example.

        Example:
        >>> z, classes, confidence, reached = MCN(delta=0.1).find(model, tf.constant(x))
        """
        raise NotImplementedError

    def get_config(self):
        params = inspect.signature(type(self).__init__).parameters.values()
        names = [p.name for p in params if p.name != "self" and p.kind != p.VAR_KEYWORD]
        return {name: getattr(self, name) for name in names} | {"bounds": self.bounds}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="manidefense")
class MCN(SearchFactor):
    """δ-most confident neighbour (Definition 1, Algorithm 1): for every class t, maximise
    F(z)_t over the δ-ball around x (eq. 8), then keep the z_t with the largest F(z_t)_t.

    Each per-class problem is a targeted PGD from x (no random start: the search is a
    deterministic function of x), keeping the best iterate. `method="pgd"` ascends
    log F(z)_t (cross-entropy towards t: the same maximiser as F(z)_t, with gradients that do
    not vanish when the softmax saturates); `method="cw"` ascends the Carlini–Wagner margin
    Z_t − max_{i≠t} Z_i, the objective of the authors' CW-L∞ search, but inside a hard δ-ball
    (their hinge let the point leave the ball).

    Args:
        delta: search radius δ in `norm`, in the units of `bounds`.
        norm: `"linf"`, `"l2"` or `"l1"`.
        num_steps: gradient steps per class.
        step_size: step length; default `2.5 * delta / num_steps`.
        method: `"pgd"` or `"cw"` (see above).
        bounds: valid input range.

    Example:
    >>> shell = ModelShell(robust_cnn, MCN(delta=0.1, num_steps=20))
    """

    def __init__(self, delta: float, norm: str = "linf", num_steps: int = 20,
                 step_size: float | None = None, method: str = "pgd", *,
                 bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds=bounds)
        self.delta = check_positive("delta", delta)
        self.norm = check_norm(norm)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.step_size = (None if step_size is None
                          else check_positive("step_size", step_size))
        self.method = check_choice("method", method, ("pgd", "cw"))

    def find(self, logits_fn: Callable[[tf.Tensor], tf.Tensor],
             x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Searches every example of the batch `x` (graph-safe).

        Args:
            logits_fn: the base model as a function `x -> logits` (a Keras classifier works).
            x: a float32 batch within `bounds`.

        Returns:
            `(z, classes, confidence, reached)`: the points chosen per example, the class the
            base model gives them, its confidence there, and whether the search met its
            objective.

        Example:
        >>> search = manidefense.shells.MCN(delta=0.1, num_steps=5)
        >>> z, classes, confidence, reached = search.find(model, tf.constant(x))
        >>> tuple(z.shape), tuple(classes.shape)
        ((8, 28, 28, 1), (8,))
        """
        num_classes = ops.shape(logits_fn(x[:1]))[-1]
        tiled, classes = _tile_over_classes(x, num_classes)
        step = self.step_size or default_step_size(self.delta, self.num_steps)
        z, _, _ = pgd_loop(logits_fn, tiled, classes, classes, eps=self.delta, norm=self.norm,
                           step_size=step, num_steps=self.num_steps, random_start=False,
                           loss="ce" if self.method == "pgd" else "margin",
                           bounds=self.bounds, keep_best=True)
        # Algorithm 1, line 4: the class whose search reached the highest confidence in it.
        confidence = _per_example(ops.exp(_log_confidence(logits_fn, z, classes)), num_classes)
        best = ops.argmax(confidence, axis=1)
        chosen = _pick(z, best, num_classes)
        return _answer(logits_fn, chosen, ops.ones_like(best, dtype="bool"))


@keras.saving.register_keras_serializable(package="manidefense")
class NCN(SearchFactor):
    """p-nearest confident neighbour (Definition 2, Algorithm 2): for every class t, the
    nearest z with F(z)_t ≥ p (eq. 9); the shell returns the nearest of these.

    Each per-class problem is solved by the augmented-Lagrangian sequence of eq. 10: Adam on
    ‖z − x‖ + (1/2α)([λ + α g(z)]⁺² − λ²) with g(z) = log p' − log F(z)_t (the constraint
    in log form, whose gradient does not vanish where F(z)_t is tiny), α multiplied by
    `alpha_growth` after every stage and the multiplier updated as λ ← [λ + α g(z)]⁺.
    A class stops at the first stage whose point is feasible (F(z)_t ≥ p), which keeps it
    near x; the optimisation aims slightly inside the feasible set (p' = p + 1% of 1 − p) so
    that the converged point is strictly feasible. Examples for which no class reaches p keep
    x itself (the shell then answers like the base model) and are reported as not reached.
    The answer depends on the budget (`num_steps` × `num_stages`): a non-convex constraint
    solved by a finite first-order method finds a local, budget-dependent nearest point (the
    model-shells recipe saw 3×10 and 3×20 steps agree on about half of the inputs), and rows
    that are already feasible still cost their share of every step.

    Args:
        confidence: the threshold p in (0, 1).
        norm: distance minimised, `"l2"`, `"linf"` or `"l1"`.
        num_steps: Adam steps per stage.
        num_stages: penalty stages (values of α).
        step_size: Adam learning rate, in the units of `bounds`.
        alpha: the first penalty coefficient α.
        alpha_growth: factor applied to α after every stage.
        bounds: valid input range.

    Example:
    >>> shell = ModelShell(robust_cnn, NCN(confidence=0.9, norm="l2"))
    """

    def __init__(self, confidence: float, norm: str = "l2", num_steps: int = 50,
                 num_stages: int = 6, step_size: float = 0.01, alpha: float = 1.0,
                 alpha_growth: float = 4.0, *, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds=bounds)
        self.confidence = check_fraction("confidence", confidence)
        self.norm = check_norm(norm)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.num_stages = check_positive_int("num_stages", num_stages)
        self.step_size = check_positive("step_size", step_size)
        self.alpha = check_positive("alpha", alpha)
        self.alpha_growth = check_positive("alpha_growth", alpha_growth)
        if self.alpha_growth < 1:
            raise ValueError("Argument `alpha_growth` must be >= 1 (the penalty grows). "
                             f"Received: alpha_growth={alpha_growth!r}")

    def find(self, logits_fn: Callable[[tf.Tensor], tf.Tensor],
             x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Searches every example of the batch `x` (graph-safe).

        Args:
            logits_fn: the base model as a function `x -> logits` (a Keras classifier works).
            x: a float32 batch within `bounds`.

        Returns:
            `(z, classes, confidence, reached)`: the points chosen per example, the class the
            base model gives them, its confidence there, and whether the search met its
            objective.

        Example:
        >>> search = manidefense.shells.NCN(confidence=0.9, num_steps=5, num_stages=2)
        >>> z, classes, confidence, reached = search.find(model, tf.constant(x))
        >>> tuple(z.shape), tuple(classes.shape)
        ((8, 28, 28, 1), (8,))
        """
        num_classes = ops.shape(logits_fn(x[:1]))[-1]
        tiled, classes = _tile_over_classes(x, num_classes)
        z, feasible = self._solve(logits_fn, tiled, classes)
        distance = ops.where(feasible, norms.distance(tiled, z, self.norm), float("inf"))
        distance = _per_example(distance, num_classes)
        reached = ops.any(_per_example(feasible, num_classes), axis=1)
        chosen = _pick(z, ops.argmin(distance, axis=1), num_classes)
        return _answer(logits_fn, ops.where(_rows(reached, x), chosen, x), reached)

    def _solve(self, logits_fn, x, classes):
        log_p = float(np.log(self.confidence))
        log_target = float(np.log(self.confidence + 0.01 * (1 - self.confidence)))

        def stage(s, state):
            z, lam, done, best = state
            alpha = self.alpha * self.alpha_growth ** ops.cast(s, "float32")

            def lagrangian(z):
                g = log_target - _log_confidence(logits_fn, z, classes)
                penalty = (ops.square(ops.relu(lam + alpha * g)) - ops.square(lam)) / (2 * alpha)
                return _smooth_distance(z, x, self.norm) + penalty

            z = _adam(lagrangian, z, self.num_steps, self.step_size, self.bounds,
                      active=ops.logical_not(done))
            log_f = _log_confidence(logits_fn, z, classes)
            feasible = log_f >= log_p
            newly = ops.logical_and(feasible, ops.logical_not(done))
            best = ops.where(_rows(newly, x), z, best)
            lam = ops.where(done, lam, ops.relu(lam + alpha * (log_target - log_f)))
            return z, lam, ops.logical_or(done, feasible), best

        # A class already confident at x needs no search (distance 0).
        done = _log_confidence(logits_fn, x, classes) >= log_p
        lam = ops.zeros((ops.shape(x)[0],), dtype=x.dtype)
        _, _, done, best = ops.fori_loop(0, self.num_stages, stage, (x, lam, done, x))
        return best, done


@keras.saving.register_keras_serializable(package="manidefense")
class UnifiedSearch(SearchFactor):
    """The unified objective of eq. 5: argmin_z ‖z − x‖ − λ ‖F(z)‖∞.

    MCN_δ (eq. 3, a penalty on leaving the ball) and NCN_p (eq. 4, a penalty on missing p) are
    both this problem for some λ (μ = 1/λ). Solved per class t — min ‖z − x‖ − λ F(z)_t by
    Adam from x — keeping, per example, the class with the lowest objective. Large λ behaves
    like MCN with a large δ (confidence at almost any distance), small λ like the identity.

    Args:
        lambda_: the trade-off λ > 0 between confidence and distance.
        norm: distance, `"l2"`, `"linf"` or `"l1"`.
        num_steps: Adam steps per class.
        step_size: Adam learning rate, in the units of `bounds`.
        bounds: valid input range.

    Example:
    >>> shell = ModelShell(robust_cnn, UnifiedSearch(lambda_=2.0))
    """

    def __init__(self, lambda_: float, norm: str = "l2", num_steps: int = 100,
                 step_size: float = 0.01, *, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds=bounds)
        self.lambda_ = check_positive("lambda_", lambda_)
        self.norm = check_norm(norm)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.step_size = check_positive("step_size", step_size)

    def find(self, logits_fn: Callable[[tf.Tensor], tf.Tensor],
             x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Searches every example of the batch `x` (graph-safe).

        Args:
            logits_fn: the base model as a function `x -> logits` (a Keras classifier works).
            x: a float32 batch within `bounds`.

        Returns:
            `(z, classes, confidence, reached)`: the points chosen per example, the class the
            base model gives them, its confidence there, and whether the search met its
            objective.

        Example:
        >>> search = manidefense.shells.UnifiedSearch(lambda_=2.0, num_steps=5)
        >>> z, classes, confidence, reached = search.find(model, tf.constant(x))
        >>> tuple(z.shape), tuple(classes.shape)
        ((8, 28, 28, 1), (8,))
        """
        num_classes = ops.shape(logits_fn(x[:1]))[-1]
        tiled, classes = _tile_over_classes(x, num_classes)

        def objective(z):
            confidence = ops.exp(_log_confidence(logits_fn, z, classes))
            return _smooth_distance(z, tiled, self.norm) - self.lambda_ * confidence

        z = _adam(objective, tiled, self.num_steps, self.step_size, self.bounds)
        best = ops.argmin(_per_example(objective(z), num_classes), axis=1)
        chosen = _pick(z, best, num_classes)
        return _answer(logits_fn, chosen, ops.ones_like(best, dtype="bool"))


@keras.saving.register_keras_serializable(package="manidefense")
class SamplingVote(SearchFactor):
    """The sampling shell the paper mentions: draw points in the neighbourhood and take a
    majority vote weighted by the base model's confidence at each.

    Not a factor shell (no single point is classified): `ModelShell` outputs the vote shares
    Σ_i c_i onehot(argmax F(z_i)) / Σ_i c_i, c_i = ‖F(z_i)‖∞, over `num_samples` points drawn
    uniformly in the `radius`-ball and clipped to `bounds`, fresh on every call (the shell is
    then `randomized`, and an honest evaluation uses EoT). `find` returns, per example, the
    most confident sample voting for the winning class and the winner's vote share.

    Args:
        num_samples: points drawn per example.
        radius: radius of the ball in `norm`, in the units of `bounds`.
        norm: `"linf"`, `"l2"` or `"l1"`.
        seed: int or None.
        bounds: valid input range.

    Example:
    >>> shell = ModelShell(cnn, SamplingVote(num_samples=32, radius=0.1))
    """

    randomized = True

    def __init__(self, num_samples: int = 32, radius: float = 0.1, norm: str = "linf",
                 seed: int | None = None, *, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(bounds=bounds)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.radius = check_positive("radius", radius)
        self.norm = check_norm(norm)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Argument `seed` must be an int or None. Received: seed={seed!r}")
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def _samples(self, logits_fn, x):
        n = self.num_samples
        tiled = ops.repeat(x, n, axis=0)
        delta = norms.random_start(ops.shape(tiled), self.radius, self.norm,
                                   seed=self._seed_generator)
        z = norms.clip_to_bounds(tiled + delta, self.bounds)
        probs = ops.softmax(logits_fn(z), axis=-1)
        weights = ops.max(probs, axis=-1, keepdims=True)
        votes = ops.one_hot(ops.argmax(probs, axis=-1), probs.shape[-1]) * weights
        votes = ops.reshape(votes, (-1, n, probs.shape[-1]))
        shares = ops.sum(votes, axis=1) / ops.sum(votes, axis=(1, 2))[:, None]
        return z, ops.reshape(weights, (-1, n)), ops.reshape(ops.argmax(probs, -1), (-1, n)), shares

    def vote(self, logits_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """The shell's output: confidence-weighted vote shares, `(batch, num_classes)`.

        Args:
            logits_fn: the base model as a function `x -> logits`.
            x: a float32 batch within `bounds`.

        Returns:
            Vote shares summing to 1 per example; fresh samples on every call.

        Example:
        >>> vote = manidefense.shells.SamplingVote(num_samples=16, radius=0.1, seed=0)
        >>> shares = vote.vote(model, tf.constant(x))
        >>> tuple(shares.shape), bool(np.allclose(np.sum(shares, axis=1), 1.0))
        ((8, 10), True)
        """
        return self._samples(logits_fn, x)[3]

    def find(self, logits_fn: Callable[[tf.Tensor], tf.Tensor],
             x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Searches every example of the batch `x` (graph-safe).

        Args:
            logits_fn: the base model as a function `x -> logits` (a Keras classifier works).
            x: a float32 batch within `bounds`.

        Returns:
            `(z, classes, confidence, reached)`: per example, the most confident sample voting
            for the winning class, the winning class, its vote share, and True.

        Example:
        >>> search = manidefense.shells.SamplingVote(num_samples=16, radius=0.1, seed=0)
        >>> z, classes, confidence, reached = search.find(model, tf.constant(x))
        >>> tuple(z.shape), tuple(classes.shape)
        ((8, 28, 28, 1), (8,))
        """
        z, weights, labels, shares = self._samples(logits_fn, x)
        winner = ops.argmax(shares, axis=-1)
        for_winner = ops.where(ops.equal(labels, winner[:, None]), weights, -1.0)
        chosen = _pick(z, ops.argmax(for_winner, axis=1), self.num_samples)
        reached = ops.ones_like(winner, dtype="bool")
        return chosen, winner, ops.max(shares, axis=-1), reached


def _rows(mask, like):
    """A per-example mask shaped to broadcast against the batch `like`."""
    return ops.reshape(mask, (-1,) + (1,) * (len(like.shape) - 1))


def _log_confidence(logits_fn, z, classes):
    """log F(z)_t per row, t = `classes`."""
    log_probs = ops.log_softmax(logits_fn(z), axis=-1)
    return ops.take_along_axis(log_probs, ops.expand_dims(classes, 1), axis=1)[:, 0]


def _smooth_distance(z, x, norm):
    """‖z − x‖ per row (`norms.distance`), the L2 norm smoothed at z = x, where its gradient
    is 0/0."""
    if norm != "l2":
        return norms.distance(x, z, norm)
    flat = ops.reshape(z - x, (ops.shape(z)[0], -1))
    return ops.sqrt(ops.sum(ops.square(flat), axis=1) + 1e-12)


def _adam(fn, z, num_steps, step_size, bounds, active=None):
    """Minimises the per-row objective `fn` by Adam from `z`, within `bounds`; rows where
    `active` is False do not move."""
    low, high = bounds
    scale = 1.0 if active is None else ops.cast(_rows(active, z), z.dtype)

    def step(k, state):
        z, m, v = state
        _, _, grad = value_and_grad(lambda u: (fn(u), None), z)
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * ops.square(grad)
        t = ops.cast(k + 1, z.dtype)
        update = (m / (1 - 0.9**t)) / (ops.sqrt(v / (1 - 0.999**t)) + 1e-8)
        return ops.clip(z - step_size * scale * update, low, high), m, v

    return ops.fori_loop(0, num_steps, step, (z, ops.zeros_like(z), ops.zeros_like(z)))[0]
