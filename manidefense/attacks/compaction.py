"""A while-loop that drops finished examples from the batch: attacks do less work as they win.

A success-seeking attack (APGD) only needs to keep iterating on the examples it has not broken
yet. Running the whole batch until the last example breaks (or the step budget ends) wastes
most of the compute when, as is typical, most examples break in the first few steps. This loop
gathers the unfinished rows into a smaller batch once the finished ones are a sizeable share
of it, and writes each finished row into the output when it leaves.

Rows must be independent (the model in inference mode, per-example randomness drawn per row),
so an unfinished row's iterates are those of the full-batch run, up to float rounding (kernels
may round differently for another batch size).
"""

import tensorflow as tf


def compacting_while_loop(step, state, done, *, num_steps, min_fraction=0.25):
    """Runs `state = step(t, state)` for `t = 1..num_steps`, dropping rows once `done`.

    Args:
        step: `step(t, state) -> state`, graph-safe; `state` is a tuple of batch-first
            tensors with a common leading dimension; rows must not interact.
        state: the initial tuple (batch `B`).
        done: `done(state) -> (m,)` boolean tensor: rows that may leave the batch.
        num_steps: the step budget (an int).
        min_fraction: compact when the finished rows are at least this share of the current
            batch (gathering costs little, but not nothing).

    Returns:
        The final state tuple in the original row order (`B` rows); a row that left early
        holds the values it had when it left.
    """
    state = tuple(tf.convert_to_tensor(s) for s in state)
    size = tf.shape(state[0])[0]
    index = tf.range(size)

    def write(buffers, rows, index, mask):
        at = tf.expand_dims(tf.boolean_mask(index, mask), 1)
        return tuple(tf.tensor_scatter_nd_update(b, at, tf.boolean_mask(r, mask))
                     for b, r in zip(buffers, rows, strict=True))

    def body(t, index, current, buffers):
        current = tuple(step(t, current))
        finished = done(current)
        count = tf.reduce_sum(tf.cast(finished, tf.int32))
        rows = tf.shape(index)[0]
        compact = tf.logical_and(
            count > 0, tf.cast(count, tf.float32) >= min_fraction * tf.cast(rows, tf.float32))

        def gather():
            keep = tf.logical_not(finished)
            return (tf.boolean_mask(index, keep),
                    tuple(tf.boolean_mask(s, keep) for s in current),
                    write(buffers, current, index, finished))

        index, current, buffers = tf.cond(compact, gather, lambda: (index, current, buffers))
        return t + 1, index, current, buffers

    def cond(t, index, current, buffers):
        return tf.logical_and(t <= num_steps, tf.shape(index)[0] > 0)

    invariants = (tf.TensorShape([]), tf.TensorShape([None]),
                  tuple(tf.TensorShape([None]).concatenate(s.shape[1:]) for s in state),
                  tuple(s.shape for s in state))
    _, index, current, buffers = tf.while_loop(
        cond, body, (tf.constant(1), index, state, state), shape_invariants=invariants)
    everything = tf.ones_like(index, dtype=tf.bool)
    return write(buffers, current, index, everything)
