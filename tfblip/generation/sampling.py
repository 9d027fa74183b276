"""Sampling: greedy search's loop with a seeded random choice (the warpers are processors)."""

import tensorflow as tf


def seeded_draw(seed):
    """`choose(scores, step)` for `greedy_search`: one token per row from softmax(scores),
    seeded by the int64 `seed` tensor and the step, so a call is repeatable."""

    def choose(scores, step):
        step_seed = tf.stack([seed, tf.cast(step, tf.int64)])
        return tf.cast(tf.random.stateless_categorical(scores, 1, seed=step_seed)[:, 0], tf.int32)

    return choose
