"""Lp geometry for attacks: the one home of distances, projections, steps and random starts.

Every function works on a batch (first axis) and treats the remaining axes as one vector per
example. `eps` may be a Python number or a tensor of shape `(batch,)` (one budget per example).
Nothing else in the library writes `clip(x - x0, -eps, eps)` or a norm by hand.

Reference:
    Duchi, Shalev-Shwartz, Singer, Chandra, "Efficient Projections onto the l1-Ball for
    Learning in High Dimensions", ICML 2008 (the exact, sort-based L1 projection).
    Tramèr & Boneh, "Adversarial Training and Robustness for Multiple Perturbations",
    NeurIPS 2019 (the sparse top-k steepest-ascent step for L1, "SLIDE").
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops, random

from manidefense.validation import check_norm

# A relative safety margin for the final L1/L2 projection: float32 rounding of `x + delta`
# over hundreds of coordinates can otherwise push a boundary perturbation a hair past eps.
_FINAL_MARGIN = 1e-5
#: The box of a variable without bounds (latent codes, flow fields, DCT coefficients).
UNBOUNDED = (-float("inf"), float("inf"))
_TINY = 1e-12


def _flat(x):
    return ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))


def _column(eps, dtype="float32"):
    """`eps` as a (batch, 1) or scalar tensor, to broadcast against flattened examples."""
    eps = ops.cast(eps, dtype)
    return ops.reshape(eps, (-1, 1)) if len(eps.shape) == 1 else eps


def lp_norm(v: tf.Tensor, norm: str) -> tf.Tensor:
    """Per-example Lp norm of a batch `v`; returns shape `(batch,)`.

    Args:
        v: a batch `(batch, ...)`; each example is one vector.
        norm: `"linf"`, `"l2"` or `"l1"`.

    Returns:
        The norms, shape `(batch,)`.

    Example:
    >>> v = np.array([[3.0, -4.0], [1.0, 0.0]], "float32")
    >>> [lp_norm(v, n).numpy().tolist() for n in ("linf", "l2", "l1")]
    [[4.0, 1.0], [5.0, 1.0], [7.0, 1.0]]
    """
    norm = check_norm(norm)
    flat = _flat(v)
    if norm == "linf":
        return ops.max(ops.abs(flat), axis=1)
    if norm == "l2":
        return ops.sqrt(ops.sum(ops.square(flat), axis=1))
    return ops.sum(ops.abs(flat), axis=1)


def distance(x: tf.Tensor, x_adv: tf.Tensor, norm: str) -> tf.Tensor:
    """Per-example Lp distance between two batches; returns shape `(batch,)`.

    Args:
        x: the clean batch.
        x_adv: a batch of the same shape.
        norm: `"linf"`, `"l2"` or `"l1"`.

    Returns:
        `lp_norm(x_adv - x, norm)`, shape `(batch,)`.

    Example:
    >>> x_adv = manidefense.attacks.FGSM(eps=0.1)(model, x, y)
    >>> bool(np.all(distance(x, x_adv, "linf").numpy() <= 0.1 + 1e-6))
    True
    """
    return lp_norm(ops.subtract(x_adv, x), norm)


def _project_l1(flat, eps):
    """Exact Euclidean projection of each row onto the L1 ball of radius eps (Duchi et al.)."""
    a = ops.abs(flat)
    d = flat.shape[1]
    u = ops.flip(ops.sort(a, axis=1), axis=1)
    css = ops.cumsum(u, axis=1)
    j = ops.arange(1, d + 1, dtype=flat.dtype)
    # The condition holds on a prefix of the sorted coordinates, so its count is rho.
    rho = ops.sum(ops.cast(u - (css - eps) / j > 0, "int32"), axis=1, keepdims=True)
    rho = ops.maximum(rho, 1)
    css_rho = ops.take_along_axis(css, rho - 1, axis=1)
    theta = (css_rho - eps) / ops.cast(rho, flat.dtype)
    shrunk = ops.sign(flat) * ops.maximum(a - theta, 0.0)
    inside = ops.sum(a, axis=1, keepdims=True) <= eps
    return ops.where(inside, flat, shrunk)


def project(delta: tf.Tensor, eps: float | tf.Tensor, norm: str) -> tf.Tensor:
    """Projects each perturbation onto the Lp ball of radius `eps` (nearest point, not rescale).

    Points already inside the ball are returned unchanged, so the projection is idempotent and
    never increases a norm.

    Args:
        delta: perturbations `(batch, ...)`.
        eps: radius, a number or a `(batch,)` tensor.
        norm: `"linf"`, `"l2"` or `"l1"`.

    Returns:
        The projected perturbations, shaped like `delta`.

    Example:
    >>> delta = np.array([[3.0, -4.0]], "float32")
    >>> [project(delta, 1.0, n).numpy().tolist() for n in ("linf", "l2", "l1")]
    [[[1.0, -1.0]], [[0.6..., -0.8...]], [[0.0, -1.0]]]
    """
    norm = check_norm(norm)
    shape = ops.shape(delta)
    flat = _flat(delta)
    eps = _column(eps, flat.dtype)
    if norm == "linf":
        out = ops.minimum(ops.maximum(flat, -eps), eps)
    elif norm == "l2":
        n = ops.sqrt(ops.sum(ops.square(flat), axis=1, keepdims=True))
        out = flat * ops.minimum(1.0, eps / ops.maximum(n, _TINY))
    else:
        out = _project_l1(flat, eps)
    return ops.reshape(out, shape)


def ascent_direction(grad: tf.Tensor, norm: str, l1_sparsity: float = 0.99) -> tf.Tensor:
    """Steepest-ascent direction of unit Lp norm for a gradient (the dual-norm maximiser).

    linf: `sign(g)`; l2: `g / ||g||_2`; l1: the sparse step of SLIDE: the sign of the gradient
    on its top `(1 - l1_sparsity)` fraction of coordinates by magnitude (at least one),
    scaled to unit L1 norm. A zero gradient gives a zero direction.

    Args:
        grad: gradients `(batch, ...)`.
        norm: `"linf"`, `"l2"` or `"l1"`.
        l1_sparsity: for L1, the fraction of coordinates left at zero.

    Returns:
        Directions shaped like `grad`, of unit `norm` (or zero).

    Example:
    >>> g = np.array([[3.0, -4.0]], "float32")
    >>> [ascent_direction(g, n).numpy().tolist() for n in ("linf", "l2", "l1")]
    [[[1.0, -1.0]], [[0.6..., -0.8...]], [[0.0, -1.0]]]
    """
    norm = check_norm(norm)
    shape = ops.shape(grad)
    flat = _flat(grad)
    if norm == "linf":
        out = ops.sign(flat)
    elif norm == "l2":
        n = ops.sqrt(ops.sum(ops.square(flat), axis=1, keepdims=True))
        out = flat / ops.maximum(n, _TINY)
    else:
        d = flat.shape[1]
        k = max(1, int(round((1.0 - l1_sparsity) * d)))
        a = ops.abs(flat)
        kth = ops.top_k(a, k, sorted=True)[0][:, k - 1:k]
        out = ops.sign(flat) * ops.cast(a >= kth, flat.dtype)
        out = out / ops.maximum(ops.sum(ops.abs(out), axis=1, keepdims=True), 1.0)
    return ops.reshape(out, shape)


def _l1_box_step(grad, x, size, bounds, sparsity):
    """Box-aware sparse L1 step on flattened rows: SLIDE's top-k step that never overflows.

    Coordinates are visited by decreasing |gradient|; each moves along the gradient's sign by
    at most `size / k` (k = the top `1 - sparsity` share, as in SLIDE) and at most its room to
    the box, until `size` is spent. With one coordinate per step (k=1) this is the exact
    maximiser of <g, delta> over {||delta||_1 <= size, x + delta in the box}; a step is never
    wasted on a pixel that clipping would undo.
    """
    low, high = bounds
    k = max(1, int(round((1.0 - sparsity) * grad.shape[1])))
    room = ops.where(grad > 0, high - x, ops.where(grad < 0, x - low, ops.zeros_like(x)))
    room = ops.minimum(ops.maximum(room, 0.0), size / k)
    order = ops.argsort(-ops.abs(grad), axis=1)
    room_sorted = ops.take_along_axis(room, order, axis=1)
    spent_before = ops.cumsum(room_sorted, axis=1) - room_sorted
    alloc_sorted = ops.minimum(ops.maximum(size - spent_before, 0.0), room_sorted)
    alloc = ops.take_along_axis(alloc_sorted, ops.argsort(order, axis=1), axis=1)
    return ops.sign(grad) * alloc


def ascent_step(grad: tf.Tensor, x: tf.Tensor, size: float | tf.Tensor, norm: str,
                bounds: tuple[float, float], l1_sparsity: float = 0.99) -> tf.Tensor:
    """The perturbation of one steepest-ascent step of length `size` from `x` inside the box.

    linf: `size * sign(g)`; l2: `size * g / ||g||` over the coordinates not blocked by the box;
    l1: the box-aware sparse step (see `_l1_box_step`). Callers project onto the eps-ball
    and clip afterwards.

    Args:
        grad: gradients `(batch, ...)` at `x`.
        x: the current point, inside `bounds`.
        size: step length in `norm`.
        norm: `"linf"`, `"l2"` or `"l1"`.
        bounds: the box `(low, high)`.
        l1_sparsity: for L1, the fraction of coordinates left unchanged.

    Returns:
        The step (a perturbation shaped like `grad`).

    Example:
    >>> g = np.array([[1.0, -2.0]], "float32")
    >>> x0 = np.array([[1.0, 0.5]], "float32")  # the first coordinate is at the upper bound
    >>> ascent_step(g, x0, 0.1, "l2", (0.0, 1.0)).numpy().tolist()
    [[0.0, -0.1...]]
    """
    norm = check_norm(norm)
    if norm == "linf":
        return size * ops.sign(grad)
    grad = mask_saturated(grad, x, bounds)
    if norm == "l2":
        return size * ascent_direction(grad, "l2")
    step = _l1_box_step(_flat(grad), _flat(x), size, bounds, l1_sparsity)
    return ops.reshape(step, ops.shape(grad))


def l1_vertex(grad: tf.Tensor, x: tf.Tensor, eps: float | tf.Tensor,
              bounds: tuple[float, float]) -> tf.Tensor:
    """Frank–Wolfe's vertex: `argmax <g, delta>` over `||delta||_1 <= eps`, `x + delta` in the box.

    Coordinates are filled by decreasing |gradient|, each all the way to the box in the
    gradient's sign, until the L1 budget is spent (the last one takes the remainder); the
    exact linear maximiser, as in Kang et al.'s Frank–Wolfe L1 attack.

    Args:
        grad: gradients `(batch, ...)` at `x`.
        x: the current point, inside `bounds`.
        eps: the L1 budget.
        bounds: the box `(low, high)`.

    Returns:
        `delta`, shaped like `grad`.

    Example:
    >>> g = np.array([[3.0, -2.0, 1.0]], "float32")
    >>> x0 = np.array([[0.8, 0.5, 0.5]], "float32")
    >>> l1_vertex(g, x0, 0.5, (0.0, 1.0)).numpy().round(3)  # 0.2 fills coordinate 0's room
    array([[ 0.2, -0.3,  0. ]], dtype=float32)
    """
    step = _l1_box_step(_flat(grad), _flat(x), eps, bounds, 1.0)
    return ops.reshape(step, ops.shape(grad))


def mask_saturated(grad: tf.Tensor, x: tf.Tensor, bounds: tuple[float, float]) -> tf.Tensor:
    """Zeroes gradient coordinates that point out of the box at a saturated coordinate.

    A coordinate already at a bound cannot move further that way, so for L1/L2 steps its share
    of the step budget would be wasted.

    Args:
        grad: gradients `(batch, ...)` at `x`.
        x: the current point.
        bounds: the box `(low, high)`.

    Returns:
        `grad` with the blocked coordinates set to 0.

    Example:
    >>> g = np.array([[1.0, -1.0, 1.0]], "float32")
    >>> mask_saturated(g, np.array([[1.0, 0.0, 0.5]], "float32"), (0.0, 1.0)).numpy().tolist()
    [[0.0, 0.0, 1.0]]
    """
    low, high = bounds
    blocked = ops.logical_or(
        ops.logical_and(x <= low, grad < 0), ops.logical_and(x >= high, grad > 0)
    )
    return ops.where(blocked, ops.zeros_like(grad), grad)


def random_start(shape: tuple[int, ...], eps: float | tf.Tensor, norm: str,
                 seed: int | keras.random.SeedGenerator | None = None,
                 dtype: str = "float32") -> tf.Tensor:
    """Samples perturbations uniformly from the Lp ball of radius `eps`.

    linf: uniform in the cube; l2: Gaussian direction times radius `eps * U^(1/d)`; l1: signed
    exponential variates divided by their sum plus one more (uniform on the cross-polytope).

    Args:
        shape: static shape of the batch.
        eps: radius, scalar or `(batch,)`.
        norm: `"linf"`, `"l2"` or `"l1"`.
        seed: an int (a fixed stream), a `keras.random.SeedGenerator` (advances on every
            call), or None (Keras' global generator; not inside a compiled function).
        dtype: the dtype of the perturbations.

    Returns:
        Perturbations of shape `shape` with `lp_norm <= eps`.

    Example:
    >>> delta = random_start((4, 28, 28, 1), 0.5, "l2", seed=0)
    >>> delta.shape, bool(np.all(lp_norm(delta, "l2").numpy() <= 0.5 + 1e-6))
    (TensorShape([4, 28, 28, 1]), True)
    """
    norm = check_norm(norm)
    d = int(np.prod(shape[1:]))
    flat_shape = (shape[0], d)
    eps = _column(eps, dtype)
    # An int seed is a fixed stream: derive distinct seeds for the draws so they are
    # independent; a SeedGenerator advances by itself.
    s1, s2 = (seed, seed + 1) if isinstance(seed, int) else (seed, seed)
    if norm == "linf":
        flat = random.uniform(flat_shape, -1.0, 1.0, dtype=dtype, seed=s1) * eps
    elif norm == "l2":
        g = random.normal(flat_shape, dtype=dtype, seed=s1)
        g = g / ops.maximum(ops.sqrt(ops.sum(ops.square(g), axis=1, keepdims=True)), _TINY)
        r = random.uniform((shape[0], 1), dtype=dtype, seed=s2) ** (1.0 / d)
        flat = g * r * eps
    else:
        e = -ops.log(random.uniform((shape[0], d + 1), 1e-12, 1.0, dtype=dtype, seed=s1))
        signs = ops.sign(random.uniform(flat_shape, -1.0, 1.0, dtype=dtype, seed=s2))
        flat = signs * e[:, :d] / ops.sum(e, axis=1, keepdims=True) * eps
    return ops.reshape(flat, shape)


def clip_to_bounds(x: tf.Tensor, bounds: tuple[float, float]) -> tf.Tensor:
    """Clips inputs to the valid range `bounds=(low, high)`.

    Args:
        x: inputs.
        bounds: the box `(low, high)`.

    Returns:
        `clip(x, low, high)`.

    Example:
    >>> clip_to_bounds(np.array([[-0.5, 0.5, 2.0]], "float32"), (0.0, 1.0)).numpy().tolist()
    [[0.0, 0.5, 1.0]]
    """
    return ops.clip(x, bounds[0], bounds[1])


def constrain(x: tf.Tensor, x_adv: tf.Tensor, eps: float | tf.Tensor, norm: str,
              bounds: tuple[float, float]) -> tf.Tensor:
    """Returns `x_adv` projected onto the eps-ball around `x` and clipped to `bounds`.

    The last line of defence of every attack, exact in float32 arithmetic: the projection
    aims a hair inside the ball (relative margin 1e-5), `x + delta` is rounded towards `x`
    wherever float32 rounding moved a coordinate outwards, so no coordinate's change exceeds
    the projected one, and the distance is then checked in float64. An example that still
    exceeds `eps` (or holds a NaN from a broken model gradient) falls back to the clean input
    rather than break the budget.

    Args:
        x: the clean batch.
        x_adv: candidate adversarial inputs, shaped like `x`.
        eps: the budget, a number or a `(batch,)` tensor.
        norm: `"linf"`, `"l2"` or `"l1"`.
        bounds: the box `(low, high)`.

    Returns:
        A float32 tensor within `eps` of `x` in `norm` and inside `bounds`.

    Example:
    >>> x0 = np.full((1, 4), 0.5, "float32")
    >>> np.allclose(constrain(x0, x0 + 0.3, 0.1, "linf", (0.0, 1.0)), 0.6)
    True
    """
    norm = check_norm(norm)
    x = ops.cast(x, "float32")
    radius = ops.cast(eps, "float32") * (1.0 - _FINAL_MARGIN)
    delta = project(ops.subtract(ops.cast(x_adv, "float32"), x), radius, norm)
    out = clip_to_bounds(ops.add(x, delta), bounds)
    moved = ops.subtract(ops.cast(out, "float64"), ops.cast(x, "float64"))
    outward = ops.abs(moved) > ops.abs(ops.cast(delta, "float64"))
    out = ops.where(outward, ops.nextafter(out, x), out)
    measured = distance(ops.cast(x, "float64"), ops.cast(out, "float64"), norm)
    ok = ops.logical_and(measured <= ops.cast(eps, "float64"), ops.all(
        ops.isfinite(_flat(out)), axis=1))
    return ops.where(ops.reshape(ok, (-1,) + (1,) * (len(x.shape) - 1)), out, x)
