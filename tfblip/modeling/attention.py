"""One multi-head attention for both towers, with one key/value cache layout.

A cache is (keys, values), each (B, heads, L, head_dim). Given a write index, the new
keys/values are written into these fixed-size buffers there (decoder self-attention; a mask
hides what is not written yet). Without one, the cache is used as it is and no keys/values
are computed (the image's cross-attention keys/values, computed on the first decoding call).
"""

import keras
import tensorflow as tf

from tfblip.modeling.common import BuildsSublayers, dense, masked_softmax


def write_at(buffer, states, index):
    """`buffer` (B, heads, L, D) with `states` (B, heads, T, D) written at index..index+T-1.

    Selects between the buffer and the states gathered to their positions: plain ops of
    static shape (XLA compiles them), for any T; a one-hot product would cost a batched
    matmul on every decoding step.
    """
    positions = tf.range(tf.shape(buffer)[2])
    if states.shape[2] == 1:  # one decoding step: a single select
        return tf.where(tf.equal(positions, index)[None, None, :, None], states, buffer)
    new = tf.shape(states)[2]
    written = (positions >= index) & (positions < index + new)
    # Row p of `placed` is states' row p - index (clipped where nothing is written).
    placed = tf.gather(states, tf.clip_by_value(positions - index, 0, new - 1), axis=2)
    return tf.where(written[None, None, :, None], placed, buffer)


def with_room(cache, new_length):
    """The (keys, values) cache with `new_length` zero positions appended to write into."""
    room = [[0, 0], [0, 0], [0, new_length], [0, 0]]
    return tuple(tf.pad(states, room) for states in cache)


class MultiHeadAttention(BuildsSublayers, keras.layers.Layer):
    """Scaled dot-product attention over several heads, with an optional key/value cache.

    `key_value_size` is the keys' input width when it is not hidden_size (cross-attention);
    `fused_qkv` and `output_projection` give the vision tower's `qkv` and `projection`.
    Sublayers are named after the PyTorch modules they mirror, so checkpoints map by name.
    """

    def __init__(
        self,
        hidden_size,
        num_heads,
        dropout_rate,
        initializer_range,
        key_value_size=None,
        fused_qkv=False,
        output_projection=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads

        def projection(units, name, input_size=hidden_size):
            return dense(units, name, initializer_range, self.dtype_policy, input_size=input_size)

        # Unused projections stay None: attribute names are also the `.keras` weight paths.
        key_value_size = key_value_size or hidden_size
        self.qkv = projection(3 * hidden_size, "qkv") if fused_qkv else None
        self.query = None if fused_qkv else projection(hidden_size, "query")
        self.key = None if fused_qkv else projection(hidden_size, "key", key_value_size)
        self.value = None if fused_qkv else projection(hidden_size, "value", key_value_size)
        self.projection = projection(hidden_size, "projection") if output_projection else None
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)

    def split_heads(self, states):
        """(B, T, H*D) -> (B, H, T, D)."""
        batch_size = tf.shape(states)[0]
        # A known length stays known: write_at and the one-query path choose by it.
        length = states.shape[1] if states.shape[1] is not None else -1
        states = tf.reshape(states, (batch_size, length, self.num_heads, self.head_dim))
        return tf.transpose(states, (0, 2, 1, 3))

    def keys_and_values(self, states):
        """(keys, values) of `states` split into heads: the cache a cross-attention reuses."""
        return self.split_heads(self.key(states)), self.split_heads(self.value(states))

    def _projections(self, hidden_states, key_value_states, needs_key_value):
        """Query, key and value split into heads; key and value None when not needed."""
        if self.qkv is not None:
            return [self.split_heads(t) for t in tf.split(self.qkv(hidden_states), 3, axis=-1)]
        query = self.split_heads(self.query(hidden_states))
        if not needs_key_value:
            return query, None, None
        source = hidden_states if key_value_states is None else key_value_states
        return query, *self.keys_and_values(source)

    def _attend(self, query, key, value, attention_mask, training):
        """(context (B, heads, T, D), probabilities) of (B, heads, T, D) queries."""
        scores = tf.matmul(query, key, transpose_b=True) * self._scale(query)
        probs = masked_softmax(scores, attention_mask)
        return tf.matmul(self.dropout(probs, training=training), value), probs

    def _attend_one_query(self, query, key, value, attention_mask, training):
        """`_attend` for a single query per row (T = 1, one decoding step): a broadcast
        product and sum is much cheaper on CPU than oneDNN's batched matmul for such thin
        shapes."""
        query = query[:, :, 0]  # (B, heads, D)
        scores = tf.reduce_sum(query[:, :, None, :] * key, axis=-1) * self._scale(query)
        probs = masked_softmax(scores[:, :, None, :], attention_mask)
        dropped = self.dropout(probs, training=training)
        context = tf.reduce_sum(dropped[:, :, 0, :, None] * value, axis=2)
        return context[:, :, None, :], probs

    def _scale(self, query):
        return tf.cast(self.head_dim**-0.5, query.dtype)

    def call(
        self,
        hidden_states,
        attention_mask=None,
        key_value_states=None,
        cache=None,
        cache_index=None,
        training=False,
    ):
        """Attends from `hidden_states` to themselves or to `key_value_states` (cross).

        `attention_mask` is a boolean keep mask broadcastable to (B, heads, T, keys); `cache`
        is None or (keys, values), written at `cache_index` when given, else used as is.
        Returns (output, probabilities (B, heads, T, keys), the (keys, values) attended to).
        """
        reuse_cache = cache is not None and cache_index is None
        query, key, value = self._projections(
            hidden_states, key_value_states, needs_key_value=not reuse_cache
        )
        if reuse_cache:
            key, value = cache
        elif cache is not None:
            key = write_at(cache[0], key, cache_index)
            value = write_at(cache[1], value, cache_index)
        arguments = (query, key, value, attention_mask, training)
        if query.shape[2] == 1:
            context, probs = self._attend_one_query(*arguments)
        else:
            context, probs = self._attend(*arguments)
        batch_size = tf.shape(context)[0]
        context = tf.reshape(
            tf.transpose(context, (0, 2, 1, 3)), (batch_size, -1, self.hidden_size)
        )
        if self.projection is not None:
            context = self.projection(context)
        return context, probs, (key, value)
