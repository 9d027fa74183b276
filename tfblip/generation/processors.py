"""transformers' logits processors and sampling warpers as functions of (N, vocab) scores,
the decoding `History` and their settings."""

import collections

import tensorflow as tf

NEG_INF = float("-inf")


# The decoding so far: (N, T) `sequences` and where they are `valid`, the `step` (tokens
# generated), the `column` the next token goes to, and (N,) `prompt_lengths`.
History = collections.namedtuple("History", "sequences valid step column prompt_lengths")


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


def repetition_penalty(scores, history, penalty):
    """Divides positive (multiplies negative) scores of the tokens already in the row."""
    present = _token_presence(history.sequences, history.valid, scores.shape[-1])
    return tf.where(present, tf.where(scores < 0, scores * penalty, scores / penalty), scores)


def no_repeat_ngram(scores, history, n):
    """Bans the tokens that would repeat an n-gram of the row."""
    sequences, valid = history.sequences, history.valid
    starts = tf.shape(sequences)[1] - n + 1
    windows = tf.stack([sequences[:, k : starts + k] for k in range(n)], axis=2)
    complete = tf.reduce_all(tf.stack([valid[:, k : starts + k] for k in range(n)], 2), 2)
    complete &= (tf.range(starts) + n <= history.column)[None, :]
    last = tf.gather(sequences, history.column - (n - 1) + tf.range(n - 1), axis=1)
    matches = tf.reduce_all(tf.equal(windows[:, :, : n - 1], last[:, None, :]), axis=2)
    banned = _token_presence(windows[:, :, n - 1], matches & complete, scores.shape[-1])
    return tf.where(banned, NEG_INF, scores)


def min_length(scores, history, length, eos_token_id):
    """Bans eos while a row, prompt included, is shorter than `length`."""
    too_short = (history.prompt_lengths + history.step < length)[:, None]
    return _ban_eos(scores, too_short, eos_token_id)


def min_new_tokens(scores, history, count, eos_token_id):
    """Bans eos until `count` tokens were generated."""
    return _ban_eos(scores, history.step < count, eos_token_id)


def temperature(scores, history, value):
    """Divides the scores by the temperature (a sampling warper)."""
    return scores / value


def top_k(scores, history, k):
    """Keeps the k best scores of each row (a sampling warper)."""
    kth = tf.math.top_k(scores, k=min(k, scores.shape[-1])).values[:, -1:]
    return tf.where(scores < kth, NEG_INF, scores)


def top_p(scores, history, p):
    """Keeps the fewest best tokens whose probabilities reach p (a sampling warper)."""
    order = tf.argsort(scores, axis=-1, direction="ASCENDING")
    cumulative = tf.cumsum(tf.nn.softmax(tf.gather(scores, order, batch_dims=1)), axis=-1)
    remove = cumulative <= 1.0 - p
    remove = tf.concat([remove[:, :-1], tf.zeros_like(remove[:, -1:])], 1)  # keeps the best
    remove = tf.gather(remove, tf.argsort(order, axis=-1), batch_dims=1)
    return tf.where(remove, NEG_INF, scores)


def logits_processors(options, eos_token_id):
    """The (function, *settings) the GenerationOptions ask for, in transformers' order; with
    do_sample, the sampling warpers (temperature, top-k, top-p) follow."""
    sample = options.do_sample
    wanted = [
        (options.repetition_penalty != 1.0, repetition_penalty, options.repetition_penalty),
        (options.no_repeat_ngram_size > 0, no_repeat_ngram, options.no_repeat_ngram_size),
        (options.min_length > 0, min_length, options.min_length, eos_token_id),
        (bool(options.min_new_tokens), min_new_tokens, options.min_new_tokens, eos_token_id),
        (sample and options.temperature != 1.0, temperature, options.temperature),
        (sample and bool(options.top_k), top_k, options.top_k),
        (sample and options.top_p < 1.0, top_p, options.top_p),
    ]
    return [tuple(processor) for used, *processor in wanted if used]


def apply_processors(processors, scores, prompt, sequences, step):
    """`scores` through each processor in turn, seeing the (N, width + max_new) `sequences`
    after `step` new tokens: every column the loop wrote is real (as in transformers)."""
    column = prompt.width + step
    positions = tf.range(tf.shape(sequences)[1])[None, :]
    # Each row's prompt ends where the generated tokens start, at column `width`.
    valid = (positions >= prompt.width - prompt.lengths[:, None]) & (positions < column)
    history = History(sequences, valid, step, column, prompt.lengths)
    for function, *settings in processors:
        scores = function(scores, history, *settings)
    return scores
