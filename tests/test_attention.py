"""The one attention layer: its weights, and its cache against the full forward pass."""

import numpy as np
import pytest
import tensorflow as tf

from tfblip.checkpoints import pytorch_named_variables
from tfblip.modeling.attention import MultiHeadAttention, with_room, write_at

HIDDEN, HEADS, IMAGE_WIDTH = 16, 4, 12
BATCH, LENGTH, PREFIX, IMAGE_LENGTH = 2, 7, 3, 5

# name -> (constructor options, the PyTorch parameter names with their shapes)
LAYERS = {
    "vision self-attention": (
        {"fused_qkv": True, "output_projection": True},
        {"qkv": (3 * HIDDEN, HIDDEN), "projection": (HIDDEN, HIDDEN)},
    ),
    "text self-attention": (
        {},
        {"query": (HIDDEN, HIDDEN), "key": (HIDDEN, HIDDEN), "value": (HIDDEN, HIDDEN)},
    ),
    "text cross-attention": (
        {"key_value_size": IMAGE_WIDTH},
        {
            "query": (HIDDEN, HIDDEN),
            "key": (HIDDEN, IMAGE_WIDTH),
            "value": (HIDDEN, IMAGE_WIDTH),
        },
    ),
}


def make_layer(options, seed=0):
    layer = MultiHeadAttention(HIDDEN, HEADS, 0.0, 0.02, name="attention", **options)
    layer.build()
    rng = np.random.default_rng(seed)
    for variable in layer.weights:  # large enough weights that attention is not uniform
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(np.float32))
    return layer


def causal_mask(query_length, key_length, past_length=0):
    """Boolean keep mask (1, 1, query_length, key_length)."""
    query_positions = past_length + np.arange(query_length)
    return (query_positions[:, None] >= np.arange(key_length)[None, :])[None, None]


def run_attention_layer_test(options, names_and_shapes):
    """The checks every configuration of the layer passes.

    * Its weights carry the PyTorch names the checkpoint walk gives them, with PyTorch shapes.
    * Self-attention: a causal forward over the whole text equals prefill + one token at a
      time through fixed-size buffers written at an index (generate()'s cache), and through
      a cache grown by the new token each step (transformers' `past_key_values`).
    * Cross-attention: the keys/values of the image, computed on the first call, reused as
      the cache afterwards give what the full forward gives.
    """
    layer = make_layer(options)
    expected = {f"{name}.{kind}" for name in names_and_shapes for kind in ("weight", "bias")}
    named = pytorch_named_variables(layer)
    assert set(named) == expected
    for name, shape in names_and_shapes.items():
        assert tuple(named[f"{name}.weight"][0].shape) == shape[::-1]  # Keras kernels: (in, out)
        assert tuple(named[f"{name}.bias"][0].shape) == shape[:1]

    rng = np.random.default_rng(1)
    text = rng.normal(size=(BATCH, LENGTH, HIDDEN)).astype(np.float32)
    head_dim = HIDDEN // HEADS
    if "key_value_size" in options:
        image = rng.normal(size=(BATCH, IMAGE_LENGTH, IMAGE_WIDTH)).astype(np.float32)
        keep = np.ones((BATCH, 1, 1, IMAGE_LENGTH), bool)
        keep[1, ..., -2:] = False  # padded image states of the second row
        full, full_probs, cache = layer(text, attention_mask=keep, key_value_states=image)
        assert [tuple(t.shape) for t in cache] == [(BATCH, HEADS, IMAGE_LENGTH, head_dim)] * 2
        pieces = [layer(text[:, :PREFIX], attention_mask=keep, key_value_states=image)]
        for step in range(PREFIX, LENGTH):
            pieces.append(layer(text[:, step : step + 1], attention_mask=keep, cache=cache))
        check_pieces(pieces, full, full_probs)
        return

    full, full_probs, _ = layer(text, attention_mask=causal_mask(LENGTH, LENGTH))
    # generate(): zero buffers of the final length, written at the index of the new tokens.
    zeros = np.zeros((BATCH, HEADS, LENGTH, head_dim), np.float32)
    pieces, cache, start = [], (zeros, zeros), 0
    for stop in [PREFIX, *range(PREFIX + 1, LENGTH + 1)]:
        output = layer(
            text[:, start:stop],
            attention_mask=causal_mask(stop - start, LENGTH, start),
            cache=cache,
            cache_index=start,
        )
        pieces.append(output)
        cache, start = output[2], stop
    check_pieces(pieces, full, full_probs)
    # transformers' past_key_values: the prefix keys/values, then one more position a step.
    pieces = [layer(text[:, :PREFIX], attention_mask=causal_mask(PREFIX, PREFIX))]
    cache = pieces[0][2]
    for step in range(PREFIX, LENGTH):
        output = layer(
            text[:, step : step + 1],
            attention_mask=causal_mask(1, step + 1, step),
            cache=with_room(cache, 1),
            cache_index=step,
        )
        assert [tuple(t.shape) for t in output[2]] == [(BATCH, HEADS, step + 1, head_dim)] * 2
        pieces.append(output)
        cache = output[2]
    check_pieces(pieces, full, full_probs)


def check_pieces(pieces, full, full_probs):
    """The outputs and probabilities of the pieces, concatenated, equal the full forward's.

    A grown cache has fewer keys than the full forward: the probabilities of the keys it
    lacks are zero there (masked), so the pieces' probabilities are padded with zeros.
    """
    outputs = np.concatenate([output for output, _, _ in pieces], axis=1)
    key_length = full_probs.shape[-1]
    probs = np.concatenate(
        [np.pad(p, [(0, 0)] * 3 + [(0, key_length - p.shape[-1])]) for _, p, _ in pieces], axis=2
    )
    np.testing.assert_allclose(outputs, full, atol=1e-5)
    np.testing.assert_allclose(probs, full_probs, atol=1e-6)


@pytest.mark.parametrize("name", LAYERS)
def test_attention_layer(name):
    run_attention_layer_test(*LAYERS[name])


def test_write_at_writes_one_or_several_positions():
    buffer = tf.reshape(tf.range(2 * 6, dtype=tf.float32), (1, 2, 6, 1))
    one = write_at(buffer, -tf.ones((1, 2, 1, 1)), 4)
    several = write_at(buffer, -tf.ones((1, 2, 3, 1)), tf.constant(1))
    expected = buffer.numpy().copy()
    expected[:, :, 4] = -1
    np.testing.assert_array_equal(one, expected)
    expected = buffer.numpy().copy()
    expected[:, :, 1:4] = -1
    np.testing.assert_array_equal(several, expected)


def test_configuration_round_trip():
    layer = MultiHeadAttention(HIDDEN, HEADS, 0.1, 0.02, key_value_size=IMAGE_WIDTH, name="self")
    copy = MultiHeadAttention.from_config(layer.get_config())
    assert copy.get_config() == layer.get_config()
