"""Prompt layout: BLIP's prompt preparation, and the right-aligned rows decoding works on:
prompts end in the same column (with per-row position ids), so each row decodes as alone."""

import collections

import tensorflow as tf

# Right-aligned prompts, one row per beam or returned sequence: the (N, width + max_new)
# decoding `buffer` (the prompts, then filling), (N,) prompt `lengths` and `allowed` new
# tokens, and the `width` and `max_new` columns.
Prompt = collections.namedtuple("Prompt", "buffer lengths allowed width max_new")


def drop_last_token(input_ids, attention_mask):
    """(ids, mask) without each row's last real token, the [SEP] a tokenizer appends (as
    transformers drops the last column, but right-padded rows lose their [SEP], not a pad)."""
    lengths = tf.reduce_sum(tf.cast(attention_mask, tf.int32), axis=1) - 1
    width = tf.shape(input_ids)[1] - 1
    mask = tf.cast(tf.range(width)[None, :] < lengths[:, None], tf.int32)
    return input_ids[:, :-1] * mask, mask


def shift_rows(rows, shifts, width, fill):
    """(N, width): column j of row i holds `rows[i, j + shifts[i]]`, or `fill` outside `rows`
    (negative shifts move right-padded prompts to the end of their columns)."""
    source = tf.range(width)[None, :] + shifts[:, None]
    inside = (source >= 0) & (source < tf.shape(rows)[1])
    moved = tf.gather(rows, tf.clip_by_value(source, 0, tf.shape(rows)[1] - 1), batch_dims=1)
    return tf.where(inside, moved, fill)
