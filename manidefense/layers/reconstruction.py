"""ReconstructionLayer: rebuild every patch from the RBF filters (RBF-CNN §III-b)."""

import math

import keras
import numpy as np
from keras import ops

from manidefense.layers.rbf import RBFLayer
from manidefense.manifold.patches import fold_patches, overlap_counts
from manidefense.validation import check_bounds, check_non_negative, check_positive

#: β1 = p · ln 2: the authors' code weighs filters by 2^(p · sigmoid(s)), p = 125 while
#: training the classifier and p = 25 at test time.
TRAIN_BETA1 = 125 * math.log(2.0)
#: The authors' test-time sharpness, `25 ln 2`.
TEST_BETA1 = 25 * math.log(2.0)


@keras.saving.register_keras_serializable(package="manidefense")
class ReconstructionLayer(keras.layers.Layer):
    """Replaces every patch of the input by a weighted mix of (noisy) RBF filter means.

    Called on images, it scores their patches with its `RBFLayer` and, per patch:

    1. weights `w = normalize(exp(β1 · sigmoid(s)))` over the fitted filters (computed as a
       softmax of `β1 · sigmoid(s)`, which is the same and cannot overflow);
    2. draws templates `z̃_j = μ_j + ε_j`, `ε_j ~ N(0, (β2 v_j)² I)` — fresh for every example
       and every call — and rebuilds the patch as `wᵀ Z̃` (eq. 4);

    then overlapping patches are averaged back into an image of the input's shape (each pixel
    divided by the number of patches covering it; pixels no patch covers, which only a
    stride larger than 1 leaves, keep their input value) and clipped to `bounds`.

    The noise scale follows the authors' code: per-pixel standard deviation `β2 · v_j`, with
    `v_j` the filter's trace variance (see `RBFLayer`); the paper's eq. 4 writes
    `N(μ_j, σ_j β2 I)`. The layer has no trainable parameters. With `β2 > 0` it declares
    itself `randomized` (attacks need EoT) and `non_differentiable`, with `surrogate` the same
    layer at `β2 = 0`: the gradient of one noisy draw is not the gradient of the defense, and
    the paper's adaptive attack (§IV-A) backpropagates through `z̃_j = μ_j`. The evaluation
    (`manidefense.evaluation`) builds that BPDA + EoT attack from these declarations.

    Args:
        rbf: a fitted `RBFLayer` (shared, not copied: the layer saves it with itself).
        beta1: weight sharpness at inference (the authors' test value `25 ln 2` by default).
        beta2: noise level; 0 makes the layer deterministic (the authors used 1.75 on MNIST).
        clip: clip the output to `bounds`.
        train_beta1: sharpness when called with `training=True` (the authors trained their
            classifier with `125 ln 2`); None uses `beta1`.
        bounds: valid pixel range, for `clip`.
        seed: seed of the noise.
        **kwargs: `keras.layers.Layer` arguments.

    Example:
    >>> recon = manidefense.layers.ReconstructionLayer(rbf, beta2=1.75)
    >>> x_clean = recon(x)    # same shape as x, one noise draw per example
    """

    def __init__(self, rbf: RBFLayer, beta1: float = TEST_BETA1, beta2: float = 0.0,
                 clip: bool = True, train_beta1: float | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0), seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(rbf, RBFLayer):
            raise ValueError(f"Argument `rbf` must be an RBFLayer. Received: {rbf!r}")
        self.rbf = rbf
        self.beta1 = check_positive("beta1", beta1)
        self.beta2 = check_non_negative("beta2", beta2)
        if not isinstance(clip, bool):
            raise ValueError(f"Argument `clip` must be True or False. Received: clip={clip!r}")
        self.clip = clip
        self.train_beta1 = (None if train_beta1 is None
                            else check_positive("train_beta1", train_beta1))
        self.bounds = check_bounds(bounds)
        self.seed = seed
        # Only a noisy layer has random state (so its noise-free surrogate, built lazily and
        # possibly while a graph is traced, creates no variable).
        if self.beta2 > 0:
            self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def randomized(self) -> bool:
        """True with noise (`beta2 > 0`): attacks need EoT."""
        return self.beta2 > 0

    @property
    def non_differentiable(self) -> bool:
        """True with noise (`beta2 > 0`): adaptive attacks use BPDA through `surrogate`."""
        return self.beta2 > 0

    @property
    def surrogate(self) -> "ReconstructionLayer | None":
        """The noise-free layer (β2 = 0) whose gradient BPDA uses; None when already noise-free."""
        if self.beta2 == 0:
            return None
        cached = self.__dict__.get("_surrogate_layer")
        if cached is None:
            cached = ReconstructionLayer(self.rbf, beta1=self.beta1, beta2=0.0, clip=self.clip,
                                         train_beta1=self.train_beta1, bounds=self.bounds,
                                         name=f"{self.name}_surrogate")
            # Not tracked: the surrogate shares `rbf` and must not be saved a second time.
            object.__setattr__(self, "_surrogate_layer", cached)
        return cached

    def build(self, input_shape):
        if not self.rbf.built:
            self.rbf.build(input_shape)

    def call(self, inputs, training=False):
        rbf = self.rbf
        scores = rbf(inputs)
        beta1 = self.train_beta1 if training and self.train_beta1 is not None else self.beta1
        dtype = scores.dtype
        active = ops.cast(rbf.active, "bool")
        logits = ops.where(active, beta1 * ops.sigmoid(scores), ops.cast(-1e4, dtype))
        if logits.shape[-1] == 1:  # one filter: every patch becomes its (noisy) mean
            weights = ops.ones_like(logits)
        else:
            weights = ops.softmax(logits, axis=-1)  # (batch, H', W', K)
        batch = ops.shape(inputs)[0]
        rows, cols, k = weights.shape[1], weights.shape[2], weights.shape[3]
        dim = int(np.prod(rbf.means.shape[1:]))
        templates = ops.reshape(ops.cast(rbf.means, dtype), (1, k, dim))
        if self.beta2 > 0:
            scale = ops.cast(self.beta2 * rbf.variances, dtype)[None, :, None]
            noise = keras.random.normal((batch, k, dim), dtype=dtype, seed=self.seed_generator)
            templates = templates + noise * scale
        patches = ops.matmul(ops.reshape(weights, (batch, rows * cols, k)), templates)
        patches = ops.reshape(patches, (batch, rows, cols, dim))
        image_shape = tuple(inputs.shape[1:])
        summed = fold_patches(patches, image_shape, rbf.patch_size, rbf.strides)
        counts = overlap_counts(image_shape, rbf.patch_size, rbf.strides)
        covered = ops.convert_to_tensor(counts > 0)
        outputs = ops.where(covered, summed / ops.cast(np.maximum(counts, 1.0), dtype), inputs)
        if self.clip:
            outputs = ops.clip(outputs, self.bounds[0], self.bounds[1])
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "rbf": keras.saving.serialize_keras_object(self.rbf), "beta1": self.beta1,
            "beta2": self.beta2, "clip": self.clip, "train_beta1": self.train_beta1,
            "bounds": self.bounds, "seed": self.seed,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["rbf"] = keras.saving.deserialize_keras_object(config["rbf"])
        return cls(**config)
