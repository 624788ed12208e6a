"""Projection onto a generator's manifold, and the on-manifold dataset built from it.

`project` inverts a decoder G batch by batch: `w* = argmin_w d(G(w), x)` (DMAT eq. 7), with
`d = l1_weight · mean|G(w) - x| + perceptual_weight · perceptual(G(w), x)`. The perceptual
term works offline: `1 - SSIM` (`keras.ops.image.ssim`) by default, or the mean squared
difference of a user-supplied feature extractor (DMAT used VGG-16 features). Adam runs per
example inside one compiled loop, with the StyleGAN projector's schedule: a linear warm-up
over the first 5% of steps and a cosine ramp-down over the last 25%. The best iterate per
example is kept.

`build_on_manifold_dataset` projects a whole labelled dataset and stores `(w, G(w), x, y)`:
like the authors' OM-ImageNet, the on-manifold images are re-rendered from the stored latents,
so they are exactly `G(w)` and an on-manifold attack starts from the stored `w`.

Reference:
    Lin et al., "Dual Manifold Adversarial Robustness", NeurIPS 2020, §3 (eq. 7).
"""

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense.attacks.gradients import inference, weak_reference
from manidefense.validation import (
    check_choice,
    check_fraction,
    check_images,
    check_labels,
    check_non_negative,
    check_positive,
    check_positive_int,
)

_SSIM_WINDOW = 11  # keras.ops.image.ssim's default filter size


@dataclasses.dataclass
class Projection:
    """What `project` returns (numpy arrays, one row per input).

    Attributes:
        latents: the best latents found, `w*`.
        images: `G(w*)`, float32.
        distances: `d(G(w*), x)` per example (the objective minimised).
        l1: mean absolute pixel error `mean|G(w*) - x|` per example.

    Example:
    >>> vae = manidefense.zoo.VAE(latent_dim=8)
    >>> proj = manidefense.manifold.project(vae.decoder, x, num_steps=10)
    >>> proj.latents.shape, proj.images.shape, proj.distances.shape, proj.l1.shape
    ((8, 8), (8, 28, 28, 1), (8,), (8,))
    """

    latents: np.ndarray
    images: np.ndarray
    distances: np.ndarray
    l1: np.ndarray


