"""The base of the unforeseen attacks: optimise a transform's hidden variables, not pixels.

Each attack is an image synthesis `x_adv = render(x, z)` with hidden variables `z` (a fog
fractal's displacements, snow flake intensities, Gabor impulses, a flow field, DCT
coefficients) and a feasible set for `z`. The optimisation is the library's one PGD loop
(`attacks.pgd.pgd_loop`) run on `z -> model(render(x, z))`: sign (or normalised) steps on the
objective, projection onto `z`'s ball and box, the attack's own constraint (a density budget,
a sparsity mask), the most damaging iterate kept. Subclasses only describe the variables and
the rendering.

Images are rendered in unit scale: `x` is mapped from `bounds` to [0, 1] and back, so the
published settings (pixel values on 0..255 or 0..1) keep their meaning for any `bounds`.

Reference:
    Kang, Sun, Hendrycks, Brown, Steinhardt, "Testing Robustness Against Unforeseen
    Adversaries", arXiv:1908.08016 (2019).
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense.attacks import norms
from manidefense.attacks.base import Attack
from manidefense.attacks.pgd import pgd_loop
from manidefense.validation import (
    check_images,
    check_non_negative,
    check_positive,
    check_positive_int,
)


class LatentSpace:
    """Where an attack's hidden variables live: an eps-ball around `center` inside `box`."""

    def __init__(self, center, radius, norm="linf", box=norms.UNBOUNDED, method="pgd"):
        self.center, self.radius, self.norm, self.box, self.method = (
            center, radius, norm, box, method)


