"""Square Attack: score-based black-box random search with square-shaped updates.

Reference:
    Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV 2020 (arXiv:1912.00049): Algorithm 1 (the
    random search), the L∞ and L2 sampling distributions (Algorithms 2 and 3), the
    initialisations of Sections 3.1 and 3.2, and the p schedule of the authors' code.
"""

import keras
from keras import ops, random

from manidefense.attacks.base import Attack, better, select
from manidefense.attacks.norms import clip_to_bounds
from manidefense.attacks.objectives import is_successful, objective
from manidefense.validation import check_choice, check_non_negative, check_norm, check_positive_int

# The authors halve p at these iterations of a 10,000-query run; shorter runs rescale them.
_MILESTONES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_TINY = 1e-12


def p_schedule(p_init, i, num_queries):
    """The fraction of pixels a square covers at iteration `i` (piecewise constant)."""
    it = ops.floor(ops.cast(i, "float32") / float(num_queries) * 10000.0)
    halvings = sum(ops.cast(it > m, "float32") for m in _MILESTONES)
    return p_init * ops.power(0.5, halvings)


def _norm(v, axis):
    return ops.sqrt(ops.sum(ops.square(v), axis=axis, keepdims=True))


def _unit(v):
    """Scales each example of a (batch, h, w) map to unit L2 norm (zero stays zero)."""
    return v / ops.maximum(_norm(v, (1, 2)), _TINY)


def _signs(shape, seed):
    return ops.cast(random.randint(shape, 0, 2, seed=seed), "float32") * 2.0 - 1.0


def _window(batch, h, w, s, seed):
    """A random s×s window per example: local row/column coordinates and the inside mask.

    Each example draws its own position, as when it is attacked alone (the authors' batched
    code shares one position across the batch), uniformly over all h - s + 1 rows and
    w - s + 1 columns (their `randint(0, h - s)` never reaches the last row or column).
    """
    r0 = ops.minimum(ops.floor(random.uniform((batch, 1, 1), seed=seed) * (h - s + 1)), h - s)
    c0 = ops.minimum(ops.floor(random.uniform((batch, 1, 1), seed=seed) * (w - s + 1)), w - s)
    i = ops.reshape(ops.arange(h, dtype="float32"), (1, h, 1)) - r0
    j = ops.reshape(ops.arange(w, dtype="float32"), (1, 1, w)) - c0
    i, j = i + 0.0 * j, j + 0.0 * i  # broadcast both to (batch, h, w)
    inside = (i >= 0) & (i < s) & (j >= 0) & (j < s)
    return i, j, inside


def _bump(i, j, rows, cols, harmonic):
    """The authors' pseudo-Gaussian on a rows×cols rectangle: nested squares around its centre,
    ring k weighted 1/(k+1)^2, so the value at Chebyshev distance m is H(K) - H(m), with
    H(n) = sum_{k<=n} 1/k^2 and K = max(rows, cols) // 2 + 1 rings."""
    m = ops.maximum(ops.abs(i - ops.floor(rows / 2)), ops.abs(j - ops.floor(cols / 2)))
    last = harmonic.shape[0] - 1
    m = ops.cast(ops.clip(m, 0, last), "int32")  # outside the window: masked by the caller
    k = ops.cast(ops.clip(ops.floor(ops.maximum(rows, cols) / 2) + 1, 0, last), "int32")
    return ops.take(harmonic, k) - ops.take(harmonic, m)


def _l2_pattern(i, j, s, transpose, inside, harmonic):
    """Algorithm 3's update shape on an s×s window: the top half a positive bump, the bottom
    half a negative one (each unit norm), transposed where `transpose`; unit norm per example."""
    i, j = ops.where(transpose, j, i), ops.where(transpose, i, j)
    a = ops.floor(s / 2)
    up = ops.where(inside & (i < a), _bump(i, j, a, s, harmonic), 0.0)
    down = ops.where(inside & (i >= a), _bump(i - a, j, s - a, s, harmonic), 0.0)
    return _unit(_unit(up) - _unit(down))


def _harmonic(h, w):
    k = ops.arange(1, max(h, w) + 2, dtype="float32")
    return ops.concatenate([ops.zeros((1,)), ops.cumsum(1.0 / ops.square(k))])


def _linf_init(x, eps, bounds, seed):
    """Section 3.1: vertical stripes, one random ±eps per column and channel."""
    stripes = _signs((ops.shape(x)[0], 1, x.shape[2], x.shape[3]), seed)
    return clip_to_bounds(x + eps * stripes, bounds)