def project(decoder: keras.Model | Callable, x: ArrayLike, *, encoder: keras.Model | None = None,
            initial_latents: ArrayLike | None = None, mean_latent: ArrayLike | None = None,
            l1_weight: float = 1.0, perceptual: str | Callable | None = "ssim",
            perceptual_weight: float = 1.0, num_steps: int = 200, learning_rate: float = 0.05,
            warmup: float = 0.05, rampdown: float = 0.25, batch_size: int = 256,
            verbose: bool = False) -> Projection:
    """Finds latents whose decoded images are closest to `x` (DMAT eq. 7).

    Args:
        decoder: Keras model (or callable) from latents to images in the range of `x`.
        x: images, float, batch first (NHWC).
        encoder: optional model giving the starting latents (a VAE encoder returning
            `(z_mean, z_log_var)` is fine: the first output is used).
        initial_latents: optional starting latents (overrides `encoder`).
        mean_latent: the start when neither is given; default zeros (a VAE's or GAN's prior
            mean). For a StyleGAN pass the mean of its mapped latents, as DMAT did.
        l1_weight: weight of the mean absolute pixel error.
        perceptual: `"ssim"` (1 - SSIM, offline), `None`, or a callable feature extractor
            `images -> features`, compared by mean squared difference.
        perceptual_weight: weight of the perceptual term.
        num_steps: Adam steps per batch (DMAT: 1000 on StyleGAN; small decoders need fewer).
        learning_rate: peak Adam learning rate.
        warmup: fraction of the steps for the linear warm-up (0 turns it off).
        rampdown: fraction of the steps for the cosine ramp-down (0 turns it off).
        batch_size: images optimised together (each keeps its own Adam state and best iterate).
        verbose: show a progress bar over batches.

    Returns:
        A `Projection` of `latents`, `images`, `distances` and `l1`.

    Example:
    >>> vae = manidefense.zoo.VAE(latent_dim=8)
    >>> proj = manidefense.manifold.project(vae.decoder, x, encoder=vae.encoder, num_steps=20)
    >>> proj.images.shape == x.shape
    True
    """
    x = check_images(x, (-math.inf, math.inf)).astype(np.float32)
    num_steps = check_positive_int("num_steps", num_steps)
    learning_rate = check_positive("learning_rate", learning_rate)
    l1_weight = check_non_negative("l1_weight", l1_weight)
    perceptual_weight = check_non_negative("perceptual_weight", perceptual_weight)
    warmup = _check_schedule_fraction("warmup", warmup)
    rampdown = _check_schedule_fraction("rampdown", rampdown)
    batch_size = check_positive_int("batch_size", batch_size)
    if not callable(perceptual):
        perceptual = check_choice("perceptual", perceptual, ("ssim", None))
    if perceptual is None:
        perceptual_weight = 0.0
    w0 = _initial_latents(decoder, x, encoder, initial_latents, mean_latent, batch_size)
    _check_decoder(decoder, w0[:1], x.shape[1:])
    if perceptual == "ssim" and perceptual_weight and min(x.shape[1:3]) < _SSIM_WINDOW:
        raise ValueError(
            f"Argument `perceptual`='ssim' needs images of at least {_SSIM_WINDOW}×"
            f"{_SSIM_WINDOW} pixels (SSIM's Gaussian window). Received: images of "
            f"{x.shape[1]}×{x.shape[2]}; pass perceptual=None or a feature extractor")
    key = (id(decoder), l1_weight, perceptual if isinstance(perceptual, str) else id(perceptual),
           perceptual_weight, num_steps, learning_rate, warmup, rampdown, w0.shape[1:], x.shape[1:])
    run = _compiled.get(key)
    if run is None or run[0]() is not decoder:
        distance_fn = _distance_function(l1_weight, perceptual, perceptual_weight)
        schedule = _schedule(learning_rate, num_steps, warmup, rampdown)

        decoder_ref = weak_reference(decoder)  # the cache must not keep the decoder alive

        def optimise(w, target):
            return _adam_projection(decoder_ref(), distance_fn, w, target, num_steps, schedule)

        # A batch dimension of None: the last, smaller batch reuses the graph.
        signature = [tf.TensorSpec((None, *w0.shape[1:]), tf.float32),
                     tf.TensorSpec((None, *x.shape[1:]), tf.float32)]
        run = (decoder_ref, tf.function(optimise, input_signature=signature))
        _compiled[key] = run
    run = run[1]

    latents, images, distances, l1 = [], [], [], []
    bar = keras.utils.Progbar(len(x)) if verbose else None
    for start in range(0, len(x), batch_size):
        target = tf.constant(x[start:start + batch_size])
        w, g, d, e = run(tf.constant(w0[start:start + batch_size]), target)
        for out, value in zip((latents, images, distances, l1), (w, g, d, e), strict=True):
            out.append(ops.convert_to_numpy(value))
        if bar is not None:
            bar.add(len(target))
    return Projection(*(np.concatenate(v).astype(np.float32) for v in
                        (latents, images, distances, l1)))


def _check_schedule_fraction(name, value):
    """A fraction of the steps in [0, 1): 0 turns the warm-up or ramp-down off."""
    return 0.0 if value == 0 else check_fraction(name, value, 0.0, 1.0)


# One compiled loop per decoder and setting, so repeated calls do not retrace.
_compiled = {}


def _initial_latents(decoder, x, encoder, initial_latents, mean_latent, batch_size):
    if initial_latents is not None:
        w0 = np.asarray(initial_latents, dtype=np.float32)
        if len(w0) != len(x):
            raise ValueError(
                f"Argument `initial_latents` must have one row per image ({len(x)}). "
                f"Received: initial_latents.shape={w0.shape}"
            )
    elif encoder is not None:
        parts = []
        for start in range(0, len(x), batch_size):
            out = inference(encoder, ops.convert_to_tensor(x[start:start + batch_size]))
            parts.append(ops.convert_to_numpy(out[0] if isinstance(out, (list, tuple)) else out))
        w0 = np.concatenate(parts).astype(np.float32)
    else:
        if mean_latent is None:
            shape = _latent_shape(decoder)
            mean_latent = np.zeros(shape, dtype=np.float32)
        mean_latent = np.asarray(mean_latent, dtype=np.float32)
        w0 = np.broadcast_to(mean_latent, (len(x), *mean_latent.shape)).copy()
    if not np.all(np.isfinite(w0)):
        raise ValueError("The starting latents must be finite. Received: NaN or Inf values "
                         "(from `initial_latents`, `encoder` or `mean_latent`)")
    return w0


