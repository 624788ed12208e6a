"""Extract and fold image patches: the one place where images become patch vectors and back.

`extract_patches` equals a VALID convolution with an identity kernel: patch `p` at output
position `(i, j)` holds the pixels `x[i*s : i*s + ph, j*s : j*s + pw, :]` flattened in
(row, column, channel) order. `fold_patches` is its exact adjoint (the transposed convolution
with the same kernel): it adds every patch back where it came from. Dividing by
`overlap_counts` — how many patches cover each pixel, the RBF-CNN code's "divider" — turns
the sum into an average, so `fold(extract(x)) / counts == x` wherever a pixel is covered.
"""

import numpy as np
import tensorflow as tf
from keras import ops


def _identity_kernel(patch_size, channels, dtype):
    ph, pw = patch_size
    dim = ph * pw * channels
    return ops.cast(np.eye(dim, dtype="float32").reshape(ph, pw, channels, dim), dtype)


def output_size(size: int, patch: int, stride: int) -> int:
    """Patches along one axis of length `size` (VALID padding).

    Args:
        size: the axis length.
        patch: the patch length along it.
        stride: the step between patches.

    Returns:
        `(size - patch) // stride + 1`.

    Example:
    >>> output_size(28, 3, 1), output_size(28, 3, 2)
    (26, 13)
    """
    return (size - patch) // stride + 1


def extract_patches(images: tf.Tensor, patch_size: tuple[int, int],
                    strides: tuple[int, int]) -> tf.Tensor:
    """Every `patch_size` window of `images` as a vector.

    Built from `ph * pw` strided slices (cheaper than the identity convolution it equals, and
    fusable by XLA).

    Args:
        images: `(batch, height, width, channels)`.
        patch_size: `(ph, pw)`.
        strides: `(sh, sw)`.

    Returns:
        `(batch, H', W', ph * pw * channels)` with `H' = (height - ph) // sh + 1`.

    Example:
    >>> tuple(extract_patches(np.zeros((2, 28, 28, 1), "float32"), (3, 3), (1, 1)).shape)
    (2, 26, 26, 9)
    """
    (ph, pw), (sh, sw) = patch_size, strides
    rows = output_size(images.shape[1], ph, sh)
    cols = output_size(images.shape[2], pw, sw)
    parts = [images[:, i:i + (rows - 1) * sh + 1:sh, j:j + (cols - 1) * sw + 1:sw, :]
             for i in range(ph) for j in range(pw)]
    return ops.reshape(ops.stack(parts, axis=-2), (-1, rows, cols, ph * pw * images.shape[-1]))


def fold_patches(patches: tf.Tensor, image_shape: tuple[int, int, int], patch_size: tuple[int, int],
                 strides: tuple[int, int]) -> tf.Tensor:
    """Adds patch vectors back into images (overlaps summed): the adjoint of `extract_patches`.

    Args:
        patches: `(batch, H', W', ph * pw * channels)`.
        image_shape: `(height, width, channels)` of the images the patches came from.
        patch_size: `(ph, pw)`, as given to `extract_patches`.
        strides: `(sh, sw)`, as given to `extract_patches`.

    Returns:
        `(batch, height, width, channels)`; pixels no patch covers (right/bottom margins when
        the stride does not divide the size) are 0.

    Example:
    >>> x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32")
    >>> summed = fold_patches(extract_patches(x, (3, 3), (1, 1)), (28, 28, 1), (3, 3), (1, 1))
    >>> bool(np.allclose(summed / overlap_counts((28, 28, 1), (3, 3), (1, 1)), x, atol=1e-6))
    True
    """
    height, width, channels = image_shape
    sh, sw = strides
    kernel = _identity_kernel(patch_size, channels, patches.dtype)
    # The transposed convolution covers (H' - 1) * stride + patch rows; the margin a stride
    # that does not divide the size leaves uncovered is padded with zeros.
    folded = ops.conv_transpose(patches, kernel, strides=(sh, sw), padding="valid")
    pad_rows, pad_cols = height - folded.shape[1], width - folded.shape[2]
    if pad_rows or pad_cols:
        folded = ops.pad(folded, ((0, 0), (0, pad_rows), (0, pad_cols), (0, 0)))
    return folded


def overlap_counts(image_shape: tuple[int, int, int], patch_size: tuple[int, int],
                   strides: tuple[int, int]) -> np.ndarray:
    """How many patches cover each pixel, as a `(height, width, channels)` numpy array.

    Args:
        image_shape: `(height, width, channels)`.
        patch_size: `(ph, pw)`.
        strides: `(sh, sw)`.

    Returns:
        float32 counts, `(height, width, channels)`.

    Example:
    >>> overlap_counts((5, 5, 1), (3, 3), (1, 1)).astype(int)[0, :, 0]
    array([1, 2, 3, 2, 1])
    """
    height, width, channels = image_shape
    rows = output_size(height, patch_size[0], strides[0])
    cols = output_size(width, patch_size[1], strides[1])
    counts = np.zeros((height, width), "float32")
    for i in range(rows):
        for j in range(cols):
            r, c = i * strides[0], j * strides[1]
            counts[r:r + patch_size[0], c:c + patch_size[1]] += 1.0
    return np.repeat(counts[:, :, None], channels, axis=-1)
