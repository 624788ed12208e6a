"""The compacting while-loop: finished rows leave the batch and keep their values."""

import numpy as np
import tensorflow as tf

from manidefense.attacks.compaction import compacting_while_loop


def run(limits, num_steps, min_fraction=0.25):
    """Row i counts up by one per step and is done once it reaches limits[i]."""
    limits = tf.constant(limits, tf.int32)
    seen = tf.Variable(0)

    def step(t, state):
        limit, count, stamp = state
        seen.assign_add(tf.shape(count)[0])
        return limit, count + 1, stamp + t  # stamp sums the step indices this row saw

    @tf.function
    def go():
        zeros = tf.zeros_like(limits)
        return compacting_while_loop(step, (limits, zeros, zeros), lambda s: s[1] >= s[0],
                                     num_steps=num_steps, min_fraction=min_fraction)

    limit, count, stamp = (t.numpy() for t in go())
    return limit, count, stamp, int(seen.numpy())


def test_rows_leave_when_done_and_keep_their_values():
    limits = [1, 2, 3, 10, 10, 10, 10, 10]
    limit, count, stamp, seen = run(limits, num_steps=5)
    np.testing.assert_array_equal(limit, limits)  # the original order is restored
    # With min_fraction 0.25 of 8 rows, two finished rows are needed for the first compaction:
    # rows 0 and 1 leave after step 2, row 2 (1 of 6 rows, under the quarter) runs to the end.
    np.testing.assert_array_equal(count, [2, 2, 5, 5, 5, 5, 5, 5])
    np.testing.assert_array_equal(stamp, [3, 3, 15, 15, 15, 15, 15, 15])
    assert seen == 8 + 8 + 6 + 6 + 6


def test_loop_ends_when_every_row_is_done():
    _, count, _, seen = run([1, 1, 1, 1], num_steps=100)
    np.testing.assert_array_equal(count, [1, 1, 1, 1])
    assert seen == 4


def test_without_finished_rows_it_is_a_plain_loop():
    _, count, stamp, seen = run([50, 50, 50], num_steps=7, min_fraction=0.0)
    np.testing.assert_array_equal(count, [7, 7, 7])
    assert seen == 21 and stamp[0] == sum(range(1, 8))
