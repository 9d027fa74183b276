"""Sampling: greedy search's loop with a seeded random choice.

The warpers (temperature, top-k, top-p) are logits processors
(`tfblip.generation.processors`); this draws from what they leave.
"""

import tensorflow as tf


def seeded_draw(seed):
    """The sampling choice: one token per row from softmax(scores).

    Args:
        seed: int64 scalar tensor; with the step it seeds each draw, so a call is repeatable.

    Returns:
        `(scores, step) -> (N,) int32 tokens`, for `greedy_search`'s `choose`.
    """

    def choose(scores, step):
        step_seed = tf.stack([seed, tf.cast(step, tf.int64)])
        return tf.cast(tf.random.stateless_categorical(scores, 1, seed=step_seed)[:, 0], tf.int32)

    return choose
