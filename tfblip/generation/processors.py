"""Logits processors as small objects, in transformers' order, applied by one function.

Each processor maps (N, vocab) scores and the decoding `History` to new scores, as
transformers' LogitsProcessor / LogitsWarper classes of the same names do.
"""

import dataclasses
from typing import NamedTuple

import tensorflow as tf

NEG_INF = float("-inf")


class History(NamedTuple):
    """What processors see of the decoding so far.

    sequences / valid: (N, T) tokens and where they are real; step: tokens generated so far;
    column: where the next token goes; prompt_lengths: (N,) real prompt tokens per row.
    """

    sequences: tf.Tensor
    valid: tf.Tensor
    step: tf.Tensor
    column: tf.Tensor
    prompt_lengths: tf.Tensor


def _token_presence(sequences, valid, vocab_size):
    """(N, V) True where a token occurs among the valid positions of its row."""
    rows = tf.broadcast_to(tf.range(tf.shape(sequences)[0])[:, None], tf.shape(sequences))
    indices = tf.stack([tf.reshape(rows, [-1]), tf.reshape(sequences, [-1])], axis=1)
    counts = tf.scatter_nd(
        indices, tf.reshape(tf.cast(valid, tf.float32), [-1]), (tf.shape(sequences)[0], vocab_size)
    )
    return counts > 0


def _eos_column(eos_token_id, vocab_size):
    return tf.one_hot(eos_token_id, vocab_size, on_value=True, off_value=False)[None, :]


@dataclasses.dataclass(frozen=True)
class RepetitionPenalty:
    """Divides positive (multiplies negative) scores of tokens already in the row."""

    penalty: float

    def __call__(self, scores, history):
        present = _token_presence(history.sequences, history.valid, scores.shape[-1])
        penalized = tf.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return tf.where(present, penalized, scores)


@dataclasses.dataclass(frozen=True)
class NoRepeatNGram:
    """Bans the tokens that would repeat an n-gram of the row."""

    size: int

    def __call__(self, scores, history):
        n, end, sequences = self.size, history.column, history.sequences
        length = tf.shape(sequences)[1]
        windows = tf.stack([sequences[:, k : length - n + 1 + k] for k in range(n)], axis=2)
        window_valid = tf.reduce_all(
            tf.stack([history.valid[:, k : length - n + 1 + k] for k in range(n)], axis=2), axis=2
        )
        window_valid &= (tf.range(length - n + 1) + n <= end)[None, :]
        last = tf.gather(sequences, end - (n - 1) + tf.range(n - 1), axis=1)  # (N, n-1)
        matches = tf.reduce_all(tf.equal(windows[:, :, : n - 1], last[:, None, :]), axis=2)
        banned = _token_presence(windows[:, :, n - 1], matches & window_valid, scores.shape[-1])
        return tf.where(banned, NEG_INF, scores)


@dataclasses.dataclass(frozen=True)
class MinLength:
    """Bans eos while a row (prompt included) is shorter than `length`."""

    length: int
    eos_token_id: int

    def __call__(self, scores, history):
        too_short = (history.prompt_lengths + history.step < self.length)[:, None]
        eos = _eos_column(self.eos_token_id, scores.shape[-1])
        return tf.where(too_short & eos, NEG_INF, scores)


@dataclasses.dataclass(frozen=True)
class MinNewTokens:
    """Bans eos until `count` tokens were generated."""

    count: int
    eos_token_id: int

    def __call__(self, scores, history):
        eos = _eos_column(self.eos_token_id, scores.shape[-1])
        return tf.where((history.step < self.count) & eos, NEG_INF, scores)


@dataclasses.dataclass(frozen=True)
class Temperature:
    """Divides the scores by the temperature (a sampling warper)."""

    temperature: float

    def __call__(self, scores, history):
        return scores / self.temperature


@dataclasses.dataclass(frozen=True)
class TopK:
    """Keeps the k best scores of each row (a sampling warper)."""

    k: int

    def __call__(self, scores, history):
        kth = tf.math.top_k(scores, k=min(self.k, scores.shape[-1])).values[:, -1:]
        return tf.where(scores < kth, NEG_INF, scores)


@dataclasses.dataclass(frozen=True)
class TopP:
    """Keeps the smallest set of best tokens whose probability reaches p (a sampling warper)."""

    p: float

    def __call__(self, scores, history):
        order = tf.argsort(scores, axis=-1, direction="ASCENDING")
        ascending = tf.gather(scores, order, batch_dims=1)
        cumulative = tf.cumsum(tf.nn.softmax(ascending, axis=-1), axis=-1)
        remove_sorted = cumulative <= 1.0 - self.p
        # The best token always stays.
        remove_sorted = tf.concat([remove_sorted[:, :-1], tf.zeros_like(remove_sorted[:, -1:])], 1)
        remove = tf.gather(remove_sorted, tf.argsort(order, axis=-1), batch_dims=1)
        return tf.where(remove, NEG_INF, scores)


def logits_processors(options, eos_token_id):
    """The processors `options` ask for, in transformers' order.

    Args:
        options: the call's GenerationOptions.
        eos_token_id: the token that ends a row.

    Returns:
        A list of processors; with do_sample, the sampling warpers (temperature, top-k,
        top-p) follow.
    """
    processors = []
    if options.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(options.repetition_penalty))
    if options.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGram(options.no_repeat_ngram_size))
    if options.min_length > 0:
        processors.append(MinLength(options.min_length, eos_token_id))
    if options.min_new_tokens:
        processors.append(MinNewTokens(options.min_new_tokens, eos_token_id))
    if options.do_sample:
        if options.temperature != 1.0:
            processors.append(Temperature(options.temperature))
        if options.top_k:
            processors.append(TopK(options.top_k))
        if options.top_p < 1.0:
            processors.append(TopP(options.top_p))
    return processors


def apply_processors(processors, scores, history):
    """`scores` through each processor in turn."""
    for processor in processors:
        scores = processor(scores, history)
    return scores
