"""JPEG: perturb an image's quantised 8×8 DCT coefficients."""


import keras
import numpy as np
from keras import ops

from manidefense.attacks import norms
from manidefense.attacks.unforeseen.base import LatentSpace, UnforeseenAttack
from manidefense.validation import check_norm

BLOCK = 8
# The JPEG standard's quantisation tables (Annex K; quality 50, scale 1).
LUMINANCE_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)
CHROMA_TABLE = np.full((8, 8), 99.0, np.float32)
CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
# JFIF full-range RGB -> YCbCr (offsets of 128 on the chroma planes).
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                        [0.5, -0.418688, -0.081312]], np.float64)
_YCC_OFFSET = np.array([0.0, 128.0, 128.0])


def dct_matrix(n=BLOCK):
    """The orthonormal DCT-II matrix `D[u, x] = c(u) cos((2x + 1) u π / 2n)`."""
    u, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    d = np.cos((2 * x + 1) * u * np.pi / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def block_transform(planes, matrix):
    """Applies `M B Mᵀ` to every 8×8 block of `(batch, H, W, C)` planes (H, W multiples of 8)."""
    b, h, w, c = ops.shape(planes)[0], planes.shape[1], planes.shape[2], planes.shape[3]
    blocks = ops.reshape(planes, (b, h // BLOCK, BLOCK, w // BLOCK, BLOCK, c))
    out = ops.einsum("ux,bixjyc,vy->biujvc", matrix, blocks, matrix)
    return ops.reshape(out, (b, h, w, c))


@keras.saving.register_keras_serializable(package="manidefense")
class JPEG(UnforeseenAttack):
    """Adversarial JPEG artefacts (Kang et al.): optimised changes of quantised DCT coefficients.

    The image (on the 0..255 scale; colour images in YCbCr) is split into 8×8 blocks and
    transformed by the orthonormal DCT; each coefficient moves by `Q[u, v] * v / 2`, where `Q`
    is the standard quantisation table (luminance for Y, chrominance for Cb/Cr, quality 50) and
    `v` the attack variable, so high frequencies move more. The variables `v` are bounded by
    `eps` in `norm` (units: half quantisation steps, Kang et al.'s units): L∞ by sign steps,
    L2 by normalised steps then a box |v| ≤ 2, L1 by Frank–Wolfe in the same box. Sides not
    divisible by 8 are edge-padded and cropped back.

    Deviation: no 4:2:0 chroma subsampling (Kang et al. subsample), so a zero perturbation
    reproduces any image exactly and every plane gets full-resolution coefficients.

    Args:
        eps: budget on `v` in `norm` (Kang et al. CIFAR-10: L∞ 0.03125..1, L1 2..1024).
        norm: `"linf"`, `"l2"` or `"l1"`.
        step_size: default `eps / sqrt(num_steps)` (unused by L1's Frank–Wolfe).
        num_steps: optimisation steps.
        **kwargs: `bounds`, `batch_size`, `num_restarts`, `loss`, `seed`, `verbose`,
            `jit_compile`, `output` of `Attack`.

    Example:
    >>> x_adv = manidefense.attacks.JPEG(eps=0.25, norm="linf", seed=0)(model, x, y)
    """

    eps_units = "DCT change (half quantisation steps)"
    min_size = BLOCK

    def __init__(self, eps: float = 0.25, norm: str = "linf", step_size: float | None = None,
                 num_steps: int = 100, **kwargs):
        super().__init__(eps, step_size=step_size, num_steps=num_steps, **kwargs)
        self.norm = check_norm(norm)

    @property
    def threat_model(self) -> str:
        """`"jpeg-linf"`, `"jpeg-l2"` or `"jpeg-l1"`: the norm is part of the threat model."""
        return f"jpeg-{self.norm}"

    def _check_size(self, shape):
        super()._check_size(shape)
        if shape[-1] not in (1, 3):
            raise ValueError("Argument `x` must have 1 (grayscale) or 3 (RGB) channels for "
                             f"JPEG. Received: shape {(None, *shape)}")

    @staticmethod
    def _padded(x):
        return (-(-x.shape[1] // BLOCK) * BLOCK, -(-x.shape[2] // BLOCK) * BLOCK, x.shape[3])

    def _space(self, x):
        shape = (ops.shape(x)[0], *self._padded(x))
        box = norms.UNBOUNDED if self.norm == "linf" else (-2.0, 2.0)
        method = "frank_wolfe" if self.norm == "l1" else "pgd"
        return LatentSpace(ops.zeros(shape), self.eps, self.norm, box, method)

    def _setup(self, x):
        shape = (ops.shape(x)[0], *self._padded(x))
        start = norms.random_start(shape, self.eps, self.norm, seed=self._seed_generator)
        if self.norm != "linf":
            start = ops.clip(start, -2.0, 2.0)
        return {"initial": start}

    def _render(self, x, z, setup):
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        ph, pw = self._padded(x)[0] - height, self._padded(x)[1] - width
        planes = 255.0 * ops.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="symmetric")
        if channels == 3:
            planes = ops.matmul(planes, _RGB_TO_YCC.T.astype(np.float32)) + _YCC_OFFSET.astype(
                np.float32)
        tables = [LUMINANCE_TABLE] + [CHROMA_TABLE] * (channels - 1)
        q = np.tile(np.stack(tables, axis=-1), (planes.shape[1] // BLOCK,
                                               planes.shape[2] // BLOCK, 1))
        d = dct_matrix()
        coefficients = block_transform(planes - 128.0, d) + q * z / 2.0
        planes = block_transform(coefficients, d.T) + 128.0
        if channels == 3:
            inverse = np.linalg.inv(_RGB_TO_YCC).astype(np.float32)
            planes = ops.matmul(planes - _YCC_OFFSET.astype(np.float32), inverse.T)
        return ops.clip(planes[:, :height, :width, :] / 255.0, 0.0, 1.0)
