"""Spatial: the worst rotation and translation (Engstrom et al.), by grid or random search."""

import math

import keras
import numpy as np
from keras import ops

from manidefense.attacks.base import Attack, better, select
from manidefense.attacks.objectives import is_successful, objective
from manidefense.attacks.unforeseen.base import UnforeseenAttack, bilinear_sample, identity_grid
from manidefense.validation import check_choice, check_non_negative, check_positive_int


def rotate_translate(images, params):
    """Rotates each image about its centre by `params[:, 0]` degrees, then shifts it by
    `params[:, 1:]` pixels (rows, columns); bilinear, zeros outside. Returns a like batch.

    Positive angles turn the image clockwise as displayed (rows pointing down), i.e.
    `np.rot90(x, k=-1)` at 90°; Keras' `RandomRotation` turns the other way.
    """
    batch, height, width = ops.shape(images)[0], images.shape[1], images.shape[2]
    rows, cols = identity_grid(batch, height, width)
    angle = params[:, 0] * (math.pi / 180.0)
    cos, sin = ops.cos(angle)[:, None, None], ops.sin(angle)[:, None, None]
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    # Output p shows input R(-angle)(p - c - t) + c.
    dy = rows - cy - params[:, 1, None, None]
    dx = cols - cx - params[:, 2, None, None]
    src_rows = cos * dy - sin * dx + cy
    src_cols = sin * dy + cos * dx + cx
    return bilinear_sample(images, src_rows, src_cols, fill="zeros")


@keras.saving.register_keras_serializable(package="manidefense")
class Spatial(UnforeseenAttack):
    """Rotations and translations: the most damaging of a grid or of random draws.

    Tries rotations in `[-max_angle, max_angle]` degrees and translations in
    `[-max_shift, max_shift]` pixels per axis, and keeps per example a transform that
    misclassifies (else the highest loss). `search="grid"`: every combination of
    `num_angles` angles and `num_shifts` shifts per axis (Engstrom et al.: 31 × 5 × 5 = 775);
    `search="random"`: the worst of `num_samples` uniform draws per example (their cheap
    "worst-of-10" attack). The search stops early once every example of the batch is
    misclassified. No gradients: first-order methods do not find the worst transform reliably
    (Engstrom et al.).

    Args:
        max_angle: degrees (Engstrom et al.: 30 on MNIST and CIFAR-10).
        max_shift: pixels (3 on MNIST and CIFAR-10).
        search: `"grid"` or `"random"`.
        num_angles, num_shifts: grid resolution. num_samples: random draws per example.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.Spatial(max_angle=30, max_shift=3)(model, x, y)

    Reference:
        Engstrom, Tran, Tsipras, Schmidt, Madry, "Exploring the Landscape of Spatial
        Robustness", ICML 2019.
    """

    threat_model = "spatial"
    eps_units = "rotation (degrees) and translation (pixels)"
    uses_gradients = False
    min_size = 2

    def __init__(self, max_angle: float = 30.0, max_shift: float = 3.0, search: str = "grid",
                 num_angles: int = 31, num_shifts: int = 5, num_samples: int = 10, **kwargs):
        Attack.__init__(self, **kwargs)
        self.max_angle = check_non_negative("max_angle", max_angle)
        self.max_shift = check_non_negative("max_shift", max_shift)
        self.search = check_choice("search", search, ("grid", "random"))
        self.num_angles = check_positive_int("num_angles", num_angles)
        self.num_shifts = check_positive_int("num_shifts", num_shifts)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.eps = None
        self._random_graphs = {}

    def _is_identity(self):
        return self.max_angle == 0 and self.max_shift == 0

    def grid(self) -> np.ndarray:
        """The `(num_transforms, 3)` grid of (degrees, row shift, column shift).

        Returns:
            A float32 array with `num_angles * num_shifts ** 2` rows, what `search="grid"`
            tries.

        Example:
        >>> grid = manidefense.attacks.Spatial(max_angle=30, max_shift=3).grid()
        >>> grid.shape, grid[0].tolist()
        ((775, 3), [-30.0, -3.0, -3.0])
        """
        angles = np.linspace(-self.max_angle, self.max_angle, self.num_angles)
        shifts = np.linspace(-self.max_shift, self.max_shift, self.num_shifts)
        a, r, c = np.meshgrid(angles, shifts, shifts, indexing="ij")
        return np.stack([a.ravel(), r.ravel(), c.ravel()], axis=1).astype(np.float32)

    def _random_params(self, batch):
        limits = ops.convert_to_tensor([self.max_angle, self.max_shift, self.max_shift])
        return self._uniform((batch, 3), -1.0, 1.0) * limits

    def _setup(self, x):
        return {"initial": self._random_params(ops.shape(x)[0])}

    def _render(self, x, z, setup):
        return rotate_translate(x, z)

    def _attack_batch(self, logits_fn, x, labels, target):
        if self._is_identity():
            return x
        batch = ops.shape(x)[0]
        grid = ops.convert_to_tensor(self.grid()) if self.search == "grid" else None
        count = len(self.grid()) if self.search == "grid" else self.num_samples

        def body(i, bx, bl, bs):
            if grid is None:
                params = self._random_params(batch)
            else:
                params = ops.broadcast_to(grid[i][None], (batch, 3))
            candidate = self._from_unit(rotate_translate(self._to_unit(x), params))
            logits = logits_fn(candidate)
            value = objective(self.loss, logits, labels, target)
            success = is_successful(logits, labels, target)
            take = better(value, success, bl, bs)
            return (i + 1, select(take, candidate, bx), ops.where(take, value, bl),
                    ops.logical_or(bs, success))

        def cond(i, bx, bl, bs):
            # Stop once every example is broken: later transforms could only raise the loss.
            return ops.logical_and(i < count, ops.logical_not(ops.all(bs)))

        state = (0, x, ops.full((batch,), float("-inf")), ops.zeros((batch,), dtype="bool"))
        return ops.while_loop(cond, body, state)[1]
