"""Keras callbacks that watch robustness during `fit`.

`RobustnessMonitor` attacks a fixed validation subset at the end of every `every` epochs and
writes `val_robust_accuracy` into the epoch logs, so `EarlyStopping`, `ModelCheckpoint`,
`CSVLogger`, `TensorBoard` and the `History` use it like any other metric.
"""

import os
import re
from collections.abc import Sequence

import keras
import numpy as np
from numpy.typing import ArrayLike

from manidefense.attacks.base import Attack
from manidefense.validation import check_images, check_labels, check_positive_int


class RobustnessMonitor(keras.callbacks.Callback):
    """Writes robust accuracy on a fixed validation subset into the epoch logs.

    At the end of every `every`-th epoch each attack runs on the first `num_examples`
    examples of `validation_data`, against the classifier being trained (a trainer's
    `classifier` for `DualManifoldTrainer` and `GenerativeAdversarialTrainer`, else the model
    itself), and the logs gain `val_robust_accuracy` — the fraction classified correctly under
    every attack — and, with several attacks, `val_robust_accuracy_<name>` per attack (names
    from `names`, else the attacks' class names in snake case). Epochs in between get no entry
    (no stale value reaches a checkpoint's comparison).

    Keras hands the same logs to the callbacks in list order: put the monitor **before**
    `EarlyStopping`, `ModelCheckpoint`, `CSVLogger` or `TensorBoard` in `callbacks=[...]`
    (the `History` always comes last and sees the entries).

    Args:
        attack: a manidefense `Attack` on images, or a list of them. Fix their `seed` so every
            epoch is measured with the same random starts.
        validation_data: `(x, y)` numpy arrays (images in the attacks' `bounds`, integer labels).
        every: run every this many epochs (epochs `every - 1`, `2 every - 1`, ... counted from 0).
        num_examples: size of the fixed subset (the first examples); None uses all.
        log_dir: optional folder for a TensorBoard image summary of the first
            `num_images` adversarial examples of the first attack (tag
            `robustness/adversarial_examples`, step = epoch) and the robust-accuracy scalars.
        num_images: images written per epoch when `log_dir` is given.
        names: optional names for the attacks' log entries.

    Example:
    >>> monitor = manidefense.callbacks.RobustnessMonitor(
    ...     manidefense.attacks.PGD(eps=0.1, num_steps=10, seed=0), (x_val, y_val),
    ...     num_examples=500)
    >>> stop = keras.callbacks.EarlyStopping(monitor="val_robust_accuracy", mode="max")
    >>> model.fit(x, y, epochs=20, callbacks=[monitor, stop])
    """

    def __init__(self, attack: Attack | Sequence[Attack],
                 validation_data: tuple[ArrayLike, ArrayLike], every: int = 1,
                 num_examples: int | None = None, log_dir: str | os.PathLike | None = None,
                 num_images: int = 8, names: Sequence[str] | None = None):
        super().__init__()
        attacks = list(attack) if isinstance(attack, (list, tuple)) else [attack]
        if not attacks or not all(isinstance(a, Attack) for a in attacks):
            raise ValueError("Argument `attack` must be a manidefense Attack or a non-empty "
                             f"list of them. Received: attack={attack!r}")
        self.attacks = attacks
        if names is None:
            names = [_snake(type(a).__name__) for a in attacks]
        names = [str(n) for n in names]
        if len(names) != len(attacks) or len(set(names)) != len(names):
            raise ValueError("Argument `names` must give one distinct name per attack. "
                             f"Received: names={names!r} for {len(attacks)} attacks")
        self.names = names
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("Argument `validation_data` must be a pair (x, y) of arrays. "
                             f"Received: {type(validation_data).__name__}")
        x, y = validation_data
        x = check_images(x, attacks[0].bounds, "validation_data x")
        y = check_labels(y, len(x), "validation_data y")
        num = len(x) if num_examples is None else check_positive_int("num_examples",
                                                                    num_examples)
        self.x, self.y = x[:num], y[:num]
        self.every = check_positive_int("every", every)
        self.log_dir = None if log_dir is None else str(log_dir)
        if self.log_dir is not None:
            try:
                import tensorboard  # noqa: F401  (tf.summary needs it to write events)
            except ImportError:
                raise ValueError(
                    "Argument `log_dir` needs the tensorboard package to write summaries: "
                    "pip install 'manidefense[tensorboard]'. Received: log_dir="
                    f"{self.log_dir!r}") from None
        self.num_images = check_positive_int("num_images", num_images)
        self._writer = None

    def _classifier(self):
        return getattr(self.model, "classifier", self.model)

    def robust_accuracy(self) -> tuple[dict[str, float], np.ndarray]:
        """Attacks the subset with the current weights; what `on_epoch_end` writes to the logs.

        Returns:
            `(logs, x_adv)`: `logs` maps `val_robust_accuracy` (and, with several attacks,
            `val_robust_accuracy_<name>`) to a fraction in `[0, 1]`; `x_adv` holds the first
            attack's adversarial examples for the subset.

        Example:
        >>> monitor = manidefense.callbacks.RobustnessMonitor(
        ...     manidefense.attacks.FGSM(eps=0.1), (x, y))
        >>> monitor.set_model(model)
        >>> logs, x_adv = monitor.robust_accuracy()
        >>> sorted(logs), x_adv.shape == x.shape
        (['val_robust_accuracy'], True)
        """
        model = self._classifier()
        correct = np.ones(len(self.x), bool)
        logs, first = {}, None
        for name, attack in zip(self.names, self.attacks, strict=True):
            x_adv = attack(model, self.x, self.y)
            first = x_adv if first is None else first
            logits = model.predict(x_adv, batch_size=attack.batch_size, verbose=0)
            right = np.argmax(logits, axis=-1) == self.y
            correct &= right
            if len(self.attacks) > 1:
                logs[f"val_robust_accuracy_{name}"] = float(right.mean())
        logs["val_robust_accuracy"] = float(correct.mean())
        return logs, first

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        values, x_adv = self.robust_accuracy()
        if logs is not None:
            logs.update(values)
        if self.log_dir is not None:
            self._summaries(epoch, values, x_adv)

    def _summaries(self, epoch, values, x_adv):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(step=epoch):
            low, high = self.attacks[0].bounds
            images = (x_adv[:self.num_images] - low) / (high - low)  # [0, 1] for TensorBoard
            tf.summary.image("robustness/adversarial_examples", np.clip(images, 0.0, 1.0),
                             max_outputs=self.num_images)
            for name, value in values.items():
                tf.summary.scalar(f"robustness/{name}", value)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _snake(name):
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower()