class UnforeseenAttack(Attack):
    """Base class: hidden variables optimised by `pgd_loop`, rendered into images.

    Args:
        eps: the attack's strength, in the units each subclass documents.
        step_size: step on the hidden variables; default per attack (Kang et al.'s rule).
        num_steps: optimisation steps (Kang et al. evaluate with 200, train with 10).
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Subclasses write `_space(shape)`, `_setup(x)` (random per-batch constants and the initial
    variables, drawn from the attack's seed) and `_render(x, z, setup)` on unit-scale images.
    """

    # The threat model's name in reports; never mixed with the Lp worst case.
    threat_model = None
    # Units of `eps`, for reports and plots.
    eps_units = ""
    # The smallest image side the transform supports.
    min_size = 1

    def __init__(self, eps: float, step_size: float | None = None, num_steps: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.eps = check_non_negative("eps", eps)
        self.step_size = None if step_size is None else check_positive("step_size", step_size)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self._random_graphs = {}

    # === To be written by subclasses ===

    def _space(self, x):
        """A `LatentSpace` for a unit-scale batch `x`."""
        raise NotImplementedError

    def _setup(self, x):
        """`dict` of per-batch constants; key `"initial"` holds the starting variables."""
        raise NotImplementedError

    def _render(self, x, z, setup):
        """The transformed unit-scale images for variables `z`."""
        raise NotImplementedError

    def _default_step_size(self):
        return self.eps / math.sqrt(self.num_steps)

    def _constraint(self, z, setup):
        return z

    def _penalty(self):
        """None, or `z -> (batch,)` values subtracted from the objective."""
        return None

    def _is_identity(self):
        """True when the settings cannot change an image (e.g. eps = 0): skip the work."""
        return self.eps == 0

    # === The shared machinery ===

    def _check_size(self, shape):
        if len(shape) != 3 or min(shape[0], shape[1]) < self.min_size:
            raise ValueError(
                f"Argument `x` must hold images (batch, height, width, channels) with sides of "
                f"at least {self.min_size} pixels for {type(self).__name__}. Received: "
                f"shape {(None, *shape)}"
            )

    def __call__(self, model: keras.Model, x: ArrayLike, y: ArrayLike,
                 target: ArrayLike | None = None) -> np.ndarray:
        """The attack contract, after checking the images are large enough for the transform."""
        self._check_size(tuple(getattr(x, "shape", ()))[1:])
        return super().__call__(model, x, y, target)

    def _to_unit(self, x):
        low, high = self.bounds
        return (x - low) / (high - low)

    def _from_unit(self, u):
        low, high = self.bounds
        return low + (high - low) * ops.clip(u, 0.0, 1.0)

    def _constrain(self, x, x_adv):
        # The budget lives on the hidden variables; in image space only the box applies.
        return norms.clip_to_bounds(x_adv, self.bounds)

    def _attack_batch(self, logits_fn, x, labels, target):
        if self._is_identity():
            return x
        unit = self._to_unit(x)
        setup = self._setup(unit)
        space = self._space(unit)
        step = self.step_size or self._default_step_size()

        def logits_of(z):
            return logits_fn(self._from_unit(self._render(unit, z, setup)))

        z, _, _ = pgd_loop(
            logits_of, space.center, labels, target, eps=space.radius, norm=space.norm,
            step_size=step, num_steps=self.num_steps, random_start=False, loss=self.loss,
            bounds=space.box, initial=setup["initial"], method=space.method,
            constraint=lambda v: self._constraint(v, setup), penalty=self._penalty(),
        )
        return self._from_unit(self._render(unit, z, setup))

    def random_transform(self, x: ArrayLike) -> np.ndarray:
        """The transform with random, non-optimised variables (no model): a corruption.

        Draws the attack's initial variables (its random start) and renders them; the same
        seed gives the same corruption.

        Args:
            x: images `(batch, height, width, channels)` within `bounds`.

        Returns:
            The corrupted images, a numpy array like `x`.

        Example:
        >>> fog = manidefense.attacks.Fog(eps=1.0, seed=0)
        >>> x_fog = fog.random_transform(x)
        >>> x_fog.shape == x.shape, bool(np.all(x_fog == fog.random_transform(x)))
        (True, True)
        """
        x_np = check_images(x, self.bounds)
        self._check_size(x_np.shape[1:])
        if self._is_identity():
            return x_np.copy()
        self._reset_seed()
        key = tuple(x_np.shape[1:])
        if key not in self._random_graphs:
            def run(batch):
                unit = self._to_unit(batch)
                setup = self._setup(unit)
                return self._from_unit(self._render(unit, setup["initial"], setup))

            self._random_graphs[key] = tf.function(
                run, input_signature=[tf.TensorSpec((None, *key), tf.float32)])
        run = self._random_graphs[key]
        parts = [ops.convert_to_numpy(run(tf.constant(x_np[i:i + self.batch_size], tf.float32)))
                 for i in range(0, len(x_np), self.batch_size)]
        return np.concatenate(parts).astype(x_np.dtype, copy=False) if parts else x_np.copy()

    def _uniform(self, shape, low=0.0, high=1.0):
        return keras.random.uniform(shape, low, high, seed=self._seed_generator)


# === Resampling, shared by the warping attacks (Elastic, StAdv, Spatial) ===

def bilinear_sample(images, rows, cols, fill="zeros"):
    """Samples `images` (B, H, W, C) at real positions `rows`, `cols` (B, H', W').

    Bilinear interpolation from four gathers, differentiable in the positions (the weights
    are linear in them). `fill="zeros"` treats outside pixels as 0 (a corner outside the image
    contributes nothing); `fill="edge"` clamps positions to the image. Integer positions
    return pixel values exactly, so a zero flow is the identity.
    """
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    if fill == "edge":
        rows = ops.clip(rows, 0.0, height - 1.0)
        cols = ops.clip(cols, 0.0, width - 1.0)
    r0, c0 = ops.floor(rows), ops.floor(cols)
    fr, fc = rows - r0, cols - c0
    r0, c0 = ops.cast(r0, "int32"), ops.cast(c0, "int32")
    flat = ops.reshape(images, (ops.shape(images)[0], height * width, channels))
    out_shape = ops.shape(rows)
    total = 0.0
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                           (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        valid = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        index = ops.clip(rr, 0, height - 1) * width + ops.clip(cc, 0, width - 1)
        index = ops.reshape(index, (out_shape[0], -1, 1))
        values = ops.take_along_axis(flat, ops.broadcast_to(
            index, (out_shape[0], ops.shape(index)[1], channels)), axis=1)
        values = ops.reshape(values, (out_shape[0], out_shape[1], out_shape[2], channels))
        weight = ops.where(valid, weight, ops.zeros_like(weight))
        total = total + values * weight[..., None]
    return total


def identity_grid(batch, height, width):
    """Pixel-centre coordinates `(rows, cols)`, each (batch, H, W) float32."""
    rows, cols = ops.meshgrid(ops.arange(height, dtype="float32"),
                              ops.arange(width, dtype="float32"), indexing="ij")
    shape = (batch, height, width)
    return ops.broadcast_to(rows[None], shape), ops.broadcast_to(cols[None], shape)


def gaussian_kernel(size, sigma):
    """A normalised `size`×`size` Gaussian; `sigma` may be a tensor (e.g. drawn at random)."""
    r = ops.arange(size, dtype="float32") - (size - 1) / 2.0
    g = ops.exp(-(r**2) / (2.0 * ops.maximum(sigma, 1e-6) ** 2))
    k = g[:, None] * g[None, :]
    return k / ops.sum(k)
