"""Prompt layout: BLIP's prompt preparation, and the right-aligned rows decoding works on.

Prompts of different lengths end in the same column of the decoding buffer (with per-row
position ids), so every row generates exactly what it would alone.
"""

from typing import NamedTuple

import tensorflow as tf

from tfblip.generation.processors import History


class Prompt(NamedTuple):
    """Right-aligned prompts, one row per beam or returned sequence: (N, width) `ids` and
    `mask`, (N,) `lengths` and `allowed` new tokens, `width` and `max_new` columns."""

    ids: tf.Tensor
    mask: tf.Tensor
    lengths: tf.Tensor
    allowed: tf.Tensor
    width: tf.Tensor
    max_new: int | tf.Tensor

    def history(self, sequences, step):
        """What processors see of (N, width + max_new) `sequences` after `step` new tokens.

        Every column the loop wrote is real (rows that finished hold padding there, as in
        transformers), so beams of one input share theirs: nothing to carry or reorder.
        """
        column = self.width + step
        positions = tf.range(tf.shape(sequences)[1])
        generated = (positions >= self.width) & (positions < column)
        real_prompt = tf.pad(tf.cast(self.mask, tf.bool), [[0, 0], [0, self.max_new]])
        return History(sequences, real_prompt | generated[None, :], step, column, self.lengths)


def drop_last_token(input_ids, attention_mask):
    """(ids, mask) without each row's last real token (the [SEP] a tokenizer appends).

    transformers drops the last column; for right-padded rows this drops the row's own
    [SEP], not a pad.
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


def at_column(column, total):
    """(1, total) True at `column`, where a step writes its tokens."""
    return tf.one_hot(column, total, on_value=True, off_value=False)[None, :]