def _latent_shape(decoder):
    inputs = getattr(decoder, "inputs", None)
    shape = tuple(inputs[0].shape[1:]) if inputs else None
    if not shape or any(d is None for d in shape):
        raise ValueError(
            "Argument `mean_latent` is needed when the decoder's latent shape is unknown "
            "(the decoder is not a functional Keras model with a fixed input shape). "
            f"Received: decoder={decoder!r}, mean_latent=None"
        )
    return shape


def _check_decoder(decoder, w, image_shape):
    out = inference(decoder, ops.convert_to_tensor(w))
    if tuple(out.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"Argument `decoder` must produce images shaped like `x` {tuple(image_shape)}. "
            f"Received: decoder output shape {tuple(out.shape[1:])}"
        )


def _distance_function(l1_weight, perceptual, perceptual_weight):
    def distance(images, target):
        axes = tuple(range(1, len(images.shape)))
        l1 = ops.mean(ops.abs(images - target), axis=axes)
        total = l1_weight * l1
        if perceptual_weight:
            if perceptual == "ssim":
                term = ops.maximum(1.0 - ops.image.ssim(images, target, max_val=1.0), 0.0)
            else:
                fa = ops.cast(perceptual(images), "float32")
                fb = ops.cast(perceptual(target), "float32")
                term = ops.mean(ops.square(fa - fb), axis=tuple(range(1, len(fa.shape))))
            total = total + perceptual_weight * term
        return total, l1
    return distance


def _schedule(peak, num_steps, warmup, rampdown):
    """StyleGAN projector's learning rate at step t: linear warm-up, cosine ramp-down."""
    def lr(step):
        t = ops.cast(step, "float32") / num_steps
        up = ops.minimum(1.0, t / warmup) if warmup > 0 else 1.0
        down = (0.5 - 0.5 * ops.cos(math.pi * ops.minimum(1.0, (1.0 - t) / rampdown))
                if rampdown > 0 else 1.0)
        return peak * up * down
    return lr


def _adam_projection(decoder, distance_fn, w0, target, num_steps, schedule,
                     beta1=0.9, beta2=0.999, epsilon=1e-8):
    """Per-example Adam on `sum(d(G(w), x))`; the lowest-distance iterate of each row is kept.

    Rows are independent (the decoder runs in inference mode), so one optimiser over the
    summed distances is a batch of independent ones.
    """
    def evaluate(w):
        images = ops.cast(inference(decoder, w), "float32")
        d, l1 = distance_fn(images, target)
        return images, d, l1

    def step(i, state):
        w, m, v, best_w, best_d = state
        with tf.GradientTape() as tape:
            tape.watch(w)
            _, d, _ = evaluate(w)
            total = ops.sum(d)
        grad = tape.gradient(total, w)
        improved = d < best_d
        mask = ops.reshape(improved, (-1,) + (1,) * (len(w.shape) - 1))
        best_w, best_d = ops.where(mask, w, best_w), ops.where(improved, d, best_d)
        t = ops.cast(i + 1, "float32")
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * ops.square(grad)
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        w = w - schedule(i + 1) * m_hat / (ops.sqrt(v_hat) + epsilon)
        return w, m, v, best_w, best_d

    w0 = ops.cast(w0, "float32")
    zeros = ops.zeros_like(w0)
    inf = ops.full((ops.shape(w0)[0],), float("inf"))
    w, _, _, best_w, best_d = ops.fori_loop(0, num_steps, step, (w0, zeros, zeros, w0, inf))
    _, d_last, _ = evaluate(w)
    improved = ops.reshape(d_last < best_d, (-1,) + (1,) * (len(w.shape) - 1))
    best_w = ops.where(improved, w, best_w)
    images, d, l1 = evaluate(best_w)
    return best_w, images, d, l1


