"""Generative adversarial training (GAT) in one `train_step`, so `fit` does the rest.

Per batch `(x, y)` of real images: `oversample · B` fresh generator samples of the batch's
labels (new z and noise) are attacked by GAT's sign-gradient attack on one layer group drawn
at random (`GenerativeAttack`, inference mode); samples that fooled the classifier within
`max_iterations` are kept (the paper's realism threshold) and fill `B` adversarial slots
(repeated in order when fewer than `B` were kept, truncated when more); the classifier then
trains on the `2B` images — as many adversarial as clean — with

    clean_weight · CE(f(x), y) + adversarial_weight · CE(f(x_adv), y_gen)

(0.5 / 0.5: the mean over the combined batch, as in the paper). If no sample of a batch was
kept, only the clean term trains.

Reference:
    Poursaeed, Jiang, Yang, Belongie, Lim, "Robustness and Generalization via Generative
    Adversarial Training", ICCV 2021, §3.1 and §4.1.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense._wrapping import build_from_base
from manidefense.attacks.gradients import logits_function
from manidefense.attacks.latent import (
    GenerativeAttack,
    check_layers,
    generated_logits,
    generative_loop,
    synthesize_flat,
)
from manidefense.training.base import ClassifierTrainer, correct, cross_entropy
from manidefense.validation import check_non_negative, check_positive_int


@keras.saving.register_keras_serializable(package="manidefense")
class GenerativeAdversarialTrainer(ClassifierTrainer):
    """Trains a classifier on equal numbers of clean images and GAT adversarial examples.

    Args:
        classifier: the Keras classifier to train (logits, or probabilities with `output`),
            on images of the generator's shape.
        generator: a trained `zoo.StyleGenerator` (fixed: it never trains); default: the
            attack's.
        attack: a `GenerativeAttack` giving the perturbed inputs (`perturb`), the steps and
            the objective; default `GenerativeAttack(generator)` (GAT's steps 0.004 / 0.1,
            least-likely target). Its `layers` are ignored: the layer group is drawn per batch
            from `layer_groups`.
        layer_groups: the groups of synthesis layers one of which is perturbed per batch
            (uniformly at random); default `generator.layer_groups` (one per resolution).
        max_iterations: the iteration cap and realism threshold: samples not fooling the
            classifier within it are dropped (GAT: 10). It replaces the attack's own.
        clean_weight, adversarial_weight: loss weights (0.5 / 0.5).
        oversample: candidates generated per real image (more candidates, more distinct
            adversarial examples per batch, proportionally more attack cost).
        output: `"auto"`, `"logits"` or `"probabilities"`: what the classifier returns.
        seed: int seed of the generator samples and the layer-group draws (a `SeedGenerator`
            the trainer owns, so checkpoints carry its state). None draws one.

    Data: `fit` takes batches of `(x, y)`; `compile(optimizer=...)` takes the optimizer, the
    loss is the trainer's own. The history shows `loss`, `clean_loss`, `accuracy` (clean, in
    the forward pass of the gradient step), `adversarial_loss`, `kept_fraction` (candidates
    that fooled the classifier within `max_iterations`) and `mean_iterations` (of the kept
    ones). There is no accuracy on the adversarial half: every kept image fooled the very
    weights being trained, so it would be 0 by construction (without dropout or batch norm);
    measure robustness on fresh examples instead. `evaluate` reports clean `loss` and
    `accuracy`.

    Example:
    >>> attack = manidefense.attacks.GenerativeAttack(gen, style_step=0.02, noise_step=0.2)
    >>> trainer = manidefense.training.GenerativeAdversarialTrainer(classifier, gen, attack)
    >>> trainer.compile(optimizer="adam")
    >>> trainer.fit(x_train, y_train, batch_size=64, epochs=3)
    >>> classifier.save("gat.keras")
    """

    def __init__(self, classifier: keras.Model, generator: keras.Model | None = None,
                 attack: GenerativeAttack | None = None,
                 layer_groups: list | None = None, max_iterations: int = 10,
                 clean_weight: float = 0.5, adversarial_weight: float = 0.5,
                 oversample: int = 1, output: str = "auto", seed: int | None = None,
                 **kwargs):
        super().__init__(classifier, output=output, seed=seed, **kwargs)
        if attack is None:
            if generator is None:
                raise ValueError("GenerativeAdversarialTrainer needs a `generator` or an "
                                 "`attack` (a GenerativeAttack on a generator).")
            attack = GenerativeAttack(generator)
        if not isinstance(attack, GenerativeAttack):
            raise ValueError("Argument `attack` must be a manidefense GenerativeAttack. "
                             f"Received: {attack!r}")
        if generator is not None and generator is not attack.generator:
            raise ValueError("Arguments `generator` and `attack` disagree: the attack must "
                             "perturb the trainer's generator. Received: generator="
                             f"{getattr(generator, 'name', generator)!r}")
        self.attack = attack
        self.generator = attack.generator
        groups = self.generator.layer_groups if layer_groups is None else layer_groups
        try:
            groups = [check_layers(g, self.generator.num_layers) for g in groups]
        except (TypeError, ValueError):
            groups = []
        if not groups:
            raise ValueError(
                "Argument `layer_groups` must be a non-empty list of sequences of synthesis "
                f"layer indices in [0, {self.generator.num_layers}). Received: "
                f"layer_groups={layer_groups!r}")
        self.layer_groups = tuple(groups)
        self.max_iterations = check_positive_int("max_iterations", max_iterations)
        self.clean_weight = check_non_negative("clean_weight", clean_weight)
        self.adversarial_weight = check_non_negative("adversarial_weight", adversarial_weight)
        if self.clean_weight + self.adversarial_weight == 0:
            raise ValueError("Arguments `clean_weight` and `adversarial_weight` are both 0: "
                             "nothing to train on.")
        self.oversample = check_positive_int("oversample", oversample)
        # One row of per-coordinate steps per group (a constant: no retracing per group).
        self._steps = np.stack([attack.step_vector(g) for g in self.layer_groups])
        self._trackers = {name: keras.metrics.Mean(name=name) for name in (
            "loss", "clean_loss", "accuracy", "adversarial_loss", "kept_fraction",
            "mean_iterations")}
        build_from_base(self, classifier)  # last: building locks the tracked state

    def get_config(self):
        config = super().get_config()
        config.update(
            classifier=keras.saving.serialize_keras_object(self.classifier),
            attack=keras.saving.serialize_keras_object(self.attack),
            layer_groups=[list(g) for g in self.layer_groups],
            max_iterations=self.max_iterations, clean_weight=self.clean_weight,
            adversarial_weight=self.adversarial_weight, oversample=self.oversample,
            output=self.classifier_output, seed=self.seed)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("classifier", "attack"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    # === Adversarial examples (inference mode, no gradient to the classifier) ===

    def adversarial_batch(self, labels: ArrayLike | tf.Tensor,
                          group: int | None = None) -> dict:
        """Generates and attacks one candidate per label (graph-safe).

        Args:
            labels: int labels of the candidates.
            group: index into `layer_groups`, or None to draw one (from the trainer's seed).

        Returns:
            A dict of `images` (the attacked samples `g(y_adv, η_adv)`), `success`,
            `iterations` (int32) and `group`, one row per label.

        Example:
        >>> batch = trainer.adversarial_batch(np.arange(10), group=0)  # one sample per class
        >>> batch["images"][batch["success"]]  # the samples fooled within max_iterations
        """
        gen = self.generator
        labels = ops.cast(labels, "int64")
        num = ops.shape(labels)[0]
        z = keras.random.normal((num, gen.latent_dim), seed=self.seed_generator)
        noises = gen.random_noise(num, seed=self.seed_generator)
        flat = gen.flatten(gen.styles_for(z, labels), noises)
        if group is None:
            group = keras.random.randint((), 0, len(self.layer_groups),
                                         seed=self.seed_generator)
        steps = ops.take(ops.convert_to_tensor(self._steps), group, axis=0)
        logits_fn = generated_logits(gen, logits_function(self.classifier,
                                                          self.classifier_output))
        adv, success, iterations, _ = generative_loop(
            logits_fn, flat, labels, None, step_vector=steps,
            max_iterations=self.max_iterations,
            least_likely=self.attack.target == "least_likely", loss=self.attack.loss)
        return {"images": tf.stop_gradient(synthesize_flat(gen, adv)), "success": success,
                "iterations": iterations, "group": group}

    def _fill(self, batch, candidates, labels):
        """`batch` kept adversarial images and their labels (kept ones repeated in order when
        fewer than `batch` were kept), and whether any was kept."""
        kept = ops.cast(ops.reshape(tf.where(candidates["success"]), (-1,)), "int32")
        count = ops.shape(kept)[0]
        padded = ops.concatenate([kept, ops.zeros((1,), "int32")])  # safe when none was kept
        index = ops.take(padded, ops.mod(ops.arange(batch, dtype="int32"),
                                         ops.maximum(count, 1)))
        return (ops.take(candidates["images"], index, axis=0), ops.take(labels, index),
                count > 0, kept)

    # === Steps ===

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        x, y = ops.cast(x, "float32"), ops.cast(ops.reshape(y, (-1,)), "int64")
        batch = ops.shape(x)[0]
        labels = ops.tile(y, (self.oversample,))
        candidates = self.adversarial_batch(labels)
        x_adv, y_adv, any_kept, kept = self._fill(batch, candidates, labels)
        adv_weight = self.adversarial_weight * ops.cast(any_kept, "float32")
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            logits = self._logits(ops.concatenate([x, x_adv]), training=True)
            clean_logits, adv_logits = logits[:batch], logits[batch:]
            clean_loss = ops.mean(cross_entropy(clean_logits, y))
            adv_loss = ops.mean(cross_entropy(adv_logits, y_adv))
            loss = self.clean_weight * clean_loss + adv_weight * adv_loss
            scaled = self._scaled(loss)
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        any_weight = ops.cast(any_kept, "float32")
        t = self._trackers
        t["loss"].update_state(loss)
        t["clean_loss"].update_state(clean_loss)
        t["accuracy"].update_state(correct(clean_logits, y))
        t["adversarial_loss"].update_state(adv_loss, sample_weight=any_weight)
        t["kept_fraction"].update_state(ops.cast(candidates["success"], "float32"))
        t["mean_iterations"].update_state(
            ops.cast(ops.take(candidates["iterations"], kept), "float32"))
        return {m.name: m.result() for m in self.metrics}
