"""A small class-conditional style-based generator (StyleGAN v1 style) with explicit style and
noise inputs, as generative adversarial training (GAT) needs them.

The generator is three functional sub-models:

- `mapping`: `(z, label) -> w` — z and a label embedding, each normalised to unit second moment
  ("pixel norm"), concatenated, then a leaky-ReLU MLP (StyleGAN v1's LabelConcat).
- `affine`: `w -> [y_0, ..., y_{L-1}]` — one dense layer "A" per synthesis layer; the style
  `y_l = (scale_l, bias_l)` has `2 C_l` numbers.
- `synthesis`: `(styles, noises) -> image` — a learned constant; per layer an epilogue
  `x + B_l · n_l + b -> leaky ReLU -> instance norm -> (1 + scale_l) · x + bias_l` (AdaIN), with
  `n_l` a single-channel N(0, 1) noise image and `B_l` learned per-channel factors; two layers
  per resolution; a 1×1 convolution and `(tanh + 1) / 2` give images in [0, 1].

So the synthesis network is an explicit function `g(y, η)` of its style and noise tensors and
an attack differentiates with respect to its inputs directly (`synthesize(styles, noises)`).

AdaIN, not StyleGAN2's modulation/demodulation: AdaIN has both a multiplicative and an
additive style per channel and per-channel noise factors, which is what GAT perturbs; StyleGAN2
has only a multiplicative style per input channel and a scalar noise gain per layer.

Training (`fit` on `(images, labels)` in [0, 1]): the non-saturating logistic loss, R1 on real
images every `r1_interval` discriminator steps (lazy regularisation, StyleGAN2), Adam with
`beta_1 = 0` and a 10× smaller learning rate for the mapping network, and a discriminator with
one output per class of which the given label's is used (StyleGAN v1's label switch).

Reference:
    Karras, Laine, Aila, "A Style-Based Generator Architecture for Generative Adversarial
    Networks", CVPR 2019; Karras et al., "Analyzing and Improving the Image Quality of
    StyleGAN", CVPR 2020 (lazy R1); Mescheder, Geiger, Nowozin, "Which Training Methods for
    GANs do actually Converge?", ICML 2018 (R1).
"""

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops
from numpy.typing import ArrayLike

from manidefense.validation import (
    check_labels,
    check_non_negative,
    check_positive_int,
)
from manidefense.zoo.generators import _check_seed

if TYPE_CHECKING:
    from manidefense.manifold.projection import Projection

_EPS = 1e-8


# === Layers ===

@keras.saving.register_keras_serializable(package="manidefense")
class PixelNorm(layers.Layer):
    """Scales each vector to unit second moment over its last axis (StyleGAN's pixel norm)."""

    def call(self, x):
        return x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + _EPS)


@keras.saving.register_keras_serializable(package="manidefense")
class ConstantInput(layers.Layer):
    """A learned `(height, width, channels)` tensor (initialised to ones), tiled over the batch
    of its input (whose values are not used)."""

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        self.shape_ = tuple(int(d) for d in shape)

    def build(self, input_shape):
        self.constant = self.add_weight(shape=(1, *self.shape_), initializer="ones",
                                        name="constant")

    def call(self, reference):
        batch = ops.shape(reference)[0]
        return ops.tile(self.constant, (batch, 1, 1, 1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.shape_)

    def get_config(self):
        return {**super().get_config(), "shape": self.shape_}


@keras.saving.register_keras_serializable(package="manidefense")
class NoiseInjection(layers.Layer):
    """`x + B · noise + bias`: a single-channel noise image scaled by learned per-channel
    factors `B` (StyleGAN's "B"), then a learned per-channel bias."""

    def __init__(self, noise_init=0.0, **kwargs):
        super().__init__(**kwargs)
        self.noise_init = float(noise_init)

    def build(self, input_shape):
        channels = input_shape[0][-1]
        self.noise_strength = self.add_weight(
            shape=(channels,), initializer=keras.initializers.Constant(self.noise_init),
            name="noise_strength")
        self.bias = self.add_weight(shape=(channels,), initializer="zeros", name="bias")

    def call(self, inputs):
        x, noise = inputs
        return x + ops.cast(noise, x.dtype) * self.noise_strength + self.bias

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "noise_init": self.noise_init}