def _linf_candidate(x, x_best, p, eps, bounds, seed):
    """Algorithm 2: one s×s window per example set to ±eps, one sign per channel."""
    batch, (h, w, c) = ops.shape(x)[0], x.shape[1:]
    s = ops.clip(ops.round(ops.sqrt(p * h * w)), 1.0, max(min(h, w) - 1, 1))
    _, _, inside = _window(batch, h, w, s, seed)
    inside = inside[..., None]
    signs = _signs((batch, 1, 1, c), seed)

    def candidate(signs):
        return ops.where(inside, clip_to_bounds(x + eps * signs, bounds), x_best)

    # A draw that reproduces x_best wastes a query: flip a uniformly random non-empty set of
    # channels instead, which is the authors' "redraw until it changes" in one step.
    unchanged = ops.all(ops.abs(candidate(signs) - x_best) < 1e-7, axis=(1, 2, 3))
    if c <= 30:
        k = random.randint((batch, 1), 1, 2**c, seed=seed)
        bits = ops.bitwise_and(ops.right_shift(k, ops.arange(c, dtype=k.dtype)[None]), 1)
        flip = ops.reshape(bits > 0, (batch, 1, 1, c))
    else:
        flip = ops.ones((batch, 1, 1, c), dtype="bool")
    flip = ops.logical_and(flip, ops.reshape(unchanged, (-1, 1, 1, 1)))
    return candidate(ops.where(flip, -signs, signs))


