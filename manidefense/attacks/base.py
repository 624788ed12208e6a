"""The `Attack` base class: the attack contract written once.

`attack(model, x, y, target=None) -> x_adv`. The base class validates the inputs, probes the
model once (number of classes, logits or probabilities), splits the data into batches, runs one
compiled graph per batch and restart, keeps the most damaging restart per example, and finally
projects onto the eps-ball and clips to `bounds` even if a subclass forgot. Subclasses only
write `_attack_batch`, a graph-safe function of one batch.
"""

import copy
import inspect
import random as python_random
import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from numpy.typing import ArrayLike

from manidefense import distribute
from manidefense.attacks import norms
from manidefense.attacks.gradients import OUTPUTS, logits_function, output_kind, weak_reference
from manidefense.attacks.objectives import is_successful, objective
from manidefense.validation import (
    check_bounds,
    check_choice,
    check_images,
    check_labels,
    check_positive_int,
)


def resolve_jit_compile(jit_compile):
    """`"auto"` means XLA only on accelerators: on CPU it measured 2-4x slower (BENCHMARKS.md)."""
    if jit_compile == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    if not isinstance(jit_compile, bool):
        raise ValueError(
            "Argument `jit_compile` must be True, False or 'auto'. "
            f"Received: jit_compile={jit_compile!r}"
        )
    return jit_compile


def better(loss_a, success_a, loss_b, success_b):
    """Per example: is candidate `a` more damaging than `b`? Success first, then loss."""
    return ops.logical_or(
        ops.logical_and(success_a, ops.logical_not(success_b)),
        ops.logical_and(ops.equal(success_a, success_b), loss_a > loss_b),
    )


def select(mask, a, b):
    """Per-example `where` for a batch of any rank."""
    mask = ops.reshape(mask, (-1,) + (1,) * (len(a.shape) - 1))
    return ops.where(mask, a, b)


