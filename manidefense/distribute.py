"""Attacks and evaluations spread over the replicas of a `tf.distribute` strategy.

Inside `with distributed(strategy):` every attack call (and so `evaluate_robustness(...,
strategy=...)`) hands its batches to the strategy's replicas, one batch per replica at a time,
with `strategy.run`, and gathers the results with `strategy.gather` — TensorFlow's own engine,
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


def map_batches(strategy: tf.distribute.Strategy, fn, num_batches: int,
                empty: tf.Tensor) -> tf.Tensor:
    """Runs `fn(replica, batch)` for every batch index, one batch per replica at a time.

    Args:
        strategy: the `tf.distribute.Strategy`.
        fn: called in each replica's context with the replica id and the batch index; returns
            the batch's result, a tensor whose first axis is the batch.
        num_batches: how many batches.
        empty: the result of a replica that has no batch in the last round (zero rows).

    Returns:
        The results of every batch concatenated in batch order, as a tensor (every worker of a
        multi-worker strategy gets all of them).

    Example:
    >>> batches = [tf.fill((4, 2), float(k)) for k in range(5)]
    >>> map_batches(strategy, lambda replica, k: batches[k] * 2, 5, tf.zeros((0, 2)))
    """
    replicas = strategy.num_replicas_in_sync
    parts = []
    for first in range(0, num_batches, replicas):
        def replica_fn(first=first):
            replica = int(tf.distribute.get_replica_context().replica_id_in_sync_group)
            batch = first + replica
            return fn(replica, batch) if batch < num_batches else tf.identity(empty)

        parts.append(strategy.gather(strategy.run(replica_fn), axis=0))
    return tf.concat(parts, axis=0) if parts else tf.identity(empty)