def _l2_init(x, eps, bounds, seed, harmonic):
    """Section 3.2: a grid of s×s tiles (s = side // 5), each an Algorithm-3 pattern with a
    random sign per channel, rescaled to L2 norm eps."""
    batch, (h, w, c) = ops.shape(x)[0], x.shape[1:]
    s = max(min(h, w) // 5, 1)
    coords, tiles, valid, counts = [], [], [], []
    for size in (h, w):  # the grid is centred; the authors' code fits 5 tiles per side
        start = max((size - 5 * s) // 2, 0)
        counts.append((size - start) // s)
        pos = ops.arange(size, dtype="float32") - start
        tile = ops.floor(pos / s)
        coords.append(pos - tile * s)
        tiles.append(ops.cast(ops.clip(tile, 0, counts[-1] - 1), "int32"))
        valid.append((pos >= 0) & (tile < counts[-1]))
    n_h, n_w = counts

    def spread(v):  # per-tile values (batch, n_h, n_w, ...) -> per-pixel (batch, h, w, ...)
        return ops.take(ops.take(v, tiles[0], axis=1), tiles[1], axis=2)

    transpose = spread(random.uniform((batch, n_h, n_w), seed=seed) < 0.5)
    i = ops.reshape(coords[0], (1, h, 1)) + ops.zeros((1, 1, w))
    j = ops.reshape(coords[1], (1, 1, w)) + ops.zeros((1, h, 1))
    inside = ops.logical_and(valid[0][None, :, None], valid[1][None, None, :])
    pattern = _l2_pattern(i, j, float(s), transpose, inside, harmonic)
    delta = pattern[..., None] * spread(_signs((batch, n_h, n_w, c), seed))
    return clip_to_bounds(x + delta * eps / ops.maximum(_norm(delta, (1, 2, 3)), _TINY), bounds)


def _l2_candidate(x, x_best, p, eps, bounds, seed, harmonic):
    """Algorithm 3: move the perturbation mass of windows 1 and 2 into window 1 (a fresh
    pattern plus window 1's old content), spend any unused budget, rescale to norm eps."""
    batch, (h, w, c) = ops.shape(x)[0], x.shape[1:]
    s = ops.maximum(ops.round(ops.sqrt(p * h * w)), 3.0)
    s = ops.minimum(s + ops.cast(ops.equal(ops.mod(s, 2.0), 0.0), "float32"), min(h, w))
    delta = x_best - x
    i1, j1, in1 = _window(batch, h, w, s, seed)
    _, _, in2 = _window(batch, h, w, s, seed)
    m1, m2 = ops.cast(in1, "float32")[..., None], ops.cast(in2, "float32")[..., None]
    transpose = random.uniform((batch, 1, 1), seed=seed) < 0.5
    pattern = _l2_pattern(i1, j1, s, transpose, in1, harmonic)[..., None]
    fresh = pattern * _signs((batch, 1, 1, c), seed)
    old = delta * m1 / (_norm(delta * m1, (1, 2)) + 1e-10)
    # Each channel's window gets the mass of both windows plus its share of unused budget.
    room = ops.maximum(eps**2 - ops.square(_norm(delta, (1, 2, 3))), 0.0) / c
    budget = ops.sqrt(room + ops.square(_norm(delta * ops.maximum(m1, m2), (1, 2))))
    new = (fresh + old) / ops.maximum(_norm(fresh + old, (1, 2)), _TINY) * budget
    delta = ops.where(m1 > 0, new, ops.where(m2 > 0, 0.0, delta))
    return clip_to_bounds(x + delta * eps / ops.maximum(_norm(delta, (1, 2, 3)), _TINY), bounds)


def square_search(logits_fn, x, labels, target=None, *, eps, norm, num_queries, p_init,
                  loss="margin", bounds=(0.0, 1.0), seed=None):
    """The Square Attack on one NHWC float32 batch, graph-safe; returns `(x_adv, queries)`.

    Examples already misclassified (or at the target) are returned unchanged with 0 queries;
    the others get the initialisation (1 query) and then one proposal per query while not yet
    successful, accepted when it is more damaging (success first, then a higher loss).
    """
    x = ops.cast(x, "float32")
    h, w = x.shape[1:3]
    harmonic = _harmonic(h, w)

    def evaluate(z):
        logits = logits_fn(z)
        return objective(loss, logits, labels, target), is_successful(logits, labels, target)

    if norm == "linf":
        x_init = _linf_init(x, eps, bounds, seed)
        propose = lambda xb, p: _linf_candidate(x, xb, p, eps, bounds, seed)  # noqa: E731
    else:
        x_init = _l2_init(x, eps, bounds, seed, harmonic)
        propose = lambda xb, p: _l2_candidate(x, xb, p, eps, bounds, seed, harmonic)  # noqa: E731
    clean_loss, clean_success = evaluate(x)
    init_loss, init_success = evaluate(x_init)
    state = (ops.convert_to_tensor(0), select(clean_success, x, x_init),
             ops.where(clean_success, clean_loss, init_loss),
             ops.logical_or(clean_success, init_success),
             ops.where(clean_success, 0, 1))

    def cond(i, xb, bl, bs, q):
        return ops.logical_and(i < num_queries - 1, ops.logical_not(ops.all(bs)))

    def body(i, xb, bl, bs, q):
        active = ops.logical_not(bs)
        candidate = propose(xb, p_schedule(p_init, i, num_queries))
        value, success = evaluate(candidate)
        take = ops.logical_and(active, better(value, success, bl, bs))
        return (i + 1, select(take, candidate, xb), ops.where(take, value, bl),
                ops.logical_or(bs, ops.logical_and(take, success)),
                q + ops.cast(active, q.dtype))

    _, x_best, _, _, queries = ops.while_loop(cond, body, state)
    return x_best, queries


@keras.saving.register_keras_serializable(package="manidefense")
class Square(Attack):
    """Square Attack: random search over square-shaped perturbations, no gradients (L∞, L2).

    Each query proposes one change of the current best point: in L∞ an s×s window set to ±eps
    (one sign per channel), in L2 a pair of opposite pseudo-Gaussian bumps that take the mass
    of two windows, always at full norm eps. The window covers a fraction p of the image,
    starting at `p_init` and halved on the authors' schedule. A proposal is kept when it is
    more damaging; examples stop as soon as they are misclassified (or reach the target).

    Args:
        eps: perturbation budget in `norm`, in the units of `bounds`.
        norm: `"linf"` or `"l2"`.
        num_queries: model evaluations per example and restart (the initialisation included).
        p_init: initial fraction of pixels changed by a proposal, in (0, 1]. AutoAttack uses
            0.8; the authors' code suggests 0.05 (L∞) and 0.1 (L2) for undefended ImageNet
            models and larger values for robust ones.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss` (default `"margin"`, the
            paper's untargeted loss; the paper's targeted runs use `"ce"`), `seed`,
            `verbose`, `jit_compile`, `output` of `Attack`.

    Inputs must be images `(batch, height, width, channels)`.

    Example:
    >>> attack = manidefense.attacks.Square(eps=0.05, num_queries=5000, seed=0)
    >>> x_adv = attack(model, x, y)

    Reference:
        Andriushchenko et al., ECCV 2020: Algorithm 1 with the sampling distributions of
        Algorithms 2 (L∞) and 3 (L2); initialisations of Sections 3.1 and 3.2.
    """

    uses_gradients = False  # queries outputs only (the evaluation audits it as such)

    def __init__(self, eps: float = 0.1, norm: str = "linf", num_queries: int = 1000,
                 p_init: float = 0.8, **kwargs):
        kwargs.setdefault("loss", "margin")
        super().__init__(**kwargs)
        self.eps = check_non_negative("eps", eps)
        self.norm = check_choice("norm", check_norm(norm), ("linf", "l2"))
        self.num_queries = check_positive_int("num_queries", num_queries)
        self.p_init = check_non_negative("p_init", p_init)
        if not 0.0 < self.p_init <= 1.0:
            raise ValueError(f"Argument `p_init` must be in (0, 1]. Received: p_init={p_init!r}")

    def _attack_batch(self, logits_fn, x, labels, target):
        if len(x.shape) != 4:
            raise ValueError(
                "Argument `x` must be a batch of images (batch, height, width, channels) for "
                f"Square. Received: x.shape={tuple(x.shape)}"
            )
        if self.eps == 0:
            return x
        return square_search(
            logits_fn, x, labels, target, eps=self.eps, norm=self.norm,
            num_queries=self.num_queries, p_init=self.p_init, loss=self.loss,
            bounds=self.bounds, seed=self._seed_generator,
        )[0]
