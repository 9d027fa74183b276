"""One multi-head attention for both towers, with one key/value cache layout.

A cache is (keys, values), each (B, heads, L, head_dim). Given a write index, the new
keys/values are written into these fixed-size buffers there (decoder self-attention; a mask
hides what is not written yet). Without one, the cache is used as it is and no keys/values
are computed (the image's cross-attention keys/values, computed on the first decoding call).
"""

import keras
import tensorflow as tf

from tfblip.modeling.common import dense, masked_softmax


def write_at(buffer, states, index):
    """`buffer` with `states` written at positions index..index+T-1.

    A one-hot blend instead of a scatter keeps the graph to plain, XLA-friendly ops; the
    untouched entries are multiplied by exactly 1 and the written ones by exactly 0.

    Args:
        buffer: cached keys or values, (B, heads, L, head_dim).
        states: new keys or values, (B, heads, T, head_dim).
        index: position of the first new entry: a Python int or an int32 scalar tensor.

    Returns:
        The updated buffer, (B, heads, L, head_dim).
    """
    length = tf.shape(buffer)[2]
    if states.shape[2] == 1:  # one decoding step: a single select
        at_index = tf.equal(tf.range(length), index)[None, None, :, None]
        return tf.where(at_index, states, buffer)
    positions = index + tf.range(tf.shape(states)[2])
    one_hot = tf.one_hot(positions, length, dtype=buffer.dtype)  # (T, L)
    written = tf.einsum("tl,bhtd->bhld", one_hot, states)
    keep = 1.0 - tf.reduce_sum(one_hot, axis=0)
    return buffer * keep[None, None, :, None] + written


def with_room(cache, new_length):
    """(keys, values), each (B, heads, L, head_dim), with `new_length` zero positions appended
    to write new keys/values into.

    Args:
        cache: (keys, values).
        new_length: how many positions to append.

    Returns:
        (keys, values), each (B, heads, L + new_length, head_dim).
    """
    room = [[0, 0], [0, 0], [0, new_length], [0, 0]]
    return tuple(tf.pad(states, room) for states in cache)


class MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention over several heads, with an optional key/value cache.

    Sublayers are named after the PyTorch modules they mirror, so checkpoints map by name.

    Args:
        hidden_size: width of the queries' input and of the output.
        num_heads: number of attention heads.
        dropout_rate: dropout on the attention probabilities while training.
        initializer_range: standard deviation of the projections' initial kernels.
        key_value_size: width of the keys' and values' input when it differs from
            hidden_size (cross-attention reads the image states).
        fused_qkv: one `qkv` projection (vision) instead of `query`, `key` and `value`.
        output_projection: end with a `projection` Dense (vision).
        **kwargs: Keras layer arguments (`name`, `dtype`).
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
        self.dropout_rate = dropout_rate
        self.initializer_range = initializer_range
        self.key_value_size = key_value_size
        self.fused_qkv = fused_qkv
        self.output_projection = output_projection

        def projection(units, name):
            return dense(units, name, initializer_range, self.dtype_policy)

        # Unused projections stay None: attribute names are also the `.keras` weight paths.
        self.qkv = projection(3 * hidden_size, "qkv") if fused_qkv else None
        self.query = None if fused_qkv else projection(hidden_size, "query")
        self.key = None if fused_qkv else projection(hidden_size, "key")
        self.value = None if fused_qkv else projection(hidden_size, "value")
        self.projection = projection(hidden_size, "projection") if output_projection else None
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "dropout_rate": self.dropout_rate,
            "initializer_range": self.initializer_range,
            "key_value_size": self.key_value_size,
            "fused_qkv": self.fused_qkv,
            "output_projection": self.output_projection,
        }

    def build(self, input_shape=None):
        key_value_width = self.key_value_size or self.hidden_size
        if self.fused_qkv:
            self.qkv.build((None, self.hidden_size))
        else:
            self.query.build((None, self.hidden_size))
            self.key.build((None, key_value_width))
            self.value.build((None, key_value_width))
        if self.output_projection:
            self.projection.build((None, self.hidden_size))

    def split_heads(self, states):
        """(B, T, H*D) -> (B, H, T, D)."""
        batch_size = tf.shape(states)[0]
        states = tf.reshape(states, (batch_size, -1, self.num_heads, self.head_dim))
        return tf.transpose(states, (0, 2, 1, 3))

    def _projections(self, hidden_states, key_value_states, needs_key_value):
        """Query, key and value split into heads; key and value None when not needed."""
        if self.fused_qkv:
            return [self.split_heads(t) for t in tf.split(self.qkv(hidden_states), 3, axis=-1)]
        query = self.split_heads(self.query(hidden_states))
        if not needs_key_value:
            return query, None, None
        source = hidden_states if key_value_states is None else key_value_states
        return query, self.split_heads(self.key(source)), self.split_heads(self.value(source))

    def call(
        self,
        hidden_states,
        attention_mask=None,
        key_value_states=None,
        cache=None,
        cache_index=None,
        training=False,
    ):
        """Attends from `hidden_states` to themselves or to `key_value_states`.

        Args:
            hidden_states: the queries' input, (B, T, hidden_size).
            attention_mask: boolean keep mask, broadcastable to (B, heads, T, keys).
            key_value_states: the keys' and values' input (cross-attention), or None.
            cache: None, or (keys, values): buffers to write at `cache_index`, else used as is.
            cache_index: where the new keys/values go in the `cache` buffers.
            training: applies dropout when True.

        Returns:
            (output (B, T, hidden_size), probabilities (B, heads, T, keys), (keys, values)
            attended to: the cache to pass on).
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
        scale = tf.cast(self.head_dim**-0.5, query.dtype)
        single_query = query.shape[2] == 1
        if single_query:
            # One new token per step while decoding: a broadcast product and sum is much
            # cheaper on CPU than oneDNN's batched matmul for such thin shapes.
            scores = tf.reduce_sum(query * key, axis=-1)[:, :, None, :] * scale
        else:
            scores = tf.matmul(query, key, transpose_b=True) * scale
        probs = masked_softmax(scores, attention_mask)
        dropped = self.dropout(probs, training=training)
        if single_query:
            context = tf.reduce_sum(dropped[:, :, 0, :, None] * value, axis=2)[:, :, None, :]
        else:
            context = tf.matmul(dropped, value)
        batch_size = tf.shape(context)[0]
        context = tf.reshape(
            tf.transpose(context, (0, 2, 1, 3)), (batch_size, -1, self.hidden_size)
        )
        if self.output_projection:
            context = self.projection(context)
        return context, probs, (key, value)
