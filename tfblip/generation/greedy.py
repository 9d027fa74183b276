"""Greedy search (and sampling, its random twin): one token per row and step.

The loop asks `extend` for the next-token logits and cache, processes the scores and lets
`choose` pick the tokens: `argmax` here, or `tfblip.generation.sampling.seeded_draw`.
"""

import tensorflow as tf

from tfblip.generation.processors import History, apply_processors
from tfblip.generation.prompts import written_at


def argmax(scores, step):
    """The greedy choice: each row's best token."""
    return tf.argmax(scores, axis=-1, output_type=tf.int32)


def greedy_search(prompt, logits, cache, extend, processors, choose, token_ids, output_scores):
    """Decodes each row by the tokens `choose` picks until eos or its token allowance.

    Args:
        prompt: the right-aligned `Prompt`.
        logits, cache: the prefill step's next-token logits and cache.
        extend: `(tokens (N, 1), column, cache) -> (logits, cache)`.
        processors: the logits processors (and warpers) applied before choosing.
        choose: `(scores, step) -> (N,) int32 tokens`.
        token_ids: (eos, pad) ids.
        output_scores: collect the processed scores of each step.

    Returns:
        A dict: "sequences" (N, width + max_new), "steps", "scores" (steps, N, vocab) or an
        empty placeholder.
    """
    eos, pad = token_ids
    rows = tf.shape(prompt.ids)[0]
    max_new = prompt.max_new
    total = prompt.width + max_new
    sequences = tf.concat([prompt.ids, tf.fill((rows, max_new), pad)], axis=1)
    valid = tf.concat([tf.cast(prompt.mask, tf.bool), tf.zeros((rows, max_new), tf.bool)], 1)
    scores_array = tf.TensorArray(tf.float32, size=max_new, element_shape=(None, logits.shape[-1]))

    def condition(step, finished, *_):
        return (step < max_new) & ~tf.reduce_all(finished)

    def body(step, finished, sequences, valid, logits, cache, scores_array):
        column = prompt.width + step
        history = History(sequences, valid, step, column, prompt.lengths)
        scores = apply_processors(processors, logits, history)
        tokens = tf.where(finished, pad, choose(scores, step))
        if output_scores:
            scores_array = scores_array.write(step, scores)
        here = written_at(column, total)
        sequences = tf.where(here, tokens[:, None], sequences)
        finished |= tf.equal(tokens, eos) | (step + 1 >= prompt.allowed)
        logits, cache = extend(tokens[:, None], column, cache)
        return step + 1, finished, sequences, valid | here, logits, cache, scores_array

    finished = tf.zeros((rows,), tf.bool)
    step, _, sequences, _, _, _, scores_array = tf.while_loop(
        condition,
        body,
        (tf.constant(0), finished, sequences, valid, logits, cache, scores_array),
        maximum_iterations=max_new,
    )
    # An unwritten TensorArray cannot be stacked: an empty placeholder instead.
    scores = scores_array.stack() if output_scores else tf.zeros((0,))
    return {"sequences": sequences, "steps": step, "scores": scores}
