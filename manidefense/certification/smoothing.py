"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): PREDICT, CERTIFY and noisy training.

The smoothed classifier is g(x) = argmax_c P(f(x + ε) = c) with ε ~ N(0, σ² I). If the top
class has probability at least p_A > 1/2, g is constant within the L2 ball of radius
σ Φ⁻¹(p_A) (Theorem 1 with p_B = 1 - p_A). A Monte-Carlo lower bound on p_A that holds with
probability 1 - α gives a certificate that holds with the same probability.

Reference:
    Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019 (Algorithms PREDICT and CERTIFY).
"""

import numbers
import os
import random as python_random
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense import serving
from manidefense._wrapping import build_from_base, build_from_saved
from manidefense.attacks.gradients import as_logits
from manidefense.stats import lower_confidence_bound
from manidefense.validation import (
    check_bounds,
    check_fraction,
    check_images,
    check_positive,
    check_positive_int,
)

#: The class PREDICT and CERTIFY return when they abstain.
ABSTAIN = -1
"""The class `predict` and `certify` return when they abstain."""


@keras.saving.register_keras_serializable(package="manidefense")
class SmoothedClassifier(keras.Model):
    """A base classifier smoothed by Gaussian noise, with Cohen et al.'s PREDICT and CERTIFY.

    Noise is added to the *input* of `base_model`, i.e. before any defense layer it contains
    (an `rbf_defense` reconstructs the noisy image), and is not clipped to `bounds` (the
    theorem needs the exact Gaussian). Sampling runs in one compiled graph per batch of
    examples: each example is repeated, perturbed and classified `batch_size` copies at a time
    in a `tf.while_loop`, and the votes are counted per class.

    Three ways to use it:
    - `predict(x, num_samples, alpha)` and `certify(x, n0, n, alpha)`: Cohen's algorithms,
      returning classes (`ABSTAIN = -1` when they abstain) and certified L2 radii. Unlike
      `keras.Model.predict`, `predict` returns labels, not model outputs.
    - `smoothed(x)`: the vote frequencies of `num_samples` fresh draws, a `(batch,
      num_classes)` probability tensor (for serving, `evaluate_robustness` and export). The
      model declares `randomized`, `non_differentiable` and a `surrogate` (the mean softmax
      over draws), so adaptive attacks get BPDA+EoT automatically.
    - `compile(...)` then `fit(x, y)`: Gaussian data augmentation, the training Cohen et al.
      prescribe: every step trains `base_model` on `x + N(0, σ²)` with fresh noise; in training
      mode `smoothed(x, training=True)` is the base model's output on the noisy batch, and
      `evaluate` reports the base model's loss and metrics on one noisy copy of each input.

    Args:
        base_model: a Keras classifier returning `(batch, num_classes)` logits or
            probabilities (only its top class is used for votes). For `fit`, compile with a
            loss that matches its outputs (`from_logits=False` for a model ending in
            probabilities, such as `rbf_defense`).
        num_classes: number of classes of `base_model`.
        sigma: noise standard deviation σ, in the units of `bounds`.
        num_samples: draws per example in `call` (not used by `predict`/`certify`).
        batch_size: noisy images per call of `base_model` when sampling.
        bounds: valid input range, used to check inputs.
        seed: int or None. With an int, every `predict`/`certify` call restarts the noise
            from it, so equal seeds (and equal `batch_size`) give equal results.

    Example:
    >>> smoothed = SmoothedClassifier(cnn, num_classes=10, sigma=0.25, seed=0)
    >>> classes, radii = smoothed.certify(x_test[:100], 100, 10_000, alpha=0.001)
    """

    randomized = True
    non_differentiable = True

    def __init__(self, base_model: keras.Model, num_classes: int, sigma: float,
                 num_samples: int = 100, batch_size: int = 1000,
                 bounds: tuple[float, float] = (0.0, 1.0), seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not callable(base_model):
            raise ValueError("Argument `base_model` must be a Keras classifier. "
                             f"Received: base_model={base_model!r}")
        self.base_model = base_model
        self.num_classes = check_positive_int("num_classes", num_classes)
        if self.num_classes < 2:
            raise ValueError("Argument `num_classes` must be >= 2. "
                             f"Received: num_classes={num_classes!r}")
        self.sigma = check_positive("sigma", sigma)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.bounds = check_bounds(bounds)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"Argument `seed` must be an int or None. Received: seed={seed!r}")
        self.seed = None if seed is None else int(seed)
        # Two streams: fresh noise for call()/fit(), and a stream that predict/certify restart.
        self._noise_generator = keras.random.SeedGenerator(seed)
        self._count_generator = keras.random.SeedGenerator(seed)
        object.__setattr__(self, "_counters", {})  # compiled count graphs, not tracked
        build_from_base(self, base_model)  # last: building locks the tracked state

    @property
    def draws_per_call(self) -> int:
        """Read by `attacks.adaptive_model`: one call already averages `num_samples` draws."""
        return self.num_samples

    @property
    def surrogate(self) -> Callable:
        """The differentiable stand-in BPDA uses: mean softmax of the base over noise draws."""
        return self.soft_votes

    # === Keras model ===

    def call(self, inputs, training=False):
        if training:
            noise = self._noise(ops.shape(inputs), inputs.dtype, self._noise_generator)
            return self.base_model(inputs + noise, training=True)
        return self._votes(inputs, hard=True)

    def soft_votes(self, inputs: ArrayLike | tf.Tensor) -> tf.Tensor:
        """Mean of the base model's softmax over `num_samples` noisy copies of each input.

        Differentiable (it is the smoothed classifier's BPDA `surrogate`).

        Example:
        >>> smoothed.soft_votes(x_test[:4]).shape
        TensorShape([4, 10])
        """
        return self._votes(inputs, hard=False)

    def _votes(self, inputs, hard):
        m = self.num_samples
        tiled = ops.repeat(inputs, m, axis=0)
        tiled = tiled + self._noise(ops.shape(tiled), inputs.dtype, self._noise_generator)
        outputs = ops.cast(self.base_model(tiled, training=False), "float32")
        if hard:
            probs = ops.one_hot(ops.argmax(outputs, axis=-1), self.num_classes)
        else:
            probs = ops.softmax(as_logits(outputs), axis=-1)  # logits or probabilities
        return ops.mean(ops.reshape(probs, (-1, m, self.num_classes)), axis=1)

    def _noise(self, shape, dtype, generator):
        return keras.random.normal(shape, stddev=self.sigma, dtype=dtype, seed=generator)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        noisy = x + self._noise(ops.shape(x), x.dtype, self._noise_generator)
        y_pred = self.base_model(noisy, training=False)
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                 training=False)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=ops.shape(x)[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # === Cohen et al.'s algorithms ===

    def predict(self, x: np.ndarray, num_samples: int = 100, alpha: float = 0.001,
                batch_size: int | None = None, verbose: bool = False) -> np.ndarray:
        """PREDICT: the smoothed class, or `ABSTAIN` when the top two classes cannot be told
        apart (two-sided binomial test of their counts at level `alpha`).

        The probability of returning a class other than g(x) is at most `alpha`.

        Args:
            x: inputs within `bounds`, batch first.
            num_samples: noise draws per input.
            alpha: error probability of the test.
            batch_size: noisy images per base-model call (default: the constructor's).
            verbose: show a progress bar.

        Returns:
            An int64 array of classes, `ABSTAIN` (-1) where the test fails.

        Example:
        >>> smoothed = SmoothedClassifier(cnn, num_classes=10, sigma=0.25, seed=0)
        >>> smoothed.predict(x_test[:100], num_samples=1000, alpha=0.001)
        """
        num_samples = check_positive_int("num_samples", num_samples)
        alpha = check_fraction("alpha", alpha)
        x = self._check_inputs(x)
        self._restart_noise()
        counts = self.sample_counts(x, num_samples, batch_size, verbose)
        return predict_from_counts(counts, alpha).numpy()

    def certify(self, x: np.ndarray, num_samples_selection: int = 100,
                num_samples_estimation: int = 10_000, alpha: float = 0.001,
                batch_size: int | None = None,
                verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """CERTIFY: the smoothed class and a certified L2 radius around each input.

        The top class c_A is chosen on `num_samples_selection` draws, then its probability is
        bounded from below with fresh `num_samples_estimation` draws (one-sided
        Clopper–Pearson at level `alpha`): with probability at least 1 - `alpha`, g(x') = c_A
        for every ‖x' - x‖₂ < σ Φ⁻¹(p_A lower bound). When the bound is ≤ 1/2 it abstains.

        Args:
            x: inputs within `bounds`, batch first.
            num_samples_selection: draws that choose the class (Cohen et al.'s n₀, ~100).
            num_samples_estimation: draws that bound its probability (n, e.g. 10⁴–10⁵).
            alpha: failure probability of the certificate.
            batch_size: noisy images per base-model call (default: the constructor's).
            verbose: show a progress bar.

        Returns:
            `(classes, radii)`: int64 classes (`ABSTAIN` where it abstains) and float64 radii
            (0 where it abstains).

        Example:
        >>> classes, radii = smoothed.certify(x_test[:100], 100, 100_000, alpha=0.001)
        >>> certified_accuracy(radii, classes, y_test[:100], [0.0, 0.25, 0.5])
        """
        n0 = check_positive_int("num_samples_selection", num_samples_selection)
        n = check_positive_int("num_samples_estimation", num_samples_estimation)
        alpha = check_fraction("alpha", alpha)
        if n0 > n:
            raise ValueError(
                "Argument `num_samples_selection` only picks the class; the certificate comes "
                "from `num_samples_estimation`, which must be the larger one (Cohen et al.: "
                f"100 and 100,000). Received: num_samples_selection={n0}, "
                f"num_samples_estimation={n}"
            )
        if max_certifiable_radius(1.0, n, alpha) <= 0:
            raise ValueError(
                f"Argument `num_samples_estimation`={n} is too small to certify anything at "
                f"alpha={alpha}: even {n} votes out of {n} give a lower bound "
                f"{alpha ** (1 / n):.3f} <= 0.5. Use at least "
                f"{int(np.floor(np.log(alpha) / np.log(0.5))) + 1} samples."
            )
        x = self._check_inputs(x)
        self._restart_noise()
        selected = np.argmax(self.sample_counts(x, n0, batch_size, verbose), axis=1)
        counts = self.sample_counts(x, n, batch_size, verbose)
        n_a = counts[np.arange(len(x)), selected]
        p_lower = np.asarray(lower_confidence_bound(n_a, n, alpha), dtype=np.float64)
        certified = p_lower > 0.5
        # Φ⁻¹ in float64 (tf.math.ndtri, what tfp's Normal.quantile evaluates).
        radii = self.sigma * tf.math.ndtri(np.where(certified, p_lower, 0.5)).numpy()
        classes = np.where(certified, selected, ABSTAIN).astype(np.int64)
        return classes, np.where(certified, radii, 0.0)

    def sample_counts(self, x: np.ndarray, num_samples: int, batch_size: int | None = None,
                      verbose: bool = False) -> np.ndarray:
        """Votes of the base model on `num_samples` noisy copies of each input.

        Args:
            x: inputs (float array, batch first; not re-validated here).
            num_samples: noise draws per input.
            batch_size: noisy images per base-model call (default: the constructor's).
            verbose: show a progress bar over the inputs.

        Returns:
            An int64 array `(len(x), num_classes)` of class counts, each row summing to
            `num_samples`.

        Example:
        >>> smoothed.sample_counts(x_test[:2], num_samples=100).sum(axis=1)
        array([100, 100])
        """
        num_samples = check_positive_int("num_samples", num_samples)
        batch_size = check_positive_int("batch_size", batch_size or self.batch_size)
        x = np.asarray(x, dtype=np.float32)
        # Draws per example and base-model call, split into equal rounds so that the last
        # round wastes at most rounds - 1 draws (n = 1,500 in rounds of 1,000 wasted 33%).
        rounds = -(-num_samples // min(num_samples, batch_size))
        chunk = -(-num_samples // rounds)
        group = max(1, batch_size // chunk)  # examples per compiled call
        count = self._counter(x.shape[1:])
        out = np.empty((len(x), self.num_classes), dtype=np.int64)
        bar = keras.utils.Progbar(len(x)) if verbose else None
        for start in range(0, len(x), group):
            xb = tf.constant(x[start:start + group])
            out[start:start + group] = count(xb, tf.constant(num_samples, tf.int32),
                                             tf.constant(chunk, tf.int32)).numpy()
            if bar is not None:
                bar.add(len(xb))
        return out

    def _counter(self, feature_shape):
        key = tuple(feature_shape)
        if key not in self._counters:
            classes = self.num_classes

            def count(x, num_samples, chunk):
                batch = tf.shape(x)[0]
                tiled = tf.repeat(x, chunk, axis=0)  # example-major: rows i*chunk ... are x[i]

                def body(i, counts):
                    noise = self._noise(tf.shape(tiled), tiled.dtype, self._count_generator)
                    outputs = self.base_model(tiled + noise, training=False)
                    votes = tf.reshape(tf.argmax(outputs, axis=-1), (batch, chunk))
                    # The last round may draw more than needed: only the first ones count.
                    drawn = i * chunk + tf.range(chunk)
                    valid = tf.cast(drawn < num_samples, tf.int64)[None, :, None]
                    hits = tf.one_hot(votes, classes, dtype=tf.int64) * valid
                    return i + 1, counts + tf.reduce_sum(hits, axis=1)

                rounds = (num_samples + chunk - 1) // chunk
                counts = tf.zeros((batch, classes), tf.int64)
                return tf.while_loop(lambda i, _: i < rounds, body, (0, counts))[1]

            self._counters[key] = tf.function(count, input_signature=[
                tf.TensorSpec((None, *key), tf.float32), tf.TensorSpec((), tf.int32),
                tf.TensorSpec((), tf.int32)])
        return self._counters[key]

    def _check_inputs(self, x):
        x = check_images(x, self.bounds)
        outputs = self.base_model(ops.convert_to_tensor(x[:1], dtype="float32"), training=False)
        if tuple(outputs.shape[1:]) != (self.num_classes,):
            raise ValueError(
                f"Argument `num_classes`={self.num_classes} must match the base model's "
                f"output: (batch, num_classes). Received: output shape {tuple(outputs.shape)}"
            )
        return x.astype(np.float32, copy=False)

    def _restart_noise(self):
        # seed=None follows Python's global RNG (so keras.utils.set_random_seed applies).
        seed = self.seed if self.seed is not None else python_random.randint(1, 2**31 - 1)
        state = self._count_generator.state
        state.assign(ops.convert_to_tensor([seed, 0], dtype=state.dtype))

    def build(self, input_shape):
        """Nothing to create: the base model holds every weight (records the input shape)."""

    def build_from_config(self, config):
        build_from_saved(self, config)

    # === Serving ===

    def export(self, filepath: str | os.PathLike, format: str = "tf_saved_model",
               verbose: bool | None = None, input_signature: list | None = None,
               num_samples: int = 100, alpha: float = 0.001, **kwargs) -> list[str] | None:
        """Exports the smoothed classifier as a TensorFlow SavedModel.

        Endpoints (`manidefense.serving.export`): `serve(x)`, the vote frequencies of
        `self.num_samples` fresh draws (what `call` returns); `predict(x)`, Cohen's PREDICT
        with `num_samples` draws at level `alpha` (int64 classes, `ABSTAIN` = -1); and
        `serve_seeded(x, seed)` / `predict_seeded(x, seed)`, the same with the noise set from
        an int64 seed for that request. Other formats go to `keras.Model.export`.

        Args:
            filepath: directory to write.
            format: `"tf_saved_model"` (anything else: Keras' exporter, `serve` only).
            verbose: print Keras' summary of the endpoints.
            input_signature: as for `serving.export`.
            num_samples: noise draws per example of the `predict` endpoint.
            alpha: level of `predict`'s binomial test.

        Returns:
            The endpoint names written.

        Example:
        >>> smoothed.export("/srv/models/smoothed/1", num_samples=1000, alpha=0.001)
        >>> served = tf.saved_model.load("/srv/models/smoothed/1")
        >>> classes = served.predict(tf.constant(x_test[:8]))
        """
        if format != "tf_saved_model" or kwargs:
            return super().export(filepath, format=format, verbose=verbose,
                                  input_signature=input_signature, **kwargs)
        return serving.export(self, filepath, input_signature=input_signature,
                              verbose=bool(verbose),
                              options={"num_samples": num_samples, "alpha": alpha})

    def export_endpoints(self, specs: list[tf.TensorSpec], num_samples: int = 100,
                         alpha: float = 0.001) -> dict:
        """The extra endpoint `serving.export` writes: `predict`, Cohen's PREDICT in a graph.

        Draws `min(num_samples, batch_size)`-sized rounds per example, like `sample_counts`.

        Args:
            specs: the input signature (one `tf.TensorSpec`).
            num_samples: noise draws per example.
            alpha: level of the binomial test.

        Returns:
            `{"predict": (function, input_signature)}`.

        Example:
        >>> predict, _ = smoothed.export_endpoints([tf.TensorSpec((None, 28, 28, 1))])["predict"]
        >>> predict(tf.constant(x_test[:4]))  # int64 classes, -1 where it abstains
        """
        num_samples = check_positive_int("num_samples", num_samples)
        alpha = check_fraction("alpha", alpha)
        rounds = -(-num_samples // min(num_samples, self.batch_size))
        chunk = -(-num_samples // rounds)
        count = self._counter(tuple(specs[0].shape[1:]))

        def predict(x):
            counts = count(x, tf.constant(num_samples, tf.int32), tf.constant(chunk, tf.int32))
            return predict_from_counts(counts, alpha)

        return {"predict": (predict, specs[:1])}

    # === Configuration ===

    def get_config(self):
        return {**super().get_config(),
                "base_model": keras.saving.serialize_keras_object(self.base_model),
                "num_classes": self.num_classes, "sigma": self.sigma,
                "num_samples": self.num_samples, "batch_size": self.batch_size,
                "bounds": self.bounds, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["base_model"] = keras.saving.deserialize_keras_object(config["base_model"])
        return cls(**config)


def predict_from_counts(counts, alpha: float) -> tf.Tensor:
    """PREDICT's decision from vote counts: the top class, or `ABSTAIN` where the two-sided
    binomial test of the top two counts has a p-value above `alpha` (`stats.binomial_test`,
    in a graph). Ties go to the lower class index.

    Args:
        counts: int `(batch, num_classes)` vote counts.
        alpha: the test's level.

    Returns:
        An int64 tensor of classes.

    Example:
    >>> predict_from_counts(np.array([[90, 10, 0], [52, 48, 0]]), alpha=0.001).numpy()
    array([ 0, -1])
    """
    counts = tf.convert_to_tensor(counts)
    top = tf.math.top_k(tf.cast(counts, tf.float64), k=2)  # equal values: lower index first
    n_a, n_b = top.values[:, 0], top.values[:, 1]
    # n_a >= n_b, so P(X >= max(k, n - k)) = I_{1/2}(n_a, n_b + 1), X ~ Binomial(n_a + n_b, 1/2).
    tail = tf.math.betainc(n_a, n_b + 1.0, tf.fill(tf.shape(n_a), tf.constant(0.5, tf.float64)))
    p_value = tf.minimum(tf.constant(1.0, tf.float64), 2.0 * tail)
    classes = tf.cast(top.indices[:, 0], tf.int64)
    return tf.where(p_value > alpha, tf.constant(ABSTAIN, tf.int64), classes)


def max_certifiable_radius(sigma: float, num_samples: int, alpha: float) -> float:
    """The largest radius CERTIFY can return: σ Φ⁻¹(α^(1/n)), reached when all `num_samples`
    votes agree (≤ 0 when no certificate is possible at all).

    Example:
    >>> max_certifiable_radius(0.25, 100_000, 0.001)  # Cohen et al.'s ≈ 4σ
    0.9727...
    """
    sigma = check_positive("sigma", sigma)
    num_samples = check_positive_int("num_samples", num_samples)
    alpha = check_fraction("alpha", alpha)
    return float(sigma * tf.math.ndtri(np.float64(alpha) ** (1.0 / num_samples)).numpy())

