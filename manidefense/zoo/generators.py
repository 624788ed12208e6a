"""Small image generators: a convolutional VAE and a DCGAN, each with its own `train_step`.

Both expose a `decoder` (latents `(batch, latent_dim)` -> images in [0, 1]) so that
`manifold.projection` and `attacks.LatentPGD` take `vae.decoder` and `gan.decoder` alike.
Images are NHWC with height and width divisible by 4 (two stride-2 stages) and any channel
count. Training is TensorFlow-specific (`tf.GradientTape`), as in `training/`.
"""

import numbers

import keras
import tensorflow as tf
from keras import layers, ops
from numpy.typing import ArrayLike

from manidefense.validation import check_choice, check_non_negative, check_positive_int

#: Reconstruction losses of `VAE(reconstruction=...)`.
RECONSTRUCTIONS = ("bce", "l1", "l2")


def _check_image_shape(image_shape):
    try:
        shape = tuple(int(d) for d in image_shape)
        ok = len(shape) == 3 and all(d >= 1 for d in shape) and shape == tuple(image_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or shape[0] % 4 or shape[1] % 4:
        raise ValueError(
            "Argument `image_shape` must be (height, width, channels) of positive integers "
            f"with height and width divisible by 4. Received: image_shape={image_shape!r}"
        )
    return shape


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(
            f"Argument `seed` must be None or an integer >= 0. Received: seed={seed!r}")
    return int(seed)


def _images(data):
    """The images of a batch given as `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`."""
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    return ops.cast(x, "float32")


def _minimize(optimizer, loss, tape, variables):
    """One optimizer step; `scale_loss` keeps a LossScaleOptimizer (mixed precision) exact."""
    scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
    optimizer.apply(tape.gradient(scaled, variables), variables)


def _track(trackers, values):
    """Updates `keras.metrics.Mean` trackers and returns their results for the history."""
    for tracker, value in zip(trackers, values, strict=True):
        tracker.update_state(value)
    return {tracker.name: tracker.result() for tracker in trackers}


def _relu(h, batch_norm):
    return layers.ReLU()(layers.BatchNormalization()(h) if batch_norm else h)


def _upsampling_stack(latent_dim, image_shape, width, batch_norm, name):
    """Latents -> dense -> (H/4, W/4, 2 width) -> two stride-2 transposed convolutions ->
    logits -> sigmoid. The VAE mirrors its encoder (2 width, width, then a convolution to the
    channels); the DCGAN (batch_norm) goes width -> channels, as Radford et al."""
    height, columns, channels = image_shape
    z = keras.Input((latent_dim,), name="latents")
    h = layers.Dense(height // 4 * columns // 4 * 2 * width, use_bias=not batch_norm)(z)
    h = _relu(layers.Reshape((height // 4, columns // 4, 2 * width))(h), batch_norm)
    kernel = 4 if batch_norm else 3  # the VAE mirrors its 3x3 encoder
    h = layers.Conv2DTranspose(width if batch_norm else 2 * width, kernel, strides=2,
                               padding="same", use_bias=not batch_norm)(h)
    h = _relu(h, batch_norm)
    if batch_norm:
        logits = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", name="logits")(h)
    else:
        h = layers.Conv2DTranspose(width, 3, strides=2, padding="same", activation="relu")(h)
        logits = layers.Conv2D(channels, 3, padding="same", name="logits")(h)
    images = layers.Activation("sigmoid", name="images")(logits)
    return keras.Model(z, images, name=name)


def _downsampling_stack(image_shape, width, outputs, name, leaky=False):
    """Images -> two stride-2 convolutions (width, 2 width) -> flatten -> dense heads."""
    x = keras.Input(image_shape, name="images")
    h = layers.Rescaling(2.0, offset=-1.0)(x)  # [0, 1] -> [-1, 1]: centred inputs
    for filters in (width, 2 * width):
        h = layers.Conv2D(filters, 4 if leaky else 3, strides=2, padding="same")(h)
        h = layers.LeakyReLU(0.2)(h) if leaky else layers.ReLU()(h)
    h = layers.Flatten()(h)
    heads = [layers.Dense(units, name=head)(h) for head, units in outputs]
    return keras.Model(x, heads if len(heads) > 1 else heads[0], name=name)


@keras.saving.register_keras_serializable(package="manidefense")
class VAE(keras.Model):
    """A convolutional variational autoencoder trained on the negative ELBO.

    The encoder maps images to a diagonal Gaussian `q(z|x) = N(z_mean, exp(z_log_var))`, the
    decoder maps latents to pixel means in [0, 1]; training minimises, averaged over the batch,
    `reconstruction(x, decoder(z)) + beta * KL(q(z|x) || N(0, I))` with `z` drawn by the
    reparameterisation trick (Kingma & Welling, eq. 10; beta-VAE when `beta != 1`).
    `fit(x)` and `fit(dataset)` accept batches of images or `(images, labels)`; labels are
    ignored. The history shows `loss` (the negative ELBO), `reconstruction_loss` and `kl_loss`.

    Args:
        latent_dim: size of the latent vector.
        image_shape: `(height, width, channels)`, height and width divisible by 4.
        width: channels of the first encoder convolution (the second has `2 * width`); the
            decoder mirrors it.
        beta: weight of the KL term.
        reconstruction: `"bce"` (Bernoulli log-likelihood: the sum over pixels of the binary
            cross-entropy, for images in [0, 1]), `"l1"` or `"l2"` (sum over pixels of the
            absolute or squared error).
        seed: seed of the reparameterisation noise drawn during training.
        **kwargs: `keras.Model` arguments such as `name`.

    Attributes:
        encoder: functional model, images -> `(z_mean, z_log_var)`.
        decoder: functional model, latents `(batch, latent_dim)` -> images in [0, 1].

    Example:
    >>> vae = manidefense.zoo.VAE(latent_dim=16)
    >>> vae.compile(keras.optimizers.Adam(1e-3))
    >>> vae.fit(x_train, epochs=10, batch_size=128)
    >>> x_rec = vae.decode(vae.encode(x_test[:8]))
    >>> fakes = vae.sample(16, seed=0)

    Reference:
        Kingma, Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    """

    def __init__(self, latent_dim: int = 16, image_shape: tuple[int, int, int] = (28, 28, 1),
                 width: int = 32, beta: float = 1.0, reconstruction: str = "bce",
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.image_shape = _check_image_shape(image_shape)
        self.width = check_positive_int("width", width)
        self.beta = check_non_negative("beta", beta)
        self.reconstruction = check_choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        self.seed = _check_seed(seed)
        # === Sub-models (built here so that a `.keras` file reloads into them) ===
        self.encoder = _downsampling_stack(self.image_shape, self.width, [
            ("z_mean", self.latent_dim), ("z_log_var", self.latent_dim)], name="encoder")
        self.decoder = _upsampling_stack(self.latent_dim, self.image_shape, self.width,
                                         batch_norm=False, name="decoder")
        # The same layers up to the pre-sigmoid logits: a stable cross-entropy (not tracked).
        object.__setattr__(self, "_decoder_logits", keras.Model(
            self.decoder.inputs, self.decoder.get_layer("logits").output))
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        # === Metrics ===
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    def encode(self, x: ArrayLike | tf.Tensor) -> tf.Tensor:
        """The posterior means `z_mean` of images `x` (graph-safe; use `encoder.predict(x)[0]`
        for large numpy arrays).

        Args:
            x: images `(batch, *image_shape)` in [0, 1].

        Returns:
            `(batch, latent_dim)` latents.

        Example:
        >>> vae = manidefense.zoo.VAE(latent_dim=16)
        >>> tuple(vae.encode(x).shape)
        (8, 16)
        """
        return self.encoder(x, training=False)[0]

    def decode(self, z: ArrayLike | tf.Tensor) -> tf.Tensor:
        """Images in [0, 1] decoded from latents `z` of shape `(batch, latent_dim)`.

        Args:
            z: latents `(batch, latent_dim)`.

        Returns:
            Images `(batch, *image_shape)`.

        Example:
        >>> vae = manidefense.zoo.VAE(latent_dim=16)
        >>> tuple(vae.decode(np.zeros((2, 16), "float32")).shape)
        (2, 28, 28, 1)
        """
        return self.decoder(z, training=False)

    def sample(self, num: int, seed: int | None = None) -> tf.Tensor:
        """`num` images decoded from `z ~ N(0, I)`; an integer `seed` makes them reproducible.

        Args:
            num: number of images.
            seed: int or None.

        Returns:
            Images `(num, *image_shape)` in [0, 1].

        Example:
        >>> vae = manidefense.zoo.VAE(latent_dim=16)
        >>> tuple(vae.sample(4, seed=0).shape)
        (4, 28, 28, 1)
        """
        num = check_positive_int("num", num)
        z = keras.random.normal((num, self.latent_dim), seed=_check_seed(seed))
        return self.decode(z)

    def call(self, inputs, training=False):
        z_mean, z_log_var = self.encoder(inputs, training=training)
        z = self._reparameterize(z_mean, z_log_var) if training else z_mean
        return self.decoder(z, training=training)

    def _reparameterize(self, z_mean, z_log_var):
        noise = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * noise

    def _elbo_terms(self, x, training):
        """(negative ELBO, reconstruction, KL), each averaged over the batch."""
        z_mean, z_log_var = self.encoder(x, training=training)
        logits = self._decoder_logits(self._reparameterize(z_mean, z_log_var), training=training)
        if self.reconstruction == "bce":
            per_pixel = ops.binary_crossentropy(x, logits, from_logits=True)
        else:
            error = x - ops.sigmoid(logits)
            per_pixel = ops.abs(error) if self.reconstruction == "l1" else ops.square(error)
        reconstruction = ops.mean(ops.sum(ops.reshape(per_pixel, (ops.shape(x)[0], -1)), -1))
        kl = -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), -1)
        kl = ops.mean(kl)
        return reconstruction + self.beta * kl, reconstruction, kl

    def train_step(self, data):
        x = _images(data)
        with tf.GradientTape() as tape:
            losses = self._elbo_terms(x, training=True)
        _minimize(self.optimizer, losses[0], tape, self.trainable_variables)
        return _track(self.metrics, losses)

    def test_step(self, data):
        return _track(self.metrics, self._elbo_terms(_images(data), training=False))

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim,
                "image_shape": self.image_shape, "width": self.width, "beta": self.beta,
                "reconstruction": self.reconstruction, "seed": self.seed}


@keras.saving.register_keras_serializable(package="manidefense")
class DCGAN(keras.Model):
    """A deep convolutional GAN with the non-saturating loss, in one `train_step`.

    Each step updates the discriminator on `softplus(-D(x)) + softplus(D(G(z)))` (the
    cross-entropy of real vs generated), then the generator on `softplus(-D(G(z')))` with fresh
    latents (Goodfellow et al.'s non-saturating objective), each with its own optimizer. The
    history shows `discriminator_loss` and `generator_loss`. `fit` accepts images or
    `(images, labels)`; labels are ignored.

    Args:
        latent_dim: size of the latent vector, drawn from N(0, I).
        image_shape: `(height, width, channels)`, height and width divisible by 4.
        width: channels of the generator's first transposed convolution and of the
            discriminator's first convolution (their dense/second stages have `2 * width`).
        seed: seed of the latents drawn during training.
        **kwargs: `keras.Model` arguments such as `name`.

    Attributes:
        generator: functional model, latents -> images in [0, 1] (dense -> (H/4, W/4,
            2 width) with BatchNorm + ReLU, two stride-2 transposed convolutions, sigmoid).
        discriminator: functional model, images -> one logit (two stride-2 convolutions with
            LeakyReLU(0.2), no BatchNorm).
        decoder: the generator, under the name the projection and latent attacks use.

    Example:
    >>> gan = manidefense.zoo.DCGAN(latent_dim=64)
    >>> gan.compile()  # Adam(2e-4, beta_1=0.5) for both players
    >>> gan.fit(x_train, epochs=5, batch_size=128)
    >>> fakes = gan.sample(16, seed=0)

    Reference:
        Radford, Metz, Chintala, "Unsupervised Representation Learning with Deep
        Convolutional Generative Adversarial Networks", ICLR 2016.
    """

    def __init__(self, latent_dim: int = 64, image_shape: tuple[int, int, int] = (28, 28, 1),
                 width: int = 64, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.image_shape = _check_image_shape(image_shape)
        self.width = check_positive_int("width", width)
        self.seed = _check_seed(seed)
        # === Sub-models ===
        self.generator = _upsampling_stack(self.latent_dim, self.image_shape, self.width,
                                           batch_norm=True, name="generator")
        self.discriminator = _downsampling_stack(self.image_shape, self.width, [("logit", 1)],
                                                 name="discriminator", leaky=True)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        # === Metrics ===
        self.generator_tracker = keras.metrics.Mean(name="generator_loss")
        self.discriminator_tracker = keras.metrics.Mean(name="discriminator_loss")
        self.built = True

    @property
    def decoder(self) -> keras.Model:
        """The generator, under the name `manifold.projection` and `LatentPGD` use."""
        return self.generator

    @property
    def metrics(self):
        return [self.generator_tracker, self.discriminator_tracker]

    def compile(self, generator_optimizer: keras.optimizers.Optimizer | str | None = None,
                discriminator_optimizer: keras.optimizers.Optimizer | str | None = None,
                **kwargs) -> None:
        """Sets one optimizer per player (default `Adam(2e-4, beta_1=0.5)`, Radford et al.);
        `kwargs` go to `keras.Model.compile` (e.g. `run_eagerly`), no loss is needed."""
        def resolve(optimizer):
            if optimizer is None:
                return keras.optimizers.Adam(2e-4, beta_1=0.5)
            return keras.optimizers.get(optimizer)

        self.generator_optimizer = resolve(generator_optimizer)
        self.discriminator_optimizer = resolve(discriminator_optimizer)
        super().compile(optimizer=self.generator_optimizer, **kwargs)

    def get_compile_config(self):
        if not self.compiled:
            return {}
        return {"generator_optimizer": keras.optimizers.serialize(self.generator_optimizer),
                "discriminator_optimizer":
                    keras.optimizers.serialize(self.discriminator_optimizer)}

    def compile_from_config(self, config):
        self.compile(**{key: keras.optimizers.deserialize(value)
                        for key, value in config.items()})
        # Optimizer slots exist before the `.keras` file's optimizer state is loaded into them.
        self.generator_optimizer.build(self.generator.trainable_variables)
        self.discriminator_optimizer.build(self.discriminator.trainable_variables)

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def sample(self, num: int, seed: int | None = None) -> tf.Tensor:
        """`num` images generated from `z ~ N(0, I)`; an integer `seed` makes them reproducible.

        Args:
            num: number of images.
            seed: int or None.

        Returns:
            Images `(num, *image_shape)` in [0, 1].

        Example:
        >>> gan = manidefense.zoo.DCGAN(latent_dim=64)
        >>> tuple(gan.sample(4, seed=0).shape)
        (4, 28, 28, 1)
        """
        num = check_positive_int("num", num)
        z = keras.random.normal((num, self.latent_dim), seed=_check_seed(seed))
        return self.generator(z, training=False)

    def _latents(self, x):
        return keras.random.normal((ops.shape(x)[0], self.latent_dim), seed=self.seed_generator)

    def _discriminator_loss(self, x, training):
        fake = self.generator(self._latents(x), training=training)
        real_logits = self.discriminator(x, training=training)
        fake_logits = self.discriminator(fake, training=training)
        return ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))

    def _generator_loss(self, x, training):
        fake = self.generator(self._latents(x), training=training)
        return ops.mean(ops.softplus(-self.discriminator(fake, training=training)))

    def train_step(self, data):
        x = _images(data)
        with tf.GradientTape() as tape:
            d_loss = self._discriminator_loss(x, training=True)
        _minimize(self.discriminator_optimizer, d_loss, tape,
                  self.discriminator.trainable_variables)
        with tf.GradientTape() as tape:
            g_loss = self._generator_loss(x, training=True)
        _minimize(self.generator_optimizer, g_loss, tape, self.generator.trainable_variables)
        return _track(self.metrics, (g_loss, d_loss))

    def test_step(self, data):
        x = _images(data)
        return _track(self.metrics, (self._generator_loss(x, training=False),
                                     self._discriminator_loss(x, training=False)))

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim,
                "image_shape": self.image_shape, "width": self.width, "seed": self.seed}
