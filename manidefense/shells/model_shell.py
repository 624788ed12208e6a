"""ModelShell: a base model wrapped with a search factor, G[F](x) = F(H(F, x)) (Defs. 3–5)."""

import os
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense import serving
from manidefense._wrapping import build_from_base, build_from_saved
from manidefense.attacks.gradients import OUTPUTS, logits_function
from manidefense.shells.search import SearchFactor
from manidefense.validation import check_choice, check_images, check_positive_int


@keras.saving.register_keras_serializable(package="manidefense")
class ModelShell(keras.Model):
    """A factor model shell: the search factor H moves x to a point the base model F is
    confident about, and F classifies that point (Wu, Jang, Chen & Jha, Definition 5).

    The output is F's class probabilities at H(F, x) (a logits base gets a softmax). The
    search is an inner optimisation whose gradient says nothing useful to an attacker, so the
    shell declares `non_differentiable = True` with the base model as `surrogate`
    (straight-through H): `evaluate_robustness` attacks it with BPDA by itself.

    Args:
        base_model: a Keras classifier returning logits or probabilities. The paper's
            postulate needs a good, robust base (confident on the data manifold only).
        search: a search factor (`MCN`, `NCN`, `SamplingVote`).
        output: `"auto"`, `"logits"` or `"probabilities"`: what the base model returns.

    Example:
    >>> shell = ModelShell(robust_cnn, MCN(delta=0.1))
    >>> shell.predict(x_test).argmax(-1)
    >>> z, classes, confidence, reached = shell.search(x_test[:8])
    """

    non_differentiable = True

    def __init__(self, base_model: keras.Model, search: SearchFactor, output: str = "auto",
                 **kwargs):
        super().__init__(**kwargs)
        if not callable(base_model):
            raise ValueError("Argument `base_model` must be a Keras classifier. "
                             f"Received: base_model={base_model!r}")
        if not isinstance(search, SearchFactor):
            raise ValueError("Argument `search` must be a search factor such as MCN(delta=0.1). "
                             f"Received: search={search!r}")
        self.base_model = base_model
        self.search_factor = search
        self.base_output = check_choice("output", output, OUTPUTS)
        # A sampling search draws from its own SeedGenerator; an attribute of the shell is
        # tracked, so its state is saved with the model and exported with it.
        self.search_seed_generator = getattr(search, "_seed_generator", None)
        object.__setattr__(self, "_logits_fn", logits_function(base_model, output))
        object.__setattr__(self, "_search_graphs", {})
        build_from_base(self, base_model)  # last: building locks the tracked state

    @property
    def randomized(self) -> bool:
        """A sampling shell draws fresh points on every call; MCN and NCN are deterministic."""
        return bool(getattr(self.search_factor, "randomized", False))

    @property
    def surrogate(self) -> Callable:
        """BPDA's backward pass: the base model's probabilities (straight-through search)."""
        return self.base_probabilities

    def base_probabilities(self, inputs: ArrayLike | tf.Tensor) -> tf.Tensor:
        """F(x) as probabilities, without the search.

        Example:
        >>> shell.base_probabilities(x_test[:4]).shape  # what F says before the search
        TensorShape([4, 10])
        """
        return ops.softmax(self._logits_fn(ops.cast(inputs, "float32")), axis=-1)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if hasattr(self.search_factor, "vote"):  # a shell that is not a factor shell
            return self.search_factor.vote(self._logits_fn, x)
        z = ops.stop_gradient(self.search_factor.find(self._logits_fn, x)[0])
        return ops.softmax(self._logits_fn(z), axis=-1)

    def search(self, x: np.ndarray, batch_size: int = 128) -> tuple[np.ndarray, ...]:
        """Runs the search factor: the embedded points and what the base model says there.

        Args:
            x: inputs within the search factor's bounds, batch first.
            batch_size: examples per compiled call (each is tiled over the classes).

        Returns:
            `(z, classes, confidence, reached)` as numpy arrays: the points H(F, x), F's class
            and confidence at them, and whether the objective was met per example (NCN: some
            class reached p; always True for MCN).

        Example:
        >>> z, classes, confidence, reached = shell.search(x_test[:8])
        >>> (classes == shell.predict(x_test[:8]).argmax(-1)).all()
        True
        """
        x = check_images(x, self.search_factor.bounds).astype(np.float32, copy=False)
        batch_size = check_positive_int("batch_size", batch_size)
        key = tuple(x.shape[1:])
        if key not in self._search_graphs:
            self._search_graphs[key] = tf.function(
                lambda z: self.search_factor.find(self._logits_fn, z),
                input_signature=[tf.TensorSpec((None, *key), tf.float32)])
        parts = [self._search_graphs[key](tf.constant(x[i:i + batch_size]))
                 for i in range(0, len(x), batch_size)]
        return tuple(np.concatenate([ops.convert_to_numpy(p[k]) for p in parts])
                     for k in range(4))

    def build(self, input_shape):
        """Nothing to create: the base model holds every weight (records the input shape)."""

    def build_from_config(self, config):
        build_from_saved(self, config)

    def export(self, filepath: str | os.PathLike, format: str = "tf_saved_model",
               verbose: bool | None = None, input_signature: list | None = None,
               **kwargs) -> list[str] | None:
        """Exports the shell as a TensorFlow SavedModel (`manidefense.serving.export`).

        The `serve` endpoint returns the shell's class probabilities (the search runs inside
        the graph); a sampling shell adds `serve_seeded(inputs, seed)`. Other formats go to
        `keras.Model.export`.

        Args:
            filepath: directory to write.
            format: `"tf_saved_model"` (anything else: Keras' exporter).
            verbose: print Keras' summary of the endpoints.
            input_signature: as for `serving.export`; default: the base model's input.

        Returns:
            The endpoint names written.

        Example:
        >>> ModelShell(cnn, MCN(delta=0.1)).export("/srv/models/shell/1")
        ['serve']
        >>> tf.saved_model.load("/srv/models/shell/1").serve(tf.constant(x_test[:8]))
        """
        if format != "tf_saved_model" or kwargs:
            return super().export(filepath, format=format, verbose=verbose,
                                  input_signature=input_signature, **kwargs)
        return serving.export(self, filepath, input_signature=input_signature,
                              verbose=bool(verbose))

    def compute_output_shape(self, input_shape):
        return self.base_model.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(),
                "base_model": keras.saving.serialize_keras_object(self.base_model),
                "search": keras.saving.serialize_keras_object(self.search_factor),
                "output": self.base_output}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["base_model"] = keras.saving.deserialize_keras_object(config["base_model"])
        config["search"] = keras.saving.deserialize_keras_object(config["search"])
        return cls(**config)