class Attack:
    """Base class of all attacks.

    Args:
        bounds: valid input range `(low, high)`; inputs outside it are rejected.
        batch_size: examples per compiled call.
        num_restarts: independent runs per example; the most damaging one is kept
            (a misclassified result beats any loss value; among equals the higher loss wins).
        loss: objective maximised, `"ce"`, `"margin"` or `"dlr"`; also used to rank restarts.
        seed: int or None. Equal seeds give equal results.
        verbose: show a progress bar when there is more than one batch.
        jit_compile: compile with XLA; `"auto"` turns it on only when a GPU is present.
        output: `"auto"`, `"logits"` or `"probabilities"`: what the model returns.

    A subclass writes only the graph-safe `_attack_batch`; the base class does the rest.

    Example:
    >>> class SignNoise(Attack):
    ...     def __init__(self, eps=0.1, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.eps, self.norm = eps, "linf"
    ...     def _attack_batch(self, logits_fn, x, labels, target):
    ...         return x + self.eps * keras.ops.sign(
    ...             keras.random.normal(keras.ops.shape(x), seed=self._seed_generator))
    >>> x_adv = SignNoise(eps=0.05, seed=0)(model, x_test, y_test)  # projected and clipped
    """

    # Whether the attack reads the model's gradients (the evaluation orders and audits
    # gradient-based and gradient-free attacks differently).
    uses_gradients = True
    # What the attack perturbs, for error messages ("w" for latent attacks).
    _input_name = "x"

    def __init__(self, *, bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 256,
                 num_restarts: int = 1, loss: str = "ce", seed: int | None = None,
                 verbose: bool = False, jit_compile: bool | str = "auto", output: str = "auto"):
        self.bounds = check_bounds(bounds)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_restarts = check_positive_int("num_restarts", num_restarts)
        self.loss = check_choice("loss", loss, ("ce", "margin", "dlr"))
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Argument `seed` must be an int or None. Received: seed={seed!r}")
        self.seed = seed
        self.verbose = bool(verbose)
        resolve_jit_compile(jit_compile)
        self.jit_compile = jit_compile
        self.output = check_choice("output", output, OUTPUTS)
        self._seed_generator = None
        self._call_seed = None
        self._graphs = {}
        self._replica_copies = {}  # id(strategy) -> (weakref, per-replica copies)
        self._replica_fns = {}  # (id(strategy), graph key) -> (weakrefs, map_batches function)

    # === To be written by subclasses ===

    def _attack_batch(self, logits_fn, x, labels, target):
        """Returns adversarial inputs for one float32 batch; graph-safe (no numpy, no eager)."""
        raise NotImplementedError

    # === The contract ===

    def __call__(self, model: keras.Model, x: ArrayLike | tf.Tensor, y: ArrayLike | tf.Tensor,
                 target: ArrayLike | tf.Tensor | None = None) -> np.ndarray | tf.Tensor:
        """Runs the attack.

        Args:
            model: a Keras classifier returning `(batch, num_classes)` logits or probabilities.
            x: inputs within `bounds`, floating point, batch first.
            y: integer true labels, shape `(batch,)`.
            target: integer target labels for a targeted attack, or None.

        Returns:
            Adversarial inputs, same shape, dtype and array type (numpy or tensor) as `x`.
        """
        is_numpy = isinstance(x, np.ndarray)
        x_np = check_images(x, self.bounds, self._input_name)
        y_np = check_labels(y, x_np.shape[0], "y")
        t_np = None if target is None else check_labels(target, x_np.shape[0], "target")
        num_classes, kind = self._probe(model, x_np[: min(len(x_np), 8)])
        check_labels(y_np, len(y_np), "y", num_classes)
        if t_np is not None:
            check_labels(t_np, len(t_np), "target", num_classes)
        self.output_kind_ = kind
        self._reset_seed()
        num_batches = -(-len(x_np) // self.batch_size)

        def tensors(k):
            sl = slice(k * self.batch_size, (k + 1) * self.batch_size)
            parts = (tf.constant(x_np[sl], dtype=tf.float32), tf.constant(y_np[sl]))
            return parts if t_np is None else (*parts, tf.constant(t_np[sl]))

        strategy = distribute.current_strategy()
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            out = distribute.map_batches(
                strategy, self._replica_batches(strategy, model, t_np is not None,
                                                x_np.shape[1:]),
                [tensors(k) for k in range(num_batches)]).numpy()
        else:
            run = self._graph(model, t_np is not None, x_np.shape[1:])
            out = np.empty(x_np.shape, dtype=np.float32)
            bar = keras.utils.Progbar(len(x_np)) if self.verbose and num_batches > 1 else None
            for k in range(num_batches):
                out[k * self.batch_size:(k + 1) * self.batch_size] = self._batch(
                    run, k, *tensors(k)).numpy()
                if bar is not None:
                    bar.add(min(self.batch_size, len(x_np) - k * self.batch_size))
        out = out.astype(x_np.dtype, copy=False)
        return out if is_numpy else ops.convert_to_tensor(out)

    def _probe(self, model, x_sample):
        outputs = model(ops.convert_to_tensor(x_sample, dtype="float32"), training=False)
        if len(outputs.shape) != 2 or outputs.shape[-1] is None or outputs.shape[-1] < 2:
            raise ValueError(
                "Argument `model` must return a (batch, num_classes) tensor with at least two "
                f"classes. Received: output shape {tuple(outputs.shape)}"
            )
        return int(outputs.shape[-1]), output_kind(model, outputs, self.output)

    def _logits_function(self, model):
        """`inputs -> float32 logits` of the model under attack (latent attacks decode first)."""
        return logits_function(model, self.output)

    def _reset_seed(self):
        # seed=None follows Python's global RNG, as Keras does, so set_random_seed applies.
        seed = self.seed if self.seed is not None else python_random.randint(1, 2**31 - 1)
        self._call_seed = seed
        if self._seed_generator is None:
            self._seed_generator = keras.random.SeedGenerator(seed)
        state = self._seed_generator.state
        state.assign(ops.convert_to_tensor([seed, 0], dtype=state.dtype))

    def _seed_batch(self, k):
        """Batch k of a call draws from state [seed, k * 2**32]: its own stream (a draw advances
        the second word by one), whatever device runs it and whatever ran before. The seed is
        the state's first word, set per call by `_reset_seed`; `k` may be a tensor, so a
        traced graph serves every call (graph-safe)."""
        state = self._seed_generator.state
        state.assign(ops.stack([state[0], ops.cast(k, state.dtype) * (2 ** 32)]))

    def _batch(self, run, k, xb, yb, tb=None):
        """Batch `k` of a call (graph-safe): its seed stream, then the restarts."""
        self._seed_batch(k)
        return self._restarts(run, xb, yb, tb)

    def _replicas(self, strategy):
        """One copy of this attack per replica of `strategy`, each with its own graphs and its
        own seed state on the replica's device (replicas run concurrently)."""
        cached = self._replica_copies.get(id(strategy))
        if cached is None or cached[0]() is not strategy:
            copies = []
            for device in distribute.replica_devices(strategy):
                replica = copy.copy(self)
                replica._graphs = {}
                replica._replica_copies = {}
                replica._replica_fns = {}
                with tf.device(device):
                    replica._seed_generator = keras.random.SeedGenerator(0)
                copies.append(replica)
            cached = (weakref.ref(strategy), copies)
            self._replica_copies[id(strategy)] = cached
        for replica in cached[1]:
            replica._call_seed = self._call_seed
            replica.output_kind_ = self.output_kind_
            state = replica._seed_generator.state
            state.assign(ops.convert_to_tensor([self._call_seed, 0], dtype=state.dtype))
        return cached[1]

    def _replica_batches(self, strategy, model, targeted, feature_shape):
        """`fn(replica, k, *batch)` for `distribute.map_batches`, built once per strategy and
        graph (map_batches caches its compiled step per function: no retrace per call)."""
        replicas = self._replicas(strategy)
        key = (id(strategy), id(model), targeted, tuple(feature_shape))
        cached = self._replica_fns.get(key)
        if cached is None or cached[0]() is not strategy or cached[1]() is not model:
            runs = [r._graph(model, targeted, feature_shape) for r in replicas]

            def fn(replica, k, *batch):
                return replicas[replica]._batch(runs[replica], k, *batch)

            cached = (weakref.ref(strategy), weak_reference(model), fn)
            self._replica_fns[key] = cached
        return cached[2]

    def _graph(self, model, targeted, feature_shape):
        key = (id(model), targeted, tuple(feature_shape))
        cached = self._graphs.get(key)
        if cached is not None and cached[0]() is model:
            return cached[1]
        logits_fn = self._logits_function(model)

        def run(x, labels, target=None):
            x_adv = self._attack_batch(logits_fn, x, labels, target)
            x_adv = self._constrain(x, x_adv)
            logits = logits_fn(x_adv)
            return (x_adv, objective(self.loss, logits, labels, target),
                    is_successful(logits, labels, target))

        # A batch dimension of None: the last, partial batch and the shrinking batches of an
        # evaluation cascade reuse one graph instead of retracing.
        signature = [tf.TensorSpec((None, *feature_shape), tf.float32),
                     tf.TensorSpec((None,), tf.int64)]
        if targeted:
            signature.append(tf.TensorSpec((None,), tf.int64))
        compiled = tf.function(run, jit_compile=resolve_jit_compile(self.jit_compile),
                               input_signature=signature)
        self._graphs[key] = (weak_reference(model), compiled)
        return compiled

    def _constrain(self, x, x_adv):
        eps, norm = getattr(self, "eps", None), getattr(self, "norm", None)
        if eps is None or norm is None:
            return norms.clip_to_bounds(x_adv, self.bounds)
        return norms.constrain(x, x_adv, eps, norm, self.bounds)

    def _restarts(self, run, xb, yb, tb):
        args = (xb, yb) if tb is None else (xb, yb, tb)
        best = run(*args)

        def restart(best_x, best_loss, best_success):
            x_adv, loss, success = run(*args)
            take = better(loss, success, best_loss, best_success)
            return (select(take, x_adv, best_x), ops.where(take, loss, best_loss),
                    ops.logical_or(best_success, success))

        for _ in range(self.num_restarts - 1):
            # Once every example is broken more restarts cannot help: skip them (graph-safe).
            best = tf.cond(ops.all(best[2]), lambda b=best: b, lambda b=best: restart(*b))
        return best[0]

    # === Configuration ===

    def get_config(self):
        return {name: getattr(self, name) for name in _init_arguments(type(self))}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _init_arguments(cls):
    """Constructor argument names; `**kwargs` stands for the `Attack` base arguments."""
    params = inspect.signature(cls.__init__).parameters.values()
    names = [p.name for p in params if p.name != "self" and p.kind != p.VAR_KEYWORD]
    if any(p.kind == p.VAR_KEYWORD for p in params) and cls is not Attack:
        names += [n for n in _init_arguments(Attack) if n not in names]
    return names
