"""Warping attacks: Elastic (a smoothed, optimised flow) and StAdv (a smooth flow, CW margin)."""

from typing import NoReturn

import keras
from keras import ops
from numpy.typing import ArrayLike

from manidefense.attacks.unforeseen.base import (
    LatentSpace,
    UnforeseenAttack,
    bilinear_sample,
    gaussian_kernel,
    identity_grid,
)
from manidefense.validation import check_non_negative, check_positive, check_positive_int


def warp(images, flow, fill="zeros"):
    """Moves every pixel to `p + flow(p)`: bilinear sample of `images` at those positions.

    `flow` is `(batch, H, W, 2)` in pixels (rows, columns); zero flow is exactly the identity.
    """
    rows, cols = identity_grid(ops.shape(images)[0], images.shape[1], images.shape[2])
    return bilinear_sample(images, rows + flow[..., 0], cols + flow[..., 1], fill)


def smooth_flow(flow, size, sigma):
    """Gaussian smoothing of each flow component with reflect padding ("valid" convolution)."""
    if size <= 1:
        return flow
    pad = (size - 1) // 2
    padded = ops.pad(flow, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    kernel = ops.tile(gaussian_kernel(size, sigma)[:, :, None, None], (1, 1, 2, 1))
    return ops.depthwise_conv(padded, kernel, padding="valid")


@keras.saving.register_keras_serializable(package="manidefense")
class Elastic(UnforeseenAttack):
    """Adversarial elastic deformation (Kang et al.): an optimised, locally smooth warp.

    A per-pixel flow `f` (rows, columns) with `|f| <= eps` pixels in L∞, smoothed by a
    Gaussian (reflect padding; a convex combination, so the smoothed flow obeys the same
    bound), moves each output pixel to sample the input at `p + f(p)` bilinearly (zeros
    outside). Random start in the eps-box, sign steps `eps / sqrt(num_steps)`.

    Args:
        eps: largest displacement in pixels (Kang et al. CIFAR-10: 0.125..8).
        step_size: sign step in pixels; default `eps / sqrt(num_steps)`.
        num_steps: optimisation steps.
        sigma: smoothing standard deviation in pixels; default `3 * side / 224` (Kang et
            al.'s 3 at 224 pixels, scaled; 0.375 at 28).
        kernel_size: odd smoothing kernel side; default `max(5, 8 sigma + 1)` (25 at 224).
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.Elastic(eps=1.0, num_steps=50, seed=0)(model, x, y)
    """

    threat_model = "elastic"
    eps_units = "largest displacement (pixels)"
    min_size = 2

    def __init__(self, eps: float = 1.0, step_size: float | None = None, num_steps: int = 100,
                 sigma: float | None = None, kernel_size: int | None = None, **kwargs):
        super().__init__(eps, step_size=step_size, num_steps=num_steps, **kwargs)
        self.sigma = None if sigma is None else check_positive("sigma", sigma)
        if kernel_size is not None:
            kernel_size = check_positive_int("kernel_size", kernel_size)
            if kernel_size % 2 == 0:
                raise ValueError("Argument `kernel_size` must be odd. "
                                 f"Received: kernel_size={kernel_size!r}")
        self.kernel_size = kernel_size

    def _smoothing(self, x):
        sigma = self.sigma or 3.0 * min(x.shape[1], x.shape[2]) / 224.0
        size = self.kernel_size or max(5, 2 * int(4 * sigma) + 1)
        return min(size, 2 * (min(x.shape[1], x.shape[2]) // 2) - 1), sigma

    def _space(self, x):
        shape = (ops.shape(x)[0], x.shape[1], x.shape[2], 2)
        return LatentSpace(ops.zeros(shape), self.eps, "linf")

    def _setup(self, x):
        shape = (ops.shape(x)[0], x.shape[1], x.shape[2], 2)
        return {"initial": self._uniform(shape, -self.eps, self.eps)}

    def _render(self, x, z, setup):
        return warp(x, smooth_flow(z, *self._smoothing(x)))


@keras.saving.register_keras_serializable(package="manidefense")
class StAdv(UnforeseenAttack):
    """Spatially transformed adversarial examples (Xiao et al.): a smooth flow field.

    Maximises `L_adv - tau * L_flow` over a per-pixel flow `f` (pixels, edge-replicated
    sampling), where `L_adv` is the objective (default the CW margin, as the paper) and
    `L_flow = mean_(p,q) sqrt(||f_p - f_q||² + 1e-8)` over horizontally and vertically
    adjacent pixel pairs penalises rough flows. The paper optimises the unbounded problem with
    L-BFGS and sums over the pairs; here the flow is bounded by `eps` pixels in L∞ (as
    Laidlaw et al.'s bounded variant) and optimised by the library's sign-step loop from zero
    flow, which batches and keeps the most damaging iterate. Sign steps weigh every pixel
    alike, so with the paper's sum the penalty's per-pixel gradient outvoted the margin's
    everywhere and the attack barely moved (accuracy 0.94 → 0.75 at eps 0.5 → 2 on a test
    CNN, not monotone); with the mean it steers pixels the margin does not care about
    towards a smooth flow, and the attack is strong and monotone in eps.

    Args:
        eps: largest displacement in pixels.
        tau: weight of the mean smoothness term (paper: 0.05, on the sum).
        step_size: default `eps / sqrt(num_steps)`.
        num_steps: optimisation steps.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss` (default `"margin"`),
            `seed`, `verbose`, `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.StAdv(eps=1.0, num_steps=100)(model, x, y)

    Reference:
        Xiao, Zhu, Li, He, Liu, Song, "Spatially Transformed Adversarial Examples", ICLR 2018.
    """

    threat_model = "stadv"
    eps_units = "largest displacement (pixels)"
    min_size = 2

    def __init__(self, eps: float = 1.0, tau: float = 0.05, step_size: float | None = None,
                 num_steps: int = 100, **kwargs):
        kwargs.setdefault("loss", "margin")
        super().__init__(eps, step_size=step_size, num_steps=num_steps, **kwargs)
        self.tau = check_non_negative("tau", tau)

    def _space(self, x):
        shape = (ops.shape(x)[0], x.shape[1], x.shape[2], 2)
        return LatentSpace(ops.zeros(shape), self.eps, "linf")

    def _setup(self, x):
        return {"initial": ops.zeros((ops.shape(x)[0], x.shape[1], x.shape[2], 2))}

    def _penalty(self):
        if not self.tau:
            return None

        def penalty(flow):
            height, width = flow.shape[1], flow.shape[2]
            pairs = (height - 1) * width + height * (width - 1)
            return self.tau * flow_roughness(flow) / pairs

        return penalty

    def _render(self, x, z, setup):
        return warp(x, z, fill="edge")

    def random_transform(self, x: ArrayLike) -> NoReturn:
        """Not available: StAdv's flow starts at zero, so it has no random corruption.

        Args:
            x: images (unused).

        Returns:
            Never returns.

        Raises:
            ValueError: always; `Elastic(...).random_transform` draws random smooth warps.

        Example:
        >>> x_warped = manidefense.attacks.Elastic(eps=1.0, seed=0).random_transform(x)
        """
        raise ValueError("StAdv has no random corruption: its flow starts at zero. Use "
                         "Elastic for random smooth warps.")


def flow_roughness(flow):
    """StAdv's `L_flow` per example: Σ over adjacent pixel pairs of `sqrt(||Δf||² + 1e-8)`."""
    down = flow[:, 1:] - flow[:, :-1]
    right = flow[:, :, 1:] - flow[:, :, :-1]
    return (ops.sum(ops.sqrt(ops.sum(ops.square(down), axis=-1) + 1e-8), axis=(1, 2))
            + ops.sum(ops.sqrt(ops.sum(ops.square(right), axis=-1) + 1e-8), axis=(1, 2)))
