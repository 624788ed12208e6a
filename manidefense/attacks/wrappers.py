"""Attacks built from other attacks: transfer from a source model, and runner-up targets.

Both follow the attack contract, `attack(model, x, y, target=None) -> x_adv`, so the evaluation
runs them like any other attack.
"""

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from manidefense.attacks.base import Attack
from manidefense.validation import check_labels, check_positive_int


class _Wrapper:
    """Shares the wrapped attack's threat model (`eps`, `norm`, `bounds`, `seed`)."""

    def __init__(self, attack):
        if not callable(attack) or not hasattr(attack, "get_config"):
            raise ValueError(
                "Argument `attack` must be a manidefense attack (e.g. PGD(...)). "
                f"Received: attack={attack!r}"
            )
        self.attack = attack

    def __getattr__(self, name):
        if name in ("eps", "norm", "bounds", "seed", "batch_size", "num_steps", "loss"):
            return getattr(self.attack, name)
        raise AttributeError(name)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_items())
        return f"{type(self).__name__}({args})"


class Transfer(_Wrapper):
    """Crafts adversarial examples on a `source_model`, ignoring the model it is called with.

    This is the transfer attack of the evaluation checklist (E13, E19): attack an undefended
    or static copy of the classifier with full gradients and check whether the examples fool
    the defended model. The result is judged by whoever calls it (the evaluation re-classifies
    it with the defended model).

    Args:
        attack: the attack run on the source model, e.g. `PGD(eps=0.1, num_steps=50)`.
        source_model: a differentiable Keras classifier with the same inputs and classes.

    Example:
    >>> transfer = Transfer(PGD(eps=0.1, num_steps=50), source_model=base_classifier)
    >>> x_adv = transfer(defended_model, x, y)

    The source model is a trained network, so it is not part of `get_config()` (which records
    the attack and the source's name for reports); rebuild a `Transfer` with the model itself.
    """

    uses_gradients = False  # no gradient of the attacked model is read

    def __init__(self, attack: Attack, source_model: keras.Model):
        super().__init__(attack)
        if not callable(source_model):
            raise ValueError("Argument `source_model` must be a Keras classifier. "
                             f"Received: source_model={source_model!r}")
        self.source_model = source_model

    def __call__(self, model: keras.Model, x: ArrayLike, y: ArrayLike,
                 target: ArrayLike | None = None) -> np.ndarray:
        del model  # the point of a transfer attack: the target's gradients are never used
        return self.attack(self.source_model, x, y, target)

    def get_config(self):
        return {"attack": {"class_name": type(self.attack).__name__,
                           "config": self.attack.get_config()},
                "source_model": getattr(self.source_model, "name", repr(self.source_model))}

    def _repr_items(self):
        return [("attack", self.attack),
                ("source_model", getattr(self.source_model, "name", "?"))]


class RunnerUpTargets(_Wrapper):
    """Runs a targeted attack against each of the `num_targets` runner-up classes in turn.

    The targets are the classes the model ranks highest after the true one on the clean
    input (the AutoAttack APGD-T recipe); each round attacks only the examples not yet
    misclassified, and every returned example is the first that succeeded (or the last
    round's attempt).

    Args:
        attack: an attack supporting `target=` (APGD with `loss="dlr"` is the classic choice).
        num_targets: how many runner-up classes to try (at most `num_classes - 1`).

    Example:
    >>> apgd_t = RunnerUpTargets(APGD(eps=0.1, loss="dlr"), num_targets=3)
    >>> x_adv = apgd_t(model, x, y)
    """

    def __init__(self, attack: Attack, num_targets: int = 3):
        super().__init__(attack)
        self.num_targets = check_positive_int("num_targets", num_targets)
        self.uses_gradients = getattr(attack, "uses_gradients", True)

    def __call__(self, model: keras.Model, x: ArrayLike, y: ArrayLike,
                 target: ArrayLike | None = None) -> np.ndarray:
        if target is not None:
            raise ValueError("RunnerUpTargets chooses its own targets; call it untargeted. "
                             "Received: target=<labels>")
        x = np.asarray(x)
        y = check_labels(y, len(x), "y")
        scores = self._predict(model, x)
        ranked = np.argsort(-scores, axis=1)
        ranked = ranked[ranked != y[:, None]].reshape(len(x), -1)
        x_adv = x.copy()
        todo = np.arange(len(x))
        for r in range(min(self.num_targets, ranked.shape[1])):
            if todo.size == 0:
                break
            x_adv[todo] = np.asarray(self.attack(model, x[todo], y[todo], target=ranked[todo, r]))
            fooled = np.argmax(self._predict(model, x_adv[todo]), axis=1) != y[todo]
            todo = todo[~fooled]
        return x_adv

    def _predict(self, model, x):
        size = getattr(self.attack, "batch_size", 256)
        return np.concatenate([
            ops.convert_to_numpy(model(ops.convert_to_tensor(x[i:i + size], dtype="float32"),
                                       training=False))
            for i in range(0, len(x), size)
        ])

    def get_config(self):
        return {"attack": {"class_name": type(self.attack).__name__,
                           "config": self.attack.get_config()},
                "num_targets": self.num_targets}

    def _repr_items(self):
        return [("attack", self.attack), ("num_targets", self.num_targets)]
