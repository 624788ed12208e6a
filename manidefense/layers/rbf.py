"""RBFLayer: patch templates fitted by a non-parametric EM; call() gives the match scores."""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense.manifold import em
from manidefense.manifold.patches import extract_patches, output_size
from manidefense.validation import (
    check_non_negative,
    check_positive,
    check_positive_int,
)

# The E-step pads the filters to a multiple of this (fewer XLA compilations as filters are born).
_PAD = 8
#: Score of the unused capacity (inactive filters): finite in float16, and sigmoid(-1e4) == 0.
INACTIVE_SCORE = -1e4


def _pair(name, value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(check_positive_int(name, int(v)) if float(v) == int(v) else None
                     for v in value)
    except (TypeError, ValueError):
        pair = (None,)
    if len(pair) != 2 or None in pair:
        raise ValueError(f"Argument `{name}` must be a positive integer or a pair of them. "
                         f"Received: {name}={value!r}")
    return pair


@keras.saving.register_keras_serializable(package="manidefense")
class RBFLayer(keras.layers.Layer):
    """RBF filters over image patches (RBF-CNN, eq. 2), fitted without labels by `adapt()`.

    Every `patch_size` window `z` of the input (VALID, `strides`) is scored against each
    filter `g_j = (μ_j, v_j)`:

        s(z, g_j) = -||z - μ_j||² / (2 v_j) - ½ log v_j

    i.e. eq. 2 without its constant `-½ log 2π` (as in the authors' code, whose thresholds
    and β1 values assume it). **Variance convention**: `v_j` is σ_j² of eq. 3, the mean
    squared distance of the filter's patches to its mean — the trace of their covariance,
    not a per-pixel variance. It is floored at `min_variance` (default 1e-4, so scores stay
    below ≈5e4 and fit float16; the authors floored at 1e-20, which makes the all-background
    filter's scores ≈1e20).

    The filters are non-trainable weights of a static size, `capacity`, with an `active` mask
    (the fitted filters come first), so the layer saves and loads as `.keras`; unused capacity
    scores `INACTIVE_SCORE`. A layer adapted before it is built gets exactly the fitted number
    of filters as its capacity (every score channel is a real filter, and the reconstruction
    does no wasted work); a built layer keeps its capacity when re-adapted.

    `adapt(data)` runs the non-parametric hard EM of §III-a (`manidefense.manifold.em`): it
    starts with no filter, creates at most one filter per M-step from the patches no filter
    explains, deletes filters that attract too few patches, and stops creating filters after
    `birth_steps` of its `em_steps` M-steps.
    Defaults are the authors' MNIST settings; for CIFAR-10 they used `target_filters=175`
    and obtained 232 filters (so `max_filters=256` or more).

    Args:
        patch_size: window height and width (int or pair).
        strides: window step (int or pair).
        max_filters: `adapt` never creates more filters.
        em_steps: M-steps of `adapt` (the authors: 500).
        birth_steps: M-steps during which filters may be created (MNIST 250, CIFAR 500).
        images_per_step: images whose patches each M-step uses (the authors: 15 × 50).
        birth_log_likelihood: a patch scoring below this (plus `log α`) under every filter
            asks for a new filter (the authors: -2.5).
        min_birth_share: share of a step's patches the new bucket needs to become a filter.
        count_threshold: filters with this many patches or fewer in a step are deleted.
        target_filters: the filter count where the birth-rate controller α starts to decay
            fast (the authors: 10 for MNIST, 175 for CIFAR).
        min_variance: variance floor.
        capacity: size of the filter weights; None sizes them on the first `adapt` or
            `set_filters` (the fitted number of filters), or to `max_filters` when the layer
            is built first.
        seed: shuffles numpy data in `adapt`; the EM is otherwise deterministic.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:
    >>> rbf = manidefense.layers.RBFLayer(max_filters=64, seed=0)
    >>> rbf.adapt(x_train)   # numpy (N, H, W, C) in [0, 1], or a tf.data.Dataset of batches
    >>> rbf.num_filters, rbf(x_test[:8]).shape    # (K, (8, H - 2, W - 2, K))
    """

    def __init__(self, patch_size: int | tuple[int, int] = 3, strides: int | tuple[int, int] = 1,
                 max_filters: int = 64, em_steps: int = 500, birth_steps: int = 250,
                 images_per_step: int = 750, birth_log_likelihood: float = -2.5,
                 min_birth_share: float = 1e-3, count_threshold: int = 1,
                 target_filters: float = 10, min_variance: float = 1e-4,
                 capacity: int | None = None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = _pair("patch_size", patch_size)
        self.strides = _pair("strides", strides)
        self.max_filters = check_positive_int("max_filters", max_filters)
        self.em_steps = check_positive_int("em_steps", em_steps)
        self.birth_steps = check_positive_int("birth_steps", birth_steps)
        self.images_per_step = check_positive_int("images_per_step", images_per_step)
        if not isinstance(birth_log_likelihood, (int, float)) or not math.isfinite(
                birth_log_likelihood):
            raise ValueError("Argument `birth_log_likelihood` must be a finite number. "
                             f"Received: birth_log_likelihood={birth_log_likelihood!r}")
        self.birth_log_likelihood = float(birth_log_likelihood)
        self.min_birth_share = check_non_negative("min_birth_share", min_birth_share)
        self.count_threshold = int(check_non_negative("count_threshold", count_threshold))
        self.target_filters = check_positive("target_filters", target_filters)
        self.min_variance = check_positive("min_variance", min_variance)
        self.capacity = check_positive_int("capacity", capacity, allow_none=True)
        if seed is not None:
            seed = int(check_non_negative("seed", seed))
        self.seed = seed
        self._adapted = False

    # --- state ---------------------------------------------------------------------------

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError("RBFLayer expects images (batch, height, width, channels) with a "
                             f"known channel count. Received: input shape {input_shape}")
        ph, pw = self.patch_size
        self.channels = int(input_shape[-1])
        if self.capacity is None:
            self.capacity = self.max_filters
        shape = (self.capacity, ph, pw, self.channels)
        self.means = self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                     name="means")
        self.variances = self.add_weight(shape=(self.capacity,), initializer="ones",
                                         trainable=False, name="variances")
        self.active = self.add_weight(shape=(self.capacity,), initializer="zeros",
                                      trainable=False, name="active")

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._adapted = bool(np.any(ops.convert_to_numpy(self.active) > 0))

    @property
    def num_filters(self) -> int:
        """Number of fitted filters (0 before `adapt`)."""
        if not self.built:
            return 0
        return int(np.sum(ops.convert_to_numpy(self.active) > 0))

    @property
    def is_adapted(self) -> bool:
        """Whether the layer has filters (from `adapt`, `set_filters` or a saved file)."""
        return self._adapted

    def set_filters(self, means: ArrayLike, variances: ArrayLike) -> None:
        """Sets the filters directly (e.g. the authors' published `mean0.npy`/`conv0.npy`).

        Args:
            means: `(K, ph, pw, channels)` with K ≤ `capacity` (an unbuilt layer without a
                capacity is built with capacity K).
            variances: `(K,)`, trace variances (floored at `min_variance`).

        Example:
        >>> rbf = manidefense.layers.RBFLayer(patch_size=3)
        >>> rng = np.random.default_rng(0)
        >>> rbf.set_filters(rng.uniform(size=(4, 3, 3, 1)), np.full(4, 0.1))
        >>> rbf.num_filters, tuple(rbf(x).shape)
        (4, (8, 26, 26, 4))
        """
        means, variances = np.asarray(means, "float32"), np.asarray(variances, "float32")
        expected = (self.patch_size[0], self.patch_size[1])
        limit = self.capacity  # None: an unbuilt layer takes K as its capacity
        if (means.ndim != 4 or means.shape[1:3] != expected or len(means) == 0
                or (limit is not None and len(means) > limit)
                or variances.shape != (len(means),)):
            raise ValueError(
                f"Arguments `means`/`variances` must have shapes (K, {expected[0]}, "
                f"{expected[1]}, channels) and (K,) with 1 ≤ K ≤ capacity={limit}. "
                f"Received: {means.shape} and {variances.shape}")
        if not (np.all(np.isfinite(means)) and np.all(np.isfinite(variances))
                and np.all(variances > 0)):
            raise ValueError("Arguments `means`/`variances` must be finite, variances > 0.")
        if not self.built:
            if self.capacity is None:
                self.capacity = len(means)
            self.build((None, None, None, means.shape[-1]))
        self._check_channels(means.shape[-1], "means")
        k = len(means)
        full_means = np.zeros(self.means.shape, "float32")
        full_means[:k] = means
        full_variances = np.ones((self.capacity,), "float32")
        full_variances[:k] = np.maximum(variances, self.min_variance)
        self.means.assign(full_means)
        self.variances.assign(full_variances)
        self.active.assign((np.arange(self.capacity) < k).astype("float32"))
        self._adapted = True

    def _check_channels(self, channels, name):
        if channels != self.channels:
            raise ValueError(
                f"Argument `{name}` must have {self.channels} channels, the channel count of "
                f"the images this RBFLayer was built/adapted on. Received: {channels} channels")

    # --- forward -------------------------------------------------------------------------

    def call(self, inputs):
        if not self._adapted:
            raise ValueError("RBFLayer has no filters yet: call `adapt(data)` (or "
                             "`set_filters`) before using it.")
        self._check_channels(inputs.shape[-1], "inputs")
        dtype = inputs.dtype
        kernel = ops.transpose(ops.cast(self.means, dtype), (1, 2, 3, 0))  # (ph, pw, C, K)
        cross = ops.conv(inputs, kernel, strides=self.strides, padding="valid")
        ones = ops.ones(self.patch_size + (self.channels, 1), dtype=dtype)
        energy = ops.conv(ops.square(inputs), ones, strides=self.strides, padding="valid")
        mean_energy = ops.sum(ops.square(ops.cast(self.means, dtype)), axis=(1, 2, 3))
        squared = ops.maximum(energy - 2.0 * cross + mean_energy, 0.0)
        variances = ops.cast(self.variances, dtype)
        scores = -squared / (2.0 * variances) - 0.5 * ops.log(variances)
        return ops.where(ops.cast(self.active, "bool"), scores,
                         ops.cast(INACTIVE_SCORE, dtype))

    def compute_output_shape(self, input_shape):
        rows, cols = (None if size is None else output_size(size, patch, stride)
                      for size, patch, stride in zip(input_shape[1:3], self.patch_size,
                                                     self.strides, strict=True))
        return (input_shape[0], rows, cols, self.capacity or self.max_filters)

    # --- fitting -------------------------------------------------------------------------

    def adapt(self, data: np.ndarray | tf.data.Dataset, batch_size: int = 250,
              verbose: bool = False) -> "RBFLayer":
        """Fits the filters by the non-parametric hard EM, streaming over `data`.

        Args:
            data: images `(N, H, W, C)` as a numpy array (shuffled with `seed` every epoch),
                or a `tf.data.Dataset` yielding batches of images (or tuples whose first
                element is the images), iterated again as often as the EM needs.
            batch_size: images per E-step call for numpy data (a memory knob; the M-step
                always uses `images_per_step` images).
            verbose: show a progress bar over the M-steps.

        Returns:
            `self`.

        Example:
        >>> rbf = manidefense.layers.RBFLayer(max_filters=16, em_steps=10, birth_steps=5,
        ...                                   images_per_step=8, seed=0)
        >>> rbf.adapt(x).is_adapted, 1 <= rbf.num_filters <= 16
        (True, True)
        """
        batch_size = check_positive_int("batch_size", batch_size)
        batches = _image_batches(data, batch_size, self.seed)
        first = next(batches)
        if self.built:
            self._check_channels(first.shape[-1], "data")
        ph, pw = self.patch_size
        channels = first.shape[-1]
        dim = ph * pw * channels
        limit = self.max_filters if self.capacity is None else min(self.max_filters, self.capacity)
        e_step = self._e_step_function(channels)
        means, variances = np.zeros((0, dim), "float32"), np.zeros((0,), "float32")
        alpha = 1.0
        bar = keras.utils.Progbar(self.em_steps) if verbose else None
        pending = first
        for step in range(self.em_steps):
            allow_birth = step < self.birth_steps
            threshold = (em.birth_threshold(alpha, self.birth_log_likelihood) if allow_birth
                         else -np.inf)
            k = len(means)
            counts, sums, deviations = np.zeros(k + 1), np.zeros((k + 1, dim)), np.zeros(k + 1)
            seen = 0
            while seen < self.images_per_step:
                images = pending if pending is not None else next(batches)
                pending = None
                c, s, d = e_step(images, means, variances, np.float32(threshold))
                counts += c
                sums += s
                deviations += d
                seen += images.shape[0]
            share = counts[k] / max(counts.sum(), 1.0)
            means, variances, _, _ = em.m_step(
                means, variances, counts, sums, deviations, max_filters=limit,
                count_threshold=self.count_threshold, min_birth_share=self.min_birth_share,
                min_variance=self.min_variance, allow_birth=allow_birth)
            if allow_birth:
                alpha = em.update_alpha(alpha, len(means), share, self.target_filters)
            if bar is not None:
                bar.update(step + 1, [("filters", len(means)), ("new_share", share)])
        if len(means) == 0:
            raise ValueError("Argument `data` produced no filter: every filter attracted "
                             f"≤ count_threshold={self.count_threshold} patches.")
        self.set_filters(means.reshape((-1, ph, pw, channels)), variances)
        return self

    def _e_step_function(self, channels):
        """The E-step on a batch of images, compiled with XLA (it fuses the score, argmax and
        statistics passes: ≈2× faster than the plain graph here). The filters are padded to
        a multiple of `_PAD` so a birth rarely triggers a new compilation."""
        dim = self.patch_size[0] * self.patch_size[1] * channels

        @tf.function(jit_compile=True)
        def compiled(images, means, variances, active, threshold):
            patches = extract_patches(images, self.patch_size, self.strides)
            return em.e_step(ops.reshape(patches, (-1, dim)), means, variances, threshold,
                             active)

        def e_step(images, means, variances, threshold):
            k = len(means)
            padded = max(_PAD, -(-k // _PAD) * _PAD)
            full_means = np.zeros((padded, dim), "float32")
            full_means[:k] = means
            full_variances = np.ones((padded,), "float32")
            full_variances[:k] = variances
            counts, sums, deviations = compiled(images, full_means, full_variances,
                                                np.arange(padded) < k, threshold)
            keep = list(range(k)) + [padded]  # the filters, then the new bucket
            return (counts.numpy()[keep], sums.numpy()[keep], deviations.numpy()[keep])

        return e_step

    def get_config(self):
        config = super().get_config()
        config.update({
            "patch_size": self.patch_size, "strides": self.strides,
            "max_filters": self.max_filters, "capacity": self.capacity,
            "em_steps": self.em_steps,
            "birth_steps": self.birth_steps, "images_per_step": self.images_per_step,
            "birth_log_likelihood": self.birth_log_likelihood,
            "min_birth_share": self.min_birth_share, "count_threshold": self.count_threshold,
            "target_filters": self.target_filters, "min_variance": self.min_variance,
            "seed": self.seed,
        })
        return config


def _image_batches(data, batch_size, seed):
    """An endless iterator of float32 numpy image batches (numpy: reshuffled every epoch)."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        spec = spec[0] if isinstance(spec, (tuple, list)) else spec
        if getattr(spec, "shape", None) is not None and spec.shape.rank == 3:
            data = data.batch(batch_size)  # one image per element: batch them
        return _dataset_batches(data)
    if isinstance(data, (tuple, list)) and len(data) and not np.isscalar(data[0]):
        data = data[0]
    x = np.asarray(data)
    _check_data(x)
    return _array_batches(x, batch_size, seed)


def _check_data(x):
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating) or x.shape[0] == 0:
        raise ValueError("Argument `data` must be float images (N, height, width, channels). "
                         f"Received: dtype {x.dtype}, shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("Argument `data` must be finite. Received: NaN or Inf values")


def _array_batches(x, batch_size, seed):
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            yield x[np.sort(order[start:start + batch_size])].astype("float32", copy=False)


def _dataset_batches(dataset):
    while True:
        empty = True
        for item in dataset:
            if isinstance(item, (tuple, list)):
                item = item[0]
            elif isinstance(item, dict):
                raise ValueError("Argument `data` must yield images or tuples (images, ...), "
                                 "not dicts.")
            x = np.asarray(item)
            _check_data(x)
            empty = False
            yield x.astype("float32", copy=False)
        if empty:
            raise ValueError("Argument `data` is an empty dataset.")
