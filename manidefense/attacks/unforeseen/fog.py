"""Fog: a diamond-square fractal whose random displacements the attack optimises."""

import math

import keras
from keras import ops

from manidefense.attacks.unforeseen.base import LatentSpace, UnforeseenAttack


def fog_map(z, size, decay=2.0):
    """The diamond-square fractal of side `size` (a power of two) from displacements `z`.

    `z` is `(batch, size**2 - 1)` in [0, 1]: for each level i, three consecutive `(2^i, 2^i)`
    grids (square centres, then the two diamond-point families), each mapped to `[-w, w]`
    with `w` divided by `decay` per level. Neighbours wrap around (toroidal), as in the
    textbook algorithm (Kang et al.'s code rolls the centre grid by two instead of one; not
    copied).
    Returns `(batch, size, size)`.
    """
    batch = ops.shape(z)[0]
    grid = ops.zeros((batch, 1, 1), dtype=z.dtype)
    offset, amplitude, n = 0, 1.0, 1
    while n < size:
        k = n * n
        part = ops.reshape(z[:, offset:offset + 3 * k], (batch, 3, n, n))
        noise = amplitude * (2.0 * part - 1.0)
        c = grid
        c_down, c_right = ops.roll(c, -1, axis=1), ops.roll(c, -1, axis=2)
        s = (c + c_down + c_right + ops.roll(c_down, -1, axis=2)) / 4.0 + noise[:, 0]
        h = (s + ops.roll(s, 1, axis=1) + c + c_right) / 4.0 + noise[:, 1]
        v = (s + ops.roll(s, 1, axis=2) + c + c_down) / 4.0 + noise[:, 2]
        even = ops.reshape(ops.stack([c, h], axis=-1), (batch, n, 2 * n))
        odd = ops.reshape(ops.stack([v, s], axis=-1), (batch, n, 2 * n))
        grid = ops.reshape(ops.stack([even, odd], axis=2), (batch, 2 * n, 2 * n))
        offset, amplitude, n = offset + 3 * k, amplitude / decay, 2 * n
    return grid


def normalise_per_image(m):
    """Min-max scales each image of a batch to [0, 1] (never batch-global)."""
    axes = tuple(range(1, len(m.shape)))
    low = ops.min(m, axis=axes, keepdims=True)
    high = ops.max(m, axis=axes, keepdims=True)
    return (m - low) / ops.maximum(high - low, 1e-8)


@keras.saving.register_keras_serializable(package="manidefense")
class Fog(UnforeseenAttack):
    """Adversarial fog (Kang et al.): a fractal haze whose shape is optimised.

    The fog map `F` is a diamond-square fractal over a power-of-two canvas (`2^ceil(log2
    side)`, centre-cropped to the image), min-max normalised to [0, 1] per image and shared by
    all channels. The image is blended with it: `x_adv = (x + eps * F) / (1 + eps)` in unit
    scale. The attack optimises the fractal's `side^2 - 1` displacements in [0, 1] by sign
    steps (Kang et al.: 0.002236 for 200 steps).

    `eps` is the fog's strength in unit pixel values (Kang et al. quote it on the 0..255
    scale: their 128..8192 is 0.5..32 here); eps → ∞ gives pure fog. Kang et al. divide by
    the image's maximum instead of 1, which changes an image even at eps = 0; with maximum 1
    (most images) the two agree.

    Args:
        eps: fog strength (unit scale, ≥ 0).
        step_size: sign step on the displacements; default `0.0316 / sqrt(num_steps)`
            (Kang et al.'s 0.002236 at 200 steps).
        num_steps: optimisation steps.
        decay: the fractal's amplitude ratio between levels (2: Kang et al.'s attack).
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.Fog(eps=1.0, num_steps=50, seed=0)(model, x, y)
    """

    threat_model = "fog"
    eps_units = "fog strength (unit pixel values)"
    min_size = 2

    def __init__(self, eps: float = 1.0, step_size: float | None = None, num_steps: int = 100,
                 decay: float = 2.0, **kwargs):
        super().__init__(eps, step_size=step_size, num_steps=num_steps, **kwargs)
        if not decay > 1.0:
            raise ValueError(f"Argument `decay` must be > 1. Received: decay={decay!r}")
        self.decay = float(decay)

    def _default_step_size(self):
        return math.sqrt(1e-3) / math.sqrt(self.num_steps)

    @staticmethod
    def _canvas(x):
        return 2 ** math.ceil(math.log2(max(x.shape[1], x.shape[2])))

    def _space(self, x):
        dim = self._canvas(x) ** 2 - 1
        return LatentSpace(ops.full((ops.shape(x)[0], dim), 0.5), 0.5, "linf", (0.0, 1.0))

    def _setup(self, x):
        dim = self._canvas(x) ** 2 - 1
        return {"initial": self._uniform((ops.shape(x)[0], dim))}

    def _render(self, x, z, setup):
        size = self._canvas(x)
        height, width = x.shape[1], x.shape[2]
        top, left = (size - height) // 2, (size - width) // 2
        fog = fog_map(z, size, self.decay)[:, top:top + height, left:left + width]
        fog = normalise_per_image(fog)[..., None]
        return (x + self.eps * fog) / (1.0 + self.eps)