@dataclasses.dataclass
class OnManifoldData:
    """An on-manifold dataset: `(latents, images = G(latents), originals, labels, distances)`.

    Saved to and loaded from a compressed `.npz` (plain arrays, no pickle).

    Example:
    >>> om = build_on_manifold_dataset(vae.decoder, x, y, encoder=vae.encoder)
    >>> om.save("om_fashion_mnist.npz")
    >>> ds = OnManifoldData.load("om_fashion_mnist.npz").to_dataset(batch_size=128)
    """

    latents: np.ndarray
    images: np.ndarray
    originals: np.ndarray
    labels: np.ndarray
    distances: np.ndarray

    _FIELDS = ("latents", "images", "originals", "labels", "distances")

    def __len__(self):
        return len(self.labels)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the arrays to a compressed `.npz` file.

        Args:
            path: the file to write (NumPy appends `.npz` when missing).

        Example:
        >>> vae = manidefense.zoo.VAE(latent_dim=8)
        >>> om = manidefense.manifold.build_on_manifold_dataset(vae.decoder, x, y, num_steps=10)
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "om.npz")
        >>> om.save(path)
        >>> len(manidefense.manifold.OnManifoldData.load(path))
        8
        """
        np.savez_compressed(path, **{name: getattr(self, name) for name in self._FIELDS})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "OnManifoldData":
        """Reads a file written by `save` (with `allow_pickle=False`).

        Args:
            path: a file written by `save`.

        Returns:
            The `OnManifoldData`.

        Raises:
            ValueError: the file lacks one of the arrays.

        Example:
        >>> vae = manidefense.zoo.VAE(latent_dim=8)
        >>> om = manidefense.manifold.build_on_manifold_dataset(vae.decoder, x, y, num_steps=10)
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "om.npz")
        >>> om.save(path)
        >>> bool(np.array_equal(OnManifoldData.load(path).latents, om.latents))
        True
        """
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in cls._FIELDS if name not in data.files]
            if missing:
                raise ValueError(
                    f"Argument `path` must be an on-manifold dataset written by "
                    f"`OnManifoldData.save`. Received: {path!r} without arrays {missing}"
                )
            return cls(**{name: data[name] for name in cls._FIELDS})

    def to_dataset(self, batch_size: int = 128, shuffle: bool = False,
                   seed: int | None = None) -> tf.data.Dataset:
        """A `tf.data.Dataset` of `((images, latents), labels)` batches, as
        `DualManifoldTrainer.fit` takes them.

        Args:
            batch_size: examples per batch.
            shuffle: reshuffle every epoch.
            seed: seed of the shuffle.

        Returns:
            A batched `tf.data.Dataset`.

        Example:
        >>> vae = manidefense.zoo.VAE(latent_dim=8)
        >>> om = manidefense.manifold.build_on_manifold_dataset(vae.decoder, x, y, num_steps=10)
        >>> (images, latents), labels = next(iter(om.to_dataset(batch_size=4)))
        >>> tuple(images.shape), tuple(latents.shape), tuple(labels.shape)
        ((4, 28, 28, 1), (4, 8), (4,))
        """
        ds = tf.data.Dataset.from_tensor_slices(((self.images, self.latents), self.labels))
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(check_positive_int("batch_size", batch_size))


def build_on_manifold_dataset(decoder: keras.Model | Callable, x: ArrayLike, y: ArrayLike,
                              **kwargs: Any) -> OnManifoldData:
    """Projects every image of a labelled dataset onto the decoder's manifold.

    Args:
        decoder: the generator G.
        x: images.
        y: integer labels.
        **kwargs: passed to `project` (`encoder`, `num_steps`, `perceptual`, ...).

    Returns:
        An `OnManifoldData` whose `images` are exactly `G(latents)`.

    Example:
    >>> vae = manidefense.zoo.VAE(latent_dim=8)
    >>> om = manidefense.manifold.build_on_manifold_dataset(vae.decoder, x, y,
    ...                                                      encoder=vae.encoder, num_steps=10)
    >>> len(om), bool(np.allclose(om.images, vae.decode(om.latents), atol=1e-5))
    (8, True)
    """
    x = check_images(x, (-math.inf, math.inf))
    y = check_labels(y, len(x), "y")
    proj = project(decoder, x, **kwargs)
    return OnManifoldData(proj.latents, proj.images, x.astype(np.float32), y, proj.distances)
