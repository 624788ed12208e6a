"""Snow: sparse flakes drawn as short streaks, their intensities optimised."""

import math

import keras
from keras import ops

from manidefense.attacks.unforeseen.base import LatentSpace, UnforeseenAttack, gaussian_kernel
from manidefense.validation import check_non_negative, check_positive_int

_LAYERS = 7
_CELL = 4
_BUDGET_BLOCK = 8
_BUDGET = 0.2
# Offsets of each flake layer inside its 4×4 cell (Kang et al.: four along the top row, three
# down the left column).
_OFFSETS = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 0), (3, 0)]


def streak_kernels(size, seed, num=_LAYERS):
    """`num` random anti-aliased streaks of side `size`, shape `(size, size, num, 1)`.

    Each is a line through the centre, point-symmetric, to a random point whose offsets are
    in [size/6, size/2) pixels (Kang et al.: [2, 6] in 13 pixels), 1, 3 or 5 pixels wide
    (probabilities 0.6, 0.3, 0.1; scaled by size/13), all mirrored left-right with probability
    1/2 (a common fall direction), then blurred by a 3×3 Gaussian of sigma U(0.41, 0.6).
    """
    half = (size - 1) / 2.0
    low = max(1.0, size / 6.0)
    ends = keras.random.uniform((num, 2), low, half + 1e-3, seed=seed)
    ends = ops.floor(ends)
    flip = ops.where(keras.random.uniform((), seed=seed) < 0.5, -1.0, 1.0)
    ends = ops.stack([ends[:, 0], ends[:, 1] * flip], axis=1)
    u = keras.random.uniform((num,), seed=seed)
    width = ops.where(u < 0.6, 1.0, ops.where(u < 0.9, 3.0, 5.0)) * max(size / 13.0, 0.5)
    r = ops.arange(size, dtype="float32") - half
    rows, cols = ops.meshgrid(r, r, indexing="ij")
    q = ops.stack([rows, cols], axis=-1)[None]  # (1, size, size, 2)
    p = ends[:, None, None, :]  # (num, 1, 1, 2)
    t = ops.clip(ops.sum(q * p, axis=-1) / ops.sum(p * p, axis=-1), -1.0, 1.0)
    dist = ops.sqrt(ops.sum(ops.square(q - t[..., None] * p), axis=-1) + 1e-12)
    lines = ops.clip(width[:, None, None] / 2.0 + 0.5 - dist, 0.0, 1.0)  # (num, size, size)
    sigma = keras.random.uniform((), 0.41, 0.6, seed=seed)
    blur = ops.reshape(gaussian_kernel(3, sigma), (3, 3, 1, 1))
    blurred = ops.conv(lines[..., None], blur, padding="same")  # (num, size, size, 1)
    return ops.transpose(blurred, (1, 2, 0, 3))


def density_budget(z, budget=_BUDGET, block=_BUDGET_BLOCK):
    """Rescales every `block`×`block` block of each flake layer to mean ≤ `budget`.

    `z` is `(batch, gh, gw, layers)`; partial blocks at the border use their own size.
    """
    gh, gw = z.shape[1], z.shape[2]
    ph, pw = -gh % block, -gw % block
    padded = ops.pad(z, ((0, 0), (0, ph), (0, pw), (0, 0)))
    ones = ops.pad(ops.ones((1, gh, gw, 1)), ((0, 0), (0, ph), (0, pw), (0, 0)))
    bh, bw = (gh + ph) // block, (gw + pw) // block

    def block_sums(t):
        t = ops.reshape(t, (ops.shape(t)[0], bh, block, bw, block, t.shape[-1]))
        return ops.sum(t, axis=(2, 4), keepdims=True)

    mean = block_sums(padded) / block_sums(ones)
    factor = ops.minimum(1.0, budget / ops.maximum(mean, 1e-12))
    factor = ops.broadcast_to(factor, (ops.shape(z)[0], bh, block, bw, block, z.shape[-1]))
    factor = ops.reshape(factor, (ops.shape(z)[0], gh + ph, gw + pw, z.shape[-1]))
    return z * factor[:, :gh, :gw, :]