@keras.saving.register_keras_serializable(package="manidefense")
class AdaIN(layers.Layer):
    """Adaptive instance normalisation: each channel normalised over height and width, then
    `(1 + scale) · x + bias` with `style = concat(scale, bias)` of shape `(batch, 2C)`."""

    def call(self, inputs):
        x, style = inputs
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        x = x - mean
        x = x * ops.rsqrt(ops.mean(ops.square(x), axis=(1, 2), keepdims=True) + _EPS)
        scale, bias = ops.split(ops.cast(style, x.dtype), 2, axis=-1)
        return x * (1.0 + scale[:, None, None, :]) + bias[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="manidefense")
class LabelSwitch(layers.Layer):
    """Picks, per example, the column of `(batch, num_classes)` scores given by its label."""

    def call(self, inputs):
        scores, labels = inputs
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        one_hot = ops.one_hot(labels, ops.shape(scores)[-1], dtype=scores.dtype)
        return ops.sum(scores * one_hot, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)


# === Architecture ===

def default_channels(image_shape):
    """Channels per resolution, coarse to fine: halve the image while it stays even and at
    least 4 (28 -> 14 -> 7, 32 -> 16 -> 8 -> 4); 16 channels at full size, doubling per
    halving. 28×28: (64, 32, 16); 32×32: (128, 64, 32, 16)."""
    side, count = int(image_shape[0]), 1
    while side % 2 == 0 and side // 2 >= 4:
        side, count = side // 2, count + 1
    return tuple(16 * 2 ** (count - 1 - i) for i in range(count))


def _check_image_shape(image_shape, channels):
    try:
        shape = tuple(int(d) for d in image_shape)
        ok = len(shape) == 3 and all(d >= 1 for d in shape)
    except (TypeError, ValueError):
        ok = False
    scale = 2 ** (len(channels) - 1)
    if not ok or shape[0] % scale or shape[1] % scale:
        raise ValueError(
            "Argument `image_shape` must be (height, width, channels) with height and width "
            f"divisible by 2**(len(channels) - 1) = {scale}. Received: image_shape="
            f"{image_shape!r}, channels={channels!r}"
        )
    return shape


def _check_channels(channels):
    try:
        values = tuple(int(c) for c in channels)
        ok = len(values) >= 1 and all(c >= 1 for c in values) and values == tuple(channels)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError("Argument `channels` must be a non-empty sequence of positive "
                         f"integers, coarse to fine. Received: channels={channels!r}")
    return values


def _check_noise_init(noise_init, num_layers):
    values = ((noise_init,) * num_layers if isinstance(noise_init, numbers.Real)
              else tuple(noise_init))
    if len(values) != num_layers or not all(
            isinstance(v, numbers.Real) and np.isfinite(v) for v in values):
        raise ValueError(
            f"Argument `noise_init` must be a number or {num_layers} numbers (one per "
            f"synthesis layer). Received: noise_init={noise_init!r}")
    return tuple(float(v) for v in values)


