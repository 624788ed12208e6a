"""Gabor: sparse impulses convolved with a random Gabor kernel, then contrast-equalised."""

import math

import keras
from keras import ops

from manidefense.attacks.unforeseen.base import LatentSpace, UnforeseenAttack
from manidefense.validation import check_fraction, check_positive_int

_MAX_SIDES = 10


def gabor_kernels(batch, size, seed):
    """One random Gabor kernel per example, `(size, size, batch, 1)` (depthwise layout).

    Coordinates span [-0.5, 0.5]; for orientation t, `g_t = exp(-(u² + v²) / (2 (s + 0.001)²))
    cos(2π λ u)` with `u, v` the rotated coordinates; the kernel sums `g_{t + πj/n}` over
    `j < n`. Per example: `n` in {1..10}, `s ~ U(0.1, 0.4)`, `λ ~ U(3, size/4)`, `t ~ U(0, π)`.
    """
    n = ops.floor(keras.random.uniform((batch,), 1.0, _MAX_SIDES + 1.0 - 1e-4, seed=seed))
    s = keras.random.uniform((batch,), 0.1, 0.4, seed=seed)
    lam = keras.random.uniform((batch,), 3.0, max(size / 4.0, 3.0 + 1e-3), seed=seed)
    t = keras.random.uniform((batch,), 0.0, math.pi, seed=seed)
    r = ops.linspace(-0.5, 0.5, size)
    ys, xs = ops.meshgrid(r, r, indexing="ij")
    j = ops.arange(_MAX_SIDES, dtype="float32")
    theta = t[:, None] + math.pi * j[None, :] / n[:, None]  # (batch, sides)
    theta = theta[:, :, None, None]
    u = xs * ops.cos(theta) + ys * ops.sin(theta)
    v = -xs * ops.sin(theta) + ys * ops.cos(theta)
    width = (s + 0.001)[:, None, None, None]
    g = ops.exp(-(u**2 + v**2) / (2.0 * width**2)) * ops.cos(
        2.0 * math.pi * lam[:, None, None, None] * u)
    used = ops.cast(j[None, :] < n[:, None], "float32")[:, :, None, None]
    kernels = ops.sum(g * used, axis=1)  # (batch, size, size)
    return ops.transpose(kernels, (1, 2, 0))[..., None]


@keras.saving.register_keras_serializable(package="manidefense")
class Gabor(UnforeseenAttack):
    """Adversarial Gabor noise (Kang et al.): an optimised, near-binary texture.

    Sparse impulses `z` in [-1, 1] (a random 1/14 of the pixels; only those may ever be
    non-zero — Kang et al.'s code inverts this mask by mistake, making the attack dense) are
    convolved with a random Gabor kernel per image (orientation, sides, envelope, frequency);
    a contrast equaliser pushes the result towards ±1 and it is min-max scaled to [0, 1] per
    image (the equaliser's gain and the min/max are constants for the gradient). The texture
    `N` (one channel) is added: `x_adv = clip(x + eps * N, 0, 1)`, so Gabor noise only
    brightens.

    `eps` is the texture's amplitude in unit pixel values (Kang et al.: 6.25..1600 on the
    0..255 scale, i.e. 0.0245..6.3 here).

    Args:
        eps: amplitude (unit scale, ≥ 0).
        step_size: sign step on the impulses; default `0.0316 / sqrt(num_steps)`.
        num_steps: optimisation steps.
        kernel_size: odd Gabor kernel side; default 23 (Kang et al.) for images of 64 pixels
            or more, else 13 (a few stripes per kernel at 28 pixels). Images must be at least
            this large.
        density: share of pixels holding impulses (1/14).
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.Gabor(eps=0.2, num_steps=50, seed=0)(model, x, y)
    """

    threat_model = "gabor"
    eps_units = "texture amplitude (unit pixel values)"

    def __init__(self, eps: float = 0.2, step_size: float | None = None, num_steps: int = 100,
                 kernel_size: int | None = None, density: float = 1 / 14, **kwargs):
        super().__init__(eps, step_size=step_size, num_steps=num_steps, **kwargs)
        if kernel_size is not None:
            kernel_size = check_positive_int("kernel_size", kernel_size)
            if kernel_size % 2 == 0 or kernel_size < 12:
                raise ValueError("Argument `kernel_size` must be an odd integer ≥ 13 (the "
                                 "frequency range needs it). Received: "
                                 f"kernel_size={kernel_size!r}")
        self.kernel_size = kernel_size
        self.density = check_fraction("density", density, 1e-6, 1.0)

    @property
    def min_size(self) -> int:
        """The smallest image side accepted: the kernel size (13 by default)."""
        return self.kernel_size or 13

    def _default_step_size(self):
        return math.sqrt(1e-3) / math.sqrt(self.num_steps)

    def _size(self, x):
        return self.kernel_size or (23 if min(x.shape[1], x.shape[2]) >= 64 else 13)

    def _space(self, x):
        shape = (ops.shape(x)[0], x.shape[1], x.shape[2])
        return LatentSpace(ops.zeros(shape), 1.0, "linf", (-1.0, 1.0))

    def _setup(self, x):
        shape = (ops.shape(x)[0], x.shape[1], x.shape[2])
        mask = ops.cast(self._uniform(shape) < self.density, "float32")
        initial = self._uniform(shape, -1.0, 1.0) * mask
        kernels = gabor_kernels(ops.shape(x)[0], self._size(x), self._seed_generator)
        return {"initial": initial, "mask": mask, "kernels": kernels}

    def _constraint(self, z, setup):
        return z * setup["mask"]

    def _render(self, x, z, setup):
        # Batch as channels: one depthwise convolution applies each example's own kernel.
        stacked = ops.transpose(z, (1, 2, 0))[None]  # (1, H, W, batch)
        noise = ops.depthwise_conv(stacked, setup["kernels"], padding="same")
        noise = ops.transpose(noise[0], (2, 0, 1))  # (batch, H, W)
        mean = ops.stop_gradient(ops.mean(noise, axis=(1, 2), keepdims=True))
        centred = noise - mean
        spread = ops.max(ops.abs(centred), axis=(1, 2), keepdims=True)
        ratio = ops.abs(centred) / ops.maximum(spread, 1e-8)
        gain = ops.stop_gradient(1.001 / (0.001 + ratio))
        texture = mean + centred * gain
        low = ops.stop_gradient(ops.min(texture, axis=(1, 2), keepdims=True))
        high = ops.stop_gradient(ops.max(texture, axis=(1, 2), keepdims=True))
        texture = (texture - low) / ops.maximum(high - low, 1e-8)
        return ops.clip(x + self.eps * texture[..., None], 0.0, 1.0)