@keras.saving.register_keras_serializable(package="manidefense")
class Snow(UnforeseenAttack):
    """Adversarial snow (Kang et al.): bright streaks whose intensities are optimised.

    Seven flake layers, each a sparse grid with one flake per 4×4 cell (a different cell
    offset per layer), intensity `z^4` with `z` in (0, 1], drawn as a streak (one random kernel
    per layer, shared by the batch and redrawn on every call). The snow map `S` (one channel)
    is added after a whitening of the image: `x' = (1 - w) x + w max(x, 1.5 lum(x) + 0.5)`,
    `x_adv = clip(x' + eps * S, 0, 1)`. After every sign step the intensities are clipped to
    [1e-9, 1] and each 8×8 block of a layer's grid is rescaled to mean ≤ 0.2 (the density
    budget: the attack cannot fill the sky).

    `eps` is the snow's brightness in unit pixel values (Kang et al.: 0.0625..8 on
    ImageNet). With `whiten > 0` the image changes even at eps = 0 (Kang et al. whiten
    always); the default whitens colour images (0.25) but not grayscale ones, where
    `lum(x) = x` turns the whitening into a global brightening of the background.

    Args:
        eps: snow brightness (unit scale, ≥ 0).
        step_size: sign step on the intensities; default `0.0316 / sqrt(num_steps)`.
        num_steps: optimisation steps.
        flake_size: streak kernel side (odd); default 13 for images of 128 pixels or more,
            else 7 (a 13-pixel streak is half a 28-pixel image).
        whiten: whitening weight `w`; None: 0.25 for 3 channels, 0 otherwise.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.Snow(eps=0.5, num_steps=50, seed=0)(model, x, y)
    """

    threat_model = "snow"
    eps_units = "snow brightness (unit pixel values)"
    min_size = _CELL

    def __init__(self, eps: float = 0.5, step_size: float | None = None, num_steps: int = 100,
                 flake_size: int | None = None, whiten: float | None = None, **kwargs):
        super().__init__(eps, step_size=step_size, num_steps=num_steps, **kwargs)
        if flake_size is not None:
            flake_size = check_positive_int("flake_size", flake_size)
            if flake_size % 2 == 0 or flake_size < 3:
                raise ValueError("Argument `flake_size` must be an odd integer ≥ 3. "
                                 f"Received: flake_size={flake_size!r}")
        self.flake_size = flake_size
        if whiten is not None:
            whiten = check_non_negative("whiten", whiten)
            if whiten > 1.0:
                raise ValueError(
                    f"Argument `whiten` must be in [0, 1]. Received: whiten={whiten!r}")
        self.whiten = whiten

    def _default_step_size(self):
        return math.sqrt(1e-3) / math.sqrt(self.num_steps)

    def _is_identity(self):
        return self.eps == 0 and not self._whitening(3)

    def _whitening(self, channels):
        if self.whiten is not None:
            return self.whiten
        return 0.25 if channels == 3 else 0.0

    @staticmethod
    def _grid(x):
        return (-(-x.shape[1] // _CELL), -(-x.shape[2] // _CELL), _LAYERS)

    def _space(self, x):
        shape = (ops.shape(x)[0], *self._grid(x))
        return LatentSpace(ops.full(shape, 0.5), 0.5, "linf", (1e-9, 1.0))

    def _setup(self, x):
        shape = (ops.shape(x)[0], *self._grid(x))
        initial = density_budget(ops.exp(-self._uniform(shape) / 0.2))
        size = self.flake_size or (13 if min(x.shape[1], x.shape[2]) >= 128 else 7)
        return {"initial": initial, "kernels": streak_kernels(size, self._seed_generator)}

    def _constraint(self, z, setup):
        return density_budget(ops.clip(z, 1e-9, 1.0))

    def _render(self, x, z, setup):
        batch, (gh, gw, layers) = ops.shape(z)[0], z.shape[1:]
        cells = ops.stack([ops.pad(ops.ones((1, 1)), ((r, _CELL - 1 - r), (c, _CELL - 1 - c)))
                           for r, c in _OFFSETS], axis=-1)
        flakes = ops.reshape(ops.power(z, 4.0), (batch, gh, 1, gw, 1, layers))
        flakes = flakes * ops.reshape(cells, (1, 1, _CELL, 1, _CELL, layers))
        flakes = ops.reshape(flakes, (batch, gh * _CELL, gw * _CELL, layers))
        flakes = flakes[:, :x.shape[1], :x.shape[2], :]
        snow = ops.conv(flakes, setup["kernels"], padding="same")  # (batch, H, W, 1)
        weight = self._whitening(x.shape[-1])
        if weight:
            if x.shape[-1] == 3:
                lum = ops.sum(x * ops.convert_to_tensor([0.2126, 0.7152, 0.0722]), axis=-1,
                              keepdims=True)
            else:
                lum = ops.mean(x, axis=-1, keepdims=True)
            x = (1.0 - weight) * x + weight * ops.maximum(x, 1.5 * lum + 0.5)
        return ops.clip(x + self.eps * snow, 0.0, 1.0)