@keras.saving.register_keras_serializable(package="manidefense")
class StyleGenerator(keras.Model):
    """A small class-conditional style-based GAN whose synthesis is `g(styles, noises)`.

    Two synthesis layers per resolution, so `2 · len(channels)` layers, coarse to fine; the
    default for 28×28 is 6 layers at 7×7, 7×7, 14×14, 14×14, 28×28, 28×28 with 64, 64, 32,
    32, 16, 16 channels: 448 style values and 2,058 noise values per image. `layer_groups`
    pairs the two layers of each resolution: coarse layers change shape and class-level
    content, fine ones edges and texture.

    Args:
        image_shape: `(height, width, channels)` of the images, values in [0, 1].
        num_classes: number of labels the generator is conditioned on.
        latent_dim: size of z (drawn from N(0, I)) and of the label embedding.
        w_dim: size of the mapped latent w.
        channels: feature channels per resolution, coarse to fine; default
            `default_channels(image_shape)` ((64, 32, 16) for 28×28, (128, 64, 32, 16) for
            32×32).
        mapping_layers: dense layers of the mapping network.
        noise_init: initial noise factors B, one number or one per layer. StyleGAN starts at
            0; after a short CPU run that leaves the noise inputs almost unused (so noise
            attacks fail), and 0.1 in the coarse layers lets noise change the class. The
            default is 0 in the two coarsest layers and 0.1 elsewhere.
        r1_gamma: weight γ of the R1 penalty `γ/2 · ||∇_x D(x)||²` on real images.
        r1_interval: the penalty is applied (multiplied by the interval) every this many
            discriminator steps.
        seed: seed of the latents and noise drawn during training.
        **kwargs: `keras.Model` arguments such as `name`.

    Attributes:
        mapping: `(z, labels) -> w`. affine: `w -> styles` (a list). synthesis:
        `styles + noises -> images` (inputs: the L styles, then the L noises).
        discriminator: `(images, labels) -> (batch, 1)` logits.

    Example:
    >>> gen = manidefense.zoo.StyleGenerator()
    >>> gen.compile()
    >>> gen.fit(x_train, y_train, epochs=3, batch_size=64)
    >>> styles, noises, images = gen.sample([0, 1, 2], seed=0)
    >>> same = gen.synthesize(styles, noises)

    Reference:
        Karras, Laine, Aila, CVPR 2019 (StyleGAN); Poursaeed et al., ICCV 2021 (GAT).
    """

    def __init__(self, image_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10,
                 latent_dim: int = 64, w_dim: int = 128, channels: Sequence[int] | None = None,
                 mapping_layers: int = 3, noise_init: float | Sequence[float] | None = None,
                 r1_gamma: float = 0.5, r1_interval: int = 16, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.channels = _check_channels(default_channels(image_shape) if channels is None
                                        else channels)
        self.image_shape = _check_image_shape(image_shape, self.channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        if self.num_classes < 2:
            raise ValueError(f"Argument `num_classes` must be at least 2. Received: "
                             f"num_classes={num_classes!r}")
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.w_dim = check_positive_int("w_dim", w_dim)
        self.mapping_layers = check_positive_int("mapping_layers", mapping_layers)
        num_layers = 2 * len(self.channels)
        if noise_init is None:
            noise_init = (0.0, 0.0) + (0.1,) * (num_layers - 2)
        self.noise_init = _check_noise_init(noise_init, num_layers)
        self.r1_gamma = check_non_negative("r1_gamma", r1_gamma)
        self.r1_interval = check_positive_int("r1_interval", r1_interval)
        self.seed = _check_seed(seed)
        # === Shapes ===
        base = (self.image_shape[0] // 2 ** (len(self.channels) - 1),
                self.image_shape[1] // 2 ** (len(self.channels) - 1))
        self.layer_channels = tuple(c for c in self.channels for _ in range(2))
        self.layer_resolutions = tuple((base[0] * 2 ** (i // 2), base[1] * 2 ** (i // 2))
                                       for i in range(num_layers))
        self.style_shapes = tuple((2 * c,) for c in self.layer_channels)
        self.noise_shapes = tuple((h, w, 1) for h, w in self.layer_resolutions)
        self.layer_groups = tuple((i, i + 1) for i in range(0, num_layers, 2))
        # === Sub-models ===
        self.mapping = self._build_mapping()
        self.affine = self._build_affine()
        self.synthesis = self._build_synthesis(base)
        self.discriminator = self._build_discriminator()
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        # === Metrics ===
        self.generator_tracker = keras.metrics.Mean(name="generator_loss")
        self.discriminator_tracker = keras.metrics.Mean(name="discriminator_loss")
        self.r1_tracker = keras.metrics.Mean(name="r1_penalty")
        self.built = True

    # === Sizes ===

    @property
    def num_layers(self) -> int:
        """Number of synthesis layers (each with one style and one noise input)."""
        return len(self.layer_channels)

    @property
    def style_size(self) -> int:
        """Style values per image: `Σ_l 2 C_l` (448 for the default 28×28 generator)."""
        return int(sum(s[0] for s in self.style_shapes))

    @property
    def noise_size(self) -> int:
        """Noise values per image: `Σ_l H_l W_l` (2,058 for the default 28×28 generator)."""
        return int(sum(np.prod(s) for s in self.noise_shapes))

    @property
    def latent_size(self) -> int:
        """Length of the flat latent vector `flatten(styles, noises)`."""
        return self.style_size + self.noise_size

    # === Building ===

    def _build_mapping(self):
        z = keras.Input((self.latent_dim,), name="z")
        labels = keras.Input((), dtype="int32", name="labels")
        embedded = layers.Embedding(self.num_classes, self.latent_dim, name="label_embedding",
                                    embeddings_initializer="random_normal")(labels)
        h = layers.Concatenate()([PixelNorm()(z), PixelNorm()(embedded)])
        for i in range(self.mapping_layers):
            h = layers.Dense(self.w_dim, name=f"mapping_{i}")(h)
            h = layers.LeakyReLU(0.2)(h)
        return keras.Model([z, labels], h, name="mapping")

    def _build_affine(self):
        w = keras.Input((self.w_dim,), name="w")
        styles = [layers.Dense(shape[0], bias_initializer="zeros", name=f"style_{i}")(w)
                  for i, shape in enumerate(self.style_shapes)]
        return keras.Model(w, styles, name="affine")

    def _build_synthesis(self, base):
        styles = [keras.Input(shape, name=f"style_{i}") for i, shape in
                  enumerate(self.style_shapes)]
        noises = [keras.Input(shape, name=f"noise_{i}") for i, shape in
                  enumerate(self.noise_shapes)]

        def epilogue(h, i):
            h = NoiseInjection(self.noise_init[i], name=f"noise_injection_{i}")([h, noises[i]])
            h = layers.LeakyReLU(0.2)(h)
            return AdaIN(name=f"adain_{i}")([h, styles[i]])

        h = ConstantInput((*base, self.channels[0]), name="constant")(styles[0])
        for i in range(self.num_layers):
            if i > 0:
                if i % 2 == 0:
                    h = layers.UpSampling2D(2, interpolation="bilinear")(h)
                h = layers.Conv2D(self.layer_channels[i], 3, padding="same", use_bias=False,
                                  name=f"conv_{i}")(h)
            h = epilogue(h, i)
        h = layers.Conv2D(self.image_shape[-1], 1, name="to_image")(h)
        images = layers.Rescaling(0.5, offset=0.5, name="images")(layers.Activation("tanh")(h))
        return keras.Model(styles + noises, images, name="synthesis")

    def _build_discriminator(self):
        x = keras.Input(self.image_shape, name="images")
        labels = keras.Input((), dtype="int32", name="labels")
        h = layers.Rescaling(2.0, offset=-1.0)(x)

        def conv(h, filters, strides=1):
            h = layers.Conv2D(filters, 3, strides=strides, padding="same")(h)
            return layers.LeakyReLU(0.2)(h)

        h = conv(h, self.channels[-1])
        for filters in reversed(self.channels[:-1]):
            h = conv(conv(h, filters, strides=2), filters)
        h = conv(h, self.channels[0], strides=2)
        h = layers.LeakyReLU(0.2)(layers.Dense(self.channels[0])(layers.Flatten()(h)))
        scores = layers.Dense(self.num_classes, name="class_scores")(h)
        return keras.Model([x, labels], LabelSwitch()([scores, labels]), name="discriminator")

    # === Latents ===

    def _check_labels(self, labels):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("Argument `labels` must be a non-empty 1-D sequence of integer "
                             f"labels. Received: shape {labels.shape}")
        return check_labels(labels, len(labels), "labels", self.num_classes).astype(np.int32)

    def styles_for(self, z: ArrayLike | tf.Tensor, labels: ArrayLike | tf.Tensor,
                   training: bool = False) -> list[tf.Tensor]:
        """The styles `A(mapping(z, labels))`, a list with one `(batch, 2 C_l)` tensor per
        layer (graph-safe).

        Args:
            z: latents `(batch, latent_dim)`.
            labels: integer labels `(batch,)`.
            training: run the mapping and affine layers in training mode.

        Returns:
            A list of `num_layers` style tensors.

        Example:
        >>> gen = manidefense.zoo.StyleGenerator()
        >>> z = keras.random.normal((4, gen.latent_dim), seed=0)
        >>> styles = gen.styles_for(z, np.array([0, 1, 2, 3]))
        >>> len(styles), tuple(styles[0].shape)
        (6, (4, 128))
        """
        w = self.mapping([z, ops.cast(labels, "int32")], training=training)
        styles = self.affine(w, training=training)
        return list(styles) if isinstance(styles, (list, tuple)) else [styles]

    def random_noise(self, num: int,
                     seed: int | keras.random.SeedGenerator | None = None) -> list[tf.Tensor]:
        """A list of `num` N(0, 1) noise images per layer; `seed`: int, SeedGenerator or None.

        Args:
            num: images per layer.
            seed: an int, a `keras.random.SeedGenerator` or None.

        Returns:
            A list of `num_layers` tensors `(num, H_l, W_l, 1)`.

        Example:
        >>> gen = manidefense.zoo.StyleGenerator()
        >>> [tuple(n.shape) for n in gen.random_noise(4, seed=0)][::2]
        [(4, 7, 7, 1), (4, 14, 14, 1), (4, 28, 28, 1)]
        """
        if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            seed = keras.random.SeedGenerator(_check_seed(seed))
        return [keras.random.normal((num, *shape), seed=seed) for shape in self.noise_shapes]

    def sample(self, labels: ArrayLike,
               seed: int | None = None) -> tuple[list[tf.Tensor], list[tf.Tensor], tf.Tensor]:
        """Conditional samples: returns `(styles, noises, images)` for the given labels.

        Args:
            labels: integer labels, one per sample.
            seed: an int makes z and the noise reproducible.

        Returns:
            `styles` (list of `(n, 2 C_l)` tensors), `noises` (list of `(n, H_l, W_l, 1)`
            tensors) and `images` `(n, H, W, C)` in [0, 1].

        Example:
        >>> gen = manidefense.zoo.StyleGenerator.pretrained()
        >>> styles, noises, images = gen.sample([0, 1, 9], seed=0)  # T-shirt, trouser, boot
        >>> tuple(images.shape)
        (3, 28, 28, 1)
        """
        labels = self._check_labels(labels)
        seed = _check_seed(seed)
        generator = keras.random.SeedGenerator(seed)
        z = keras.random.normal((len(labels), self.latent_dim), seed=generator)
        noises = self.random_noise(len(labels), seed=generator)
        styles = self.styles_for(z, ops.convert_to_tensor(labels))
        return styles, noises, self.synthesize(styles, noises)

    def synthesize(self, styles: Sequence[ArrayLike | tf.Tensor],
                   noises: Sequence[ArrayLike | tf.Tensor]) -> tf.Tensor:
        """`g(styles, noises)`: images in [0, 1] (graph-safe, inference mode).

        Args:
            styles: `num_layers` tensors `(batch, 2 C_l)`.
            noises: `num_layers` tensors `(batch, H_l, W_l, 1)`.

        Returns:
            Images `(batch, H, W, C)`.

        Example:
        >>> gen = manidefense.zoo.StyleGenerator()
        >>> styles, noises, images = gen.sample([0, 1], seed=0)
        >>> bool(np.allclose(gen.synthesize(styles, noises), images))
        True
        """
        inputs = [ops.convert_to_tensor(t, "float32") for t in [*styles, *noises]]
        return self.synthesis(inputs, training=False)

    def flatten(self, styles: Sequence[ArrayLike | tf.Tensor],
                noises: Sequence[ArrayLike | tf.Tensor]) -> tf.Tensor:
        """The latents as one `(batch, latent_size)` tensor: styles then noises, layer order.

        Args:
            styles: `num_layers` style tensors.
            noises: `num_layers` noise tensors.

        Returns:
            A float32 tensor `(batch, latent_size)`.

        Example:
        >>> gen = manidefense.zoo.StyleGenerator()
        >>> styles, noises, images = gen.sample([0, 1], seed=0)
        >>> tuple(gen.flatten(styles, noises).shape)  # 448 style + 2058 noise values
        (2, 2506)
        """
        parts = [ops.reshape(ops.cast(t, "float32"), (-1, int(np.prod(t.shape[1:]))))
                 for t in list(styles) + list(noises)]
        return ops.concatenate(parts, axis=-1)

    def unflatten(self, flat: tf.Tensor) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """Inverse of `flatten`: `(styles, noises)` lists.

        Args:
            flat: `(batch, latent_size)` latents.

        Returns:
            `(styles, noises)`, each a list of `num_layers` tensors.

        Example:
        >>> gen = manidefense.zoo.StyleGenerator()
        >>> styles, noises, images = gen.sample([0, 1], seed=0)
        >>> styles2, noises2 = gen.unflatten(gen.flatten(styles, noises))
        >>> bool(np.allclose(styles2[0], styles[0])), bool(np.allclose(noises2[-1], noises[-1]))
        (True, True)
        """
        sizes = [s[0] for s in self.style_shapes] + [int(np.prod(s)) for s in self.noise_shapes]
        parts = ops.split(flat, np.cumsum(sizes)[:-1].tolist(), axis=-1)
        styles = parts[:self.num_layers]
        noises = [ops.reshape(p, (-1, *shape)) for p, shape in
                  zip(parts[self.num_layers:], self.noise_shapes, strict=True)]
        return list(styles), noises

    def decode_flat(self, flat: ArrayLike | tf.Tensor) -> tf.Tensor:
        """`g(unflatten(flat))`: the synthesis as a function of one flat latent vector.

        Args:
            flat: `(batch, latent_size)` latents.

        Returns:
            Images `(batch, H, W, C)`.

        Example:
        >>> gen = manidefense.zoo.StyleGenerator()
        >>> styles, noises, images = gen.sample([0, 1], seed=0)
        >>> bool(np.allclose(gen.decode_flat(gen.flatten(styles, noises)), images, atol=1e-6))
        True
        """
        return self.synthesize(*self.unflatten(ops.cast(flat, "float32")))

    def check_latents(self, latents: tuple[Sequence, Sequence],
                      name: str = "latents") -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Validates `(styles, noises)` against this generator; returns float32 numpy lists.

        Args:
            latents: a pair `(styles, noises)` of `num_layers`-entry lists.
            name: the argument's name, for the error message.

        Returns:
            `(styles, noises)` as lists of float32 numpy arrays.

        Raises:
            ValueError: wrong structure, shapes, dtype, or non-finite values.

        Example:
        >>> gen = manidefense.zoo.StyleGenerator()
        >>> styles, noises, images = gen.sample([0, 1], seed=0)
        >>> styles_np, noises_np = gen.check_latents((styles, noises))
        >>> styles_np[0].dtype, styles_np[0].shape
        (dtype('float32'), (2, 128))
        """
        ok = isinstance(latents, (tuple, list)) and len(latents) == 2
        if ok:
            styles, noises = latents
            ok = (isinstance(styles, (tuple, list)) and isinstance(noises, (tuple, list))
                  and len(styles) == len(noises) == self.num_layers)
        if not ok:
            raise ValueError(
                f"Argument `{name}` must be a pair (styles, noises) of {self.num_layers}-entry "
                "lists (one tensor per synthesis layer, e.g. from `generator.sample`). Received: "
                f"{type(latents).__name__}")
        out, batch = [], None
        for kind, tensors, shapes in (("styles", styles, self.style_shapes),
                                      ("noises", noises, self.noise_shapes)):
            checked = []
            for i, (t, shape) in enumerate(zip(tensors, shapes, strict=True)):
                a = np.asarray(ops.convert_to_numpy(t) if not isinstance(t, np.ndarray) else t)
                if not np.issubdtype(a.dtype, np.floating):
                    raise ValueError(f"Argument `{name}` {kind}[{i}] must be floating point. "
                                     f"Received: dtype {a.dtype}")
                if a.shape[1:] != tuple(shape) or (batch is not None and len(a) != batch):
                    raise ValueError(
                        f"Argument `{name}` {kind}[{i}] must have shape (batch, "
                        f"{', '.join(map(str, shape))}) with the same batch for every tensor. "
                        f"Received: shape {a.shape}")
                batch = len(a)
                if not np.all(np.isfinite(a)):
                    raise ValueError(f"Argument `{name}` {kind}[{i}] contains NaN or Inf.")
                checked.append(a.astype(np.float32))
            out.append(checked)
        if batch == 0:
            raise ValueError(f"Argument `{name}` is empty (batch size 0).")
        return out[0], out[1]

    def mean_styles(self, labels: ArrayLike | None = None, num: int = 1024,
                    seed: int = 0) -> list[tf.Tensor]:
        """The mean style per layer over `num` samples (of `labels`, or of all classes).

        Args:
            labels: the classes to average over (repeated to `num` samples), or None for
                all classes.
            num: samples averaged.
            seed: seed of the latents.

        Returns:
            A list of `num_layers` tensors `(2 C_l,)`.

        Example:
        >>> gen = manidefense.zoo.StyleGenerator()
        >>> tuple(gen.mean_styles([3], num=256)[0].shape)
        (128,)
        """
        if labels is None:
            labels = np.arange(num) % self.num_classes
        labels = self._check_labels(np.resize(np.asarray(labels), num))
        z = keras.random.normal((num, self.latent_dim), seed=seed)
        return [ops.mean(s, axis=0) for s in self.styles_for(z, ops.convert_to_tensor(labels))]

    def embed(self, x: ArrayLike, labels: ArrayLike | None = None, num_steps: int = 300,
              learning_rate: float = 0.02,
              **kwargs) -> "tuple[list[np.ndarray], list[np.ndarray], Projection]":
        """Input-conditioned generation (GAT §3.1.1): latents `(styles, noises)` whose
        synthesis is close to the images `x`, found by `manifold.projection.project` (L1 + 1 -
        SSIM by default) from the class's mean style (`labels`) or the overall mean style and
        zero noise. Returns `(styles, noises, projection)` with numpy arrays.

        Args:
            x: images `(n, H, W, C)` in [0, 1].
            labels: optional classes of `x` (start from each class's mean style).
            num_steps: optimisation steps of the projection.
            learning_rate: its learning rate.
            **kwargs: further arguments of `manifold.projection.project` (e.g. `l1_weight`).

        Returns:
            `(styles, noises, projection)`: the latents as lists of numpy arrays and the
            `Projection` (its `images`, `distances`, `l1`).

        Example:
        >>> gen = manidefense.zoo.StyleGenerator.pretrained()
        >>> _, _, images = gen.sample([0, 1], seed=0)
        >>> styles, noises, result = gen.embed(images, labels=[0, 1], num_steps=20)
        >>> len(styles) == len(noises) == gen.num_layers
        True
        """
        from manidefense.manifold.projection import project

        x = np.asarray(x, dtype=np.float32)
        if labels is None:
            start = [ops.convert_to_numpy(s) for s in self.mean_styles()]
            styles0 = [np.broadcast_to(s, (len(x), *s.shape)) for s in start]
        else:
            labels = self._check_labels(labels)
            if len(labels) != len(x):
                raise ValueError(f"Argument `labels` must have one label per image ({len(x)}). "
                                 f"Received: {len(labels)} labels")
            means = {c: [ops.convert_to_numpy(s) for s in self.mean_styles([c], num=256)]
                     for c in np.unique(labels)}
            styles0 = [np.stack([means[c][i] for c in labels]) for i in range(self.num_layers)]
        noises0 = [np.zeros((len(x), *s), np.float32) for s in self.noise_shapes]
        w0 = ops.convert_to_numpy(self.flatten(styles0, noises0))
        result = project(self._flat_decoder(), x, initial_latents=w0, num_steps=num_steps,
                         learning_rate=learning_rate, **kwargs)
        styles, noises = self.unflatten(ops.convert_to_tensor(result.latents))
        return ([ops.convert_to_numpy(s) for s in styles],
                [ops.convert_to_numpy(n) for n in noises], result)

    def _flat_decoder(self):
        """One cached callable `flat -> images` (the projection caches its graph by decoder)."""
        decoder = self.__dict__.get("_flat_decoder_fn")
        if decoder is None:
            def decoder(flat):
                return self.decode_flat(flat)
            object.__setattr__(self, "_flat_decoder_fn", decoder)
        return decoder

    @classmethod
    def pretrained(cls, dataset: str = "fashion_mnist") -> "StyleGenerator":
        """The generator trained by `models/gat.py`, shipped with the package (no download).

        Args:
            dataset: `"fashion_mnist"` (28×28×1, the default configuration; its quality
                figures are in models/RESULTS.md, section gat).

        Returns:
            A `StyleGenerator` in inference use (not compiled).

        Example:
        >>> gen = manidefense.zoo.StyleGenerator.pretrained("fashion_mnist")
        >>> gen.image_shape, gen.num_classes
        ((28, 28, 1), 10)
        """
        from pathlib import Path

        files = {"fashion_mnist": "style_generator_fashion_mnist.keras"}
        if dataset not in files:
            raise ValueError(f"Argument `dataset` must be one of {sorted(files)}: the datasets "
                             f"with shipped generator weights. Received: dataset={dataset!r}")
        path = Path(__file__).parent / "weights" / files[dataset]
        if not path.exists():
            raise ValueError(f"The shipped weights {path} are missing from this installation "
                             "(reinstall manidefense, or train one with models/gat.py).")
        return keras.saving.load_model(path, compile=False)

    # === Keras model ===

    def call(self, inputs, training=False):
        """`(z, labels) -> images` with fresh noise (for `predict`-style use)."""
        z, labels = inputs
        styles = self.styles_for(z, labels, training=training)
        noises = self.random_noise(ops.shape(z)[0], seed=self.seed_generator)
        return self.synthesis(styles + noises, training=training)

    @property
    def generator_variables(self) -> list:
        """The affine and synthesis layers' trainable variables (the generator optimizer's)."""
        return self.affine.trainable_variables + self.synthesis.trainable_variables

    @property
    def metrics(self):
        return [self.generator_tracker, self.discriminator_tracker, self.r1_tracker]

    def compile(self, generator_optimizer: keras.optimizers.Optimizer | str | None = None,
                discriminator_optimizer: keras.optimizers.Optimizer | str | None = None,
                mapping_optimizer: keras.optimizers.Optimizer | str | None = None,
                **kwargs) -> None:
        """One optimizer per part: default `Adam(2e-4, beta_1=0, beta_2=0.99, epsilon=1e-8)`
        for the synthesis + affine layers and the discriminator, and the same with 2e-5 for
        the mapping network (StyleGAN's slower mapping). `kwargs` go to `keras.Model.compile`."""
        def resolve(optimizer, rate):
            if optimizer is None:
                return keras.optimizers.Adam(rate, beta_1=0.0, beta_2=0.99, epsilon=1e-8)
            return keras.optimizers.get(optimizer)

        self.generator_optimizer = resolve(generator_optimizer, 2e-4)
        self.discriminator_optimizer = resolve(discriminator_optimizer, 2e-4)
        self.mapping_optimizer = resolve(mapping_optimizer, 2e-5)
        super().compile(optimizer=self.generator_optimizer, **kwargs)

    def get_compile_config(self):
        if not self.compiled:
            return {}
        serialize = keras.optimizers.serialize
        return {"generator_optimizer": serialize(self.generator_optimizer),
                "discriminator_optimizer": serialize(self.discriminator_optimizer),
                "mapping_optimizer": serialize(self.mapping_optimizer)}

    def compile_from_config(self, config):
        self.compile(**{key: keras.optimizers.deserialize(value)
                        for key, value in config.items()})
        self.generator_optimizer.build(self.generator_variables)
        self.discriminator_optimizer.build(self.discriminator.trainable_variables)
        self.mapping_optimizer.build(self.mapping.trainable_variables)

    def _fakes(self, labels, training):
        z = keras.random.normal((ops.shape(labels)[0], self.latent_dim),
                                seed=self.seed_generator)
        return self.call((z, labels), training=training)

    def _r1(self, x, labels):
        with tf.GradientTape() as tape:
            tape.watch(x)
            scores = self.discriminator([x, labels], training=True)
            total = ops.sum(scores)
        grad = tape.gradient(total, x)
        return ops.mean(ops.sum(ops.square(grad), axis=(1, 2, 3)))

    def train_step(self, data):
        x, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if labels is None:
            raise ValueError("StyleGenerator is class-conditional: fit it on (images, labels).")
        x = ops.cast(x, "float32")
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        # Discriminator: logistic loss, plus the lazy R1 penalty on reals every r1_interval.
        regularize = ops.equal(
            self.discriminator_optimizer.iterations % self.r1_interval, 0)
        with tf.GradientTape() as tape:
            fakes = tf.stop_gradient(self._fakes(labels, training=True))
            real = self.discriminator([x, labels], training=True)
            fake = self.discriminator([fakes, labels], training=True)
            d_loss = ops.mean(ops.softplus(-real)) + ops.mean(ops.softplus(fake))
            if self.r1_gamma > 0:
                r1 = tf.cond(regularize, lambda: self._r1(x, labels),
                             lambda: tf.constant(0.0))
                total = d_loss + 0.5 * self.r1_gamma * self.r1_interval * r1
            else:
                r1, total = tf.constant(0.0), d_loss
        variables = self.discriminator.trainable_variables
        self.discriminator_optimizer.apply(tape.gradient(total, variables), variables)
        # Generator (mapping at its own rate): non-saturating loss on fresh fakes.
        g_vars, m_vars = self.generator_variables, self.mapping.trainable_variables
        with tf.GradientTape() as tape:
            score = self.discriminator([self._fakes(labels, training=True), labels],
                                       training=True)
            g_loss = ops.mean(ops.softplus(-score))
        grads = tape.gradient(g_loss, g_vars + m_vars)
        self.generator_optimizer.apply(grads[:len(g_vars)], g_vars)
        self.mapping_optimizer.apply(grads[len(g_vars):], m_vars)
        self.generator_tracker.update_state(g_loss)
        self.discriminator_tracker.update_state(d_loss)
        self.r1_tracker.update_state(r1, sample_weight=ops.cast(regularize, "float32"))
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = ops.cast(x, "float32")
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        real = self.discriminator([x, labels], training=False)
        fake = self.discriminator([self._fakes(labels, training=False), labels], training=False)
        self.generator_tracker.update_state(ops.mean(ops.softplus(-fake)))
        self.discriminator_tracker.update_state(
            ops.mean(ops.softplus(-real)) + ops.mean(ops.softplus(fake)))
        return {m.name: m.result() for m in self.metrics[:2]}

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape,
                "num_classes": self.num_classes, "latent_dim": self.latent_dim,
                "w_dim": self.w_dim, "channels": self.channels,
                "mapping_layers": self.mapping_layers, "noise_init": self.noise_init,
                "r1_gamma": self.r1_gamma, "r1_interval": self.r1_interval, "seed": self.seed}


__all__ = ["AdaIN", "ConstantInput", "LabelSwitch", "NoiseInjection", "PixelNorm",
           "StyleGenerator", "default_channels"]
