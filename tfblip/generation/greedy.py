"""Greedy search, and sampling with its `choose`: one token per row and step."""

import tensorflow as tf

from tfblip.generation.processors import apply_processors
from tfblip.generation.prompts import at_column


def argmax(scores, step):
    """The greedy choice: each row's best token."""
    return tf.argmax(scores, axis=-1, output_type=tf.int32)


def greedy_search(prompt, logits, cache, extend, processors, choose, token_ids, output_scores):
    """Adds the tokens `choose` picks to each row until eos or the row's allowance.

    Args:
        prompt: the `Prompt`.
        logits, cache: what the prefill step returned.
        extend: `(tokens (N, 1), column, cache) -> (logits, cache)`, the next step.
        processors: the logits processors applied before choosing.
        choose: `(scores, step) -> (N,) int32 tokens`: `argmax`, or `sampling.seeded_draw`.
        token_ids: (eos, pad).
        output_scores: keep the processed scores of each step.

    Returns:
        A dict: "sequences" (N, width + max_new), "steps", "scores" (steps, N, vocab) or an
        empty placeholder.
    """
    eos, pad = token_ids
    rows, total = tf.shape(prompt.ids)[0], prompt.width + prompt.max_new
    sequences = tf.pad(prompt.ids, [[0, 0], [0, prompt.max_new]], constant_values=pad)
    scores_array = tf.TensorArray(
        tf.float32, prompt.max_new, element_shape=(None, logits.shape[-1])
    )

    def condition(step, finished, *_):
        return (step < prompt.max_new) & ~tf.reduce_all(finished)

    def body(step, finished, sequences, logits, cache, scores_array):
        scores = apply_processors(processors, logits, prompt.history(sequences, step))
        if output_scores:
            scores_array = scores_array.write(step, scores)
        tokens = tf.where(finished, pad, choose(scores, step))
        column = prompt.width + step
        sequences = tf.where(at_column(column, total), tokens[:, None], sequences)
        finished |= tf.equal(tokens, eos) | (step + 1 >= prompt.allowed)
        logits, cache = extend(tokens[:, None], column, cache)
        return step + 1, finished, sequences, logits, cache, scores_array

    step, _, sequences, _, _, scores_array = tf.while_loop(
        condition,
        body,
        (tf.constant(0), tf.zeros((rows,), tf.bool), sequences, logits, cache, scores_array),
        maximum_iterations=prompt.max_new,
    )
    # An unwritten TensorArray cannot be stacked: an empty placeholder instead.
    return {
        "sequences": sequences,
        "steps": step,
        "scores": scores_array.stack() if output_scores else tf.zeros((0,)),
    }
