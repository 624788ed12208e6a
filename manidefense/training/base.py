"""What every adversarial trainer shares: a `keras.Model` wrapping the classifier it trains.

Only the classifier's weights train (a fixed generator must never reach the optimizer, or a
restored checkpoint would build a different optimizer state and Keras would silently skip
loading it); the attack seed state is tracked as a weight so `save_weights` and
`BackupAndRestore` carry it; `evaluate` and `predict` run the classifier on clean images.
"""

import os
import random as python_random

import keras
import tensorflow as tf
from keras import ops

from manidefense import serving
from manidefense.attacks.gradients import OUTPUTS, as_logits
from manidefense.validation import check_choice


class ClassifierTrainer(keras.Model):
    """Base of `DualManifoldTrainer` and `GenerativeAdversarialTrainer` (not used directly).

    Subclasses set `self._trackers` (name -> `keras.metrics.Mean`, with at least `loss`,
    `clean_loss` and `accuracy`), write `train_step`, and end their `__init__` with
    `_wrapping.build_from_base(self, classifier)`.
    """

    def __init__(self, classifier, output="auto", seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(classifier, keras.Model):
            raise ValueError(f"Argument `classifier` must be a keras.Model. Received: "
                             f"{type(classifier).__name__}")
        self.classifier = classifier
        self.classifier_output = check_choice("output", output, OUTPUTS)
        self.seed = python_random.randint(1, 2**31 - 1) if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="attack_seed")
        # Keras saves a seed generator's state with `model.save` but not in the weights that
        # `save_weights` and BackupAndRestore write; tracking it as a weight of the trainer puts
        # it there, so a resumed fit draws the same random numbers as an uninterrupted one.
        self._track_variable(self.seed_generator.state)

    @property
    def metrics(self):
        return list(self._trackers.values())

    # Only the classifier trains.
    @property
    def trainable_weights(self):
        return self.classifier.trainable_weights if self.trainable else []

    @property
    def trainable_variables(self):
        return self.trainable_weights

    @property
    def non_trainable_weights(self):
        return _excluding(self.weights, self.trainable_weights)

    @property
    def non_trainable_variables(self):
        return _excluding(self.variables, self.trainable_weights)

    def call(self, x, training=False):
        return self.classifier(x, training=training)

    def build(self, input_shape=None):
        self.built = True

    def export(self, filepath: str | os.PathLike, format: str = "tf_saved_model",
               verbose: bool | None = None, input_signature: list | None = None,
               **kwargs) -> list[str] | None:
        """Exports the trained classifier (what `call` returns) as a TensorFlow SavedModel.

        The generator, the attacks and their seed state only serve training, so they stay
        out of the SavedModel (a GAT trainer's export is 0.3 MB instead of 1.9 MB with the
        generator). Arguments as for `keras.Model.export`; the SavedModel's `serve` endpoint
        is `classifier(x)`.

        Example:
        >>> trainer.fit(dataset, epochs=5)
        >>> trainer.export("/srv/models/dmat/1")
        ['serve']
        """
        if format != "tf_saved_model" or kwargs:
            return self.classifier.export(filepath, format=format, verbose=verbose,
                                          input_signature=input_signature, **kwargs)
        return serving.export(self.classifier, filepath, input_signature=input_signature,
                              verbose=bool(verbose))

    def _logits(self, x, training):
        return as_logits(self.classifier(x, training=training), self.classifier_output)

    def _scaled(self, loss):
        """The loss to differentiate, computed inside the tape: gradients are summed over
        replicas under tf.distribute, so it is scaled to the global mean, then by the loss
        scale of a LossScaleOptimizer (mixed precision)."""
        loss = loss / tf.distribute.get_strategy().num_replicas_in_sync
        return self.optimizer.scale_loss(loss)

    def test_step(self, data):
        x, y = self._images(data)
        logits = self._logits(x, training=False)
        loss = ops.mean(cross_entropy(logits, y))
        self._trackers["loss"].update_state(loss)
        self._trackers["clean_loss"].update_state(loss)
        self._trackers["accuracy"].update_state(correct(logits, y))
        return {name: self._trackers[name].result() for name in ("loss", "accuracy")}

    def _images(self, data):
        """`(x, y)` of a batch for evaluation and prediction (latents are not needed)."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, (tuple, list)):
            x = x[0]
        return ops.cast(x, "float32"), None if y is None else ops.cast(y, "int64")

    def predict_step(self, data):
        return self.classifier(self._images(data)[0], training=False)


def _excluding(variables, exclude):
    """`variables` without `exclude`, each once (the seed state is tracked twice)."""
    seen = {id(v) for v in exclude}
    kept = []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            kept.append(v)
    return kept


def cross_entropy(logits, labels):
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def correct(logits, labels):
    return ops.cast(ops.equal(ops.argmax(logits, axis=-1), ops.cast(labels, "int64")),
                    "float32")
