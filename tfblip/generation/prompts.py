"""Prompt layout: BLIP's prompt preparation, and the right-aligned rows decoding works on.

Prompts of different lengths end in the same column of the decoding buffer (with per-row
position ids), so every row generates exactly what it would alone.
"""

from typing import NamedTuple

import tensorflow as tf


class Prompt(NamedTuple):
    """The right-aligned prompts a search starts from (one row per beam or returned sequence).

    ids / mask: (N, width) tokens and their mask; lengths: (N,) real tokens per row; allowed:
    (N,) tokens each row may add; width: the prompt columns; max_new: the generated columns.
    """

    ids: tf.Tensor
    mask: tf.Tensor
    lengths: tf.Tensor
    allowed: tf.Tensor
    width: tf.Tensor
    max_new: object


def drop_last_token(input_ids, attention_mask):
    """Each row without its last real token (the [SEP] a tokenizer appends).

    transformers drops the last column; for right-padded rows this drops the row's own [SEP],
    not a pad.

    Returns:
        (input_ids, attention_mask), one column narrower.
    """
    lengths = tf.reduce_sum(tf.cast(attention_mask, tf.int32), axis=1) - 1
    width = tf.shape(input_ids)[1] - 1
    mask = tf.cast(tf.range(width)[None, :] < lengths[:, None], tf.int32)
    return input_ids[:, :-1] * mask, mask


def align_right(ids, mask, pad_token_id):
    """Moves each row's real tokens to the end of the row: (ids, mask, offsets)."""
    lengths = tf.reduce_sum(mask, axis=1)
    width = tf.shape(ids)[1]
    offsets = width - lengths
    source = tf.range(width)[None, :] - offsets[:, None]
    valid = source >= 0
    moved = tf.gather(ids, tf.maximum(source, 0), batch_dims=1)
    return tf.where(valid, moved, pad_token_id), tf.cast(valid, tf.int32), offsets


def to_transformers_layout(sequences, offsets, width, fill):
    """Rows start with their prompt (no left padding) and are cut or filled to `width`."""
    source = tf.range(width)[None, :] + offsets[:, None]
    inside = source < tf.shape(sequences)[1]
    moved = tf.gather(sequences, tf.minimum(source, tf.shape(sequences)[1] - 1), batch_dims=1)
    return tf.where(inside, moved, fill)


def written_at(column, total):
    """(1, total) True at `column`: where a step writes its tokens."""
    return tf.one_hot(column, total, on_value=True, off_value=False)[None, :]
