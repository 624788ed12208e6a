"""Attacks and evaluations spread over the replicas of a `tf.distribute` strategy.

Inside `with distributed(strategy):` every attack call (and so `evaluate_robustness(...,
strategy=...)`) hands its batches to the strategy's replicas, one batch per replica at a time,
with `strategy.run` inside a `tf.function` (so the replicas' graphs run concurrently), and
gathers the results with `strategy.gather` — TensorFlow's own engine,
so the same code runs on one machine's devices (`MirroredStrategy`) and across machines
(`MultiWorkerMirroredStrategy`, where every worker runs the same program and ends with every
result).

Per-example results equal the single-device run's: a batch is the same batch on any replica,
and an attack's random numbers depend on the attack's seed and the batch's index only, never
on the device or on which batches ran before. (A randomized *model* draws its own noise from its
own SeedGenerator, which no attack controls: EoT estimates then vary from run to run, on one
device or many.)

Models created outside `strategy.scope()` keep one copy of their weights, which every replica
reads; for GPUs, build or load the model under `strategy.scope()` so each device holds a copy.
"""

import contextlib
import contextvars
import weakref

import tensorflow as tf

__all__ = ["current_strategy", "distributed", "map_batches"]

_STRATEGY = contextvars.ContextVar("manidefense_strategy", default=None)


@contextlib.contextmanager
def distributed(strategy: tf.distribute.Strategy | None):
    """Within this context, attacks run their batches on `strategy`'s replicas.

    Args:
        strategy: a `tf.distribute.Strategy` (MirroredStrategy, MultiWorkerMirroredStrategy,
            ...), or None for the default single-device run.

    Example:
    >>> strategy = tf.distribute.MirroredStrategy()
    >>> with manidefense.distribute.distributed(strategy):
    ...     x_adv = PGD(eps=0.1)(model, x_test, y_test)  # batches on every device
    """
    token = _STRATEGY.set(check_strategy(strategy))
    try:
        yield strategy
    finally:
        _STRATEGY.reset(token)


def current_strategy() -> tf.distribute.Strategy | None:
    """The strategy set by the innermost `distributed` context, or None.

    Example:
    >>> with distributed(strategy):
    ...     assert current_strategy() is strategy
    """
    return _STRATEGY.get()


def check_strategy(strategy):
    """`strategy` itself if it is None or a `tf.distribute.Strategy`, else a ValueError."""
    if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
        raise ValueError("Argument `strategy` must be a tf.distribute.Strategy (e.g. "
                         "tf.distribute.MirroredStrategy()) or None. "
                         f"Received: strategy={strategy!r}")
    return strategy


def replica_devices(strategy):
    """One device name per replica id (global ids; a worker's own devices repeat across
    workers, which is where that worker runs them)."""
    local = list(strategy.extended.worker_devices)
    return [local[r % len(local)] for r in range(strategy.num_replicas_in_sync)]


_STEPS = weakref.WeakKeyDictionary()  # fn -> {(id(strategy), feature shape): compiled step}


def _step(strategy, fn, feature_shape):
    """The compiled round of `map_batches` for `fn`, traced once per input signature."""
    steps = _STEPS.setdefault(fn, {})
    key = (id(strategy), feature_shape)
    if key in steps:
        return steps[key]

    def replica_fn(k, *tensors):
        replica = tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group)
        # A replica with no batch in the last round (k = -1) returns zero rows.
        return tf.cond(k >= 0, lambda: fn(int(replica), k, *tensors),
                       lambda: tf.zeros((0, *feature_shape), tf.float32))

    @tf.function(reduce_retracing=True)
    def step(k, *tensors):
        return strategy.gather(strategy.run(replica_fn, args=(k, *tensors)), axis=0)

    steps[key] = step
    return step


def map_batches(strategy: tf.distribute.Strategy, fn, batches: list) -> tf.Tensor:
    """Runs `fn(replica, k, *batches[k])` for every batch k, one batch per replica at a time.

    Each round hands the replicas their batches with `strategy.run` inside one `tf.function`,
    so the replicas' graphs execute concurrently on their devices (run eagerly, TensorFlow
    runs replica functions one after another), and collects the results with
    `strategy.gather`, so every worker of a multi-worker strategy gets all of them.

    Args:
        strategy: the `tf.distribute.Strategy`.
        fn: a graph-safe function of the replica id (a Python int), the batch index (an int64
            scalar tensor) and the batch's tensors; returns the batch's result, a tensor whose
            first axis is the batch.
        batches: one tuple of tensors per batch (the same structure for every batch; the
            first axis is the batch).

    Returns:
        The results of every batch concatenated in batch order.

    Example:
    >>> batches = [(tf.fill((4, 2), float(k)),) for k in range(5)]
    >>> map_batches(strategy, lambda replica, k, x: x * 2, batches).shape
    TensorShape([20, 2])
    """
    replicas = strategy.num_replicas_in_sync
    step = _step(strategy, fn, tuple(batches[0][0].shape[1:]))

    parts = []
    for first in range(0, len(batches), replicas):
        def values(ctx, first=first):
            k = first + ctx.replica_id_in_sync_group
            real = k < len(batches)
            return (tf.constant(k if real else -1, tf.int64), *batches[k if real else first])

        parts.append(step(*strategy.experimental_distribute_values_from_function(values)))
    return tf.concat(parts, axis=0)
