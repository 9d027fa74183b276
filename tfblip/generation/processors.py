"""Logits processors and sampling warpers as small objects, as transformers' classes.

Each maps (N, vocab) scores and the decoding `History` to new scores.
"""

import dataclasses
from typing import NamedTuple

import tensorflow as tf

NEG_INF = float("-inf")


class History(NamedTuple):
    """The decoding so far: (N, T) `sequences` and where they are `valid`, the `step` (tokens
    generated), the `column` the next token goes to, and (N,) `prompt_lengths`."""

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


def _ban_eos(scores, where, eos_token_id):
    eos = tf.one_hot(eos_token_id, scores.shape[-1], on_value=True, off_value=False)[None, :]
    return tf.where(where & eos, NEG_INF, scores)


@dataclasses.dataclass(frozen=True)
class RepetitionPenalty:
    """Divides positive (multiplies negative) scores of the tokens already in the row."""

    penalty: float

    def __call__(self, scores, history):
        present = _token_presence(history.sequences, history.valid, scores.shape[-1])
        penalized = tf.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return tf.where(present, penalized, scores)


@dataclasses.dataclass(frozen=True)
class NoRepeatNGram:
    """Bans the tokens that would repeat an n-gram of the row."""

    n: int

    def __call__(self, scores, history):
        n, sequences, valid = self.n, history.sequences, history.valid
        starts = tf.shape(sequences)[1] - n + 1
        windows = tf.stack([sequences[:, k : starts + k] for k in range(n)], axis=2)
        complete = tf.reduce_all(tf.stack([valid[:, k : starts + k] for k in range(n)], 2), 2)
        complete &= (tf.range(starts) + n <= history.column)[None, :]
        last = tf.gather(sequences, history.column - (n - 1) + tf.range(n - 1), axis=1)
        matches = tf.reduce_all(tf.equal(windows[:, :, : n - 1], last[:, None, :]), axis=2)
        banned = _token_presence(windows[:, :, n - 1], matches & complete, scores.shape[-1])
        return tf.where(banned, NEG_INF, scores)


@dataclasses.dataclass(frozen=True)
class MinLength:
    """Bans eos while a row, prompt included, is shorter than `length`."""

    length: int
    eos_token_id: int

    def __call__(self, scores, history):
        too_short = (history.prompt_lengths + history.step < self.length)[:, None]
        return _ban_eos(scores, too_short, self.eos_token_id)


@dataclasses.dataclass(frozen=True)
class MinNewTokens:
    """Bans eos until `count` tokens were generated."""

    count: int
    eos_token_id: int

    def __call__(self, scores, history):
        return _ban_eos(scores, history.step < self.count, self.eos_token_id)


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
    """Keeps the fewest best tokens whose probabilities reach p (a sampling warper)."""

    p: float

    def __call__(self, scores, history):
        order = tf.argsort(scores, axis=-1, direction="ASCENDING")
        ascending = tf.gather(scores, order, batch_dims=1)
        cumulative = tf.cumsum(tf.nn.softmax(ascending, axis=-1), axis=-1)
        remove = cumulative <= 1.0 - self.p
        remove = tf.concat([remove[:, :-1], tf.zeros_like(remove[:, -1:])], 1)  # keeps the best
        remove = tf.gather(remove, tf.argsort(order, axis=-1), batch_dims=1)
        return tf.where(remove, NEG_INF, scores)


def logits_processors(options, eos_token_id):
    """The processors the GenerationOptions ask for, in transformers' order; with do_sample,
    the sampling warpers (temperature, top-k, top-p) follow."""
    processors = []
    if options.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(options.repetition_penalty))
    if options.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGram(options.no_repeat_ngram_size))
    if options.min_length > 0:
        processors.append(MinLength(options.min_length, eos_token_id))
    if options.min_new_tokens:
        processors.append(MinNewTokens(options.min_new_tokens, eos_token_id))
    if options.do_sample and options.temperature != 1.0:
        processors.append(Temperature(options.temperature))
    if options.do_sample and options.top_k:
        processors.append(TopK(options.top_k))
    if options.do_sample and options.top_p < 1.0:
        processors.append(TopP(options.top_p))
    return processors


def apply_processors(processors, scores, history):
    """`scores` through each processor in turn."""
    for processor in processors:
        scores = processor(scores, history)
    return scores
