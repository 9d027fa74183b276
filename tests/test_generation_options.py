"""tfblip.generation without BLIP: options, their cache key, processors, and the searches
driven by a toy decoder step (a bigram table), which shows the package needs no model class."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tfblip.generation import processors
from tfblip.generation.decoding import generate
from tfblip.generation.options import GenerationOptions
from tfblip.generation.prompts import shift_rows

EOS, PAD, VOCAB = 1, 0, 6

# Every option that shapes the compiled loop, with options it is valid alongside and a second
# value. A new option must be added here or declared per-call in GenerationOptions.
GRAPH_SHAPING = {
    "max_length": ({}, 6),
    "max_new_tokens": ({}, 4),
    "min_length": ({}, 2),
    "min_new_tokens": ({}, 1),
    "do_sample": ({}, True),
    "num_beams": ({}, 2),
    "temperature": ({"do_sample": True}, 0.5),
    "top_k": ({"do_sample": True}, 3),
    "top_p": ({"do_sample": True}, 0.9),
    "repetition_penalty": ({}, 1.5),
    "no_repeat_ngram_size": ({}, 2),
    "length_penalty": ({"num_beams": 2}, 0.5),
    "early_stopping": ({"num_beams": 2}, True),
    "num_return_sequences": ({"do_sample": True}, 2),
    "output_scores": ({}, True),
    "jit_compile": ({}, True),
}
PER_CALL = {"seed": 7, "return_dict_in_generate": True}


class BigramStep:
    """A toy decoder step: the next token's logits depend on the last token only."""

    eos_token_id, pad_token_id, max_positions = EOS, PAD, 32
    # It reads no variables (its table is a constant, so the trace cache keeps none of its
    # graphs) and its graph depends on nothing else.
    variables, description = (), "bigram"

    def __init__(self, table):
        self.table = tf.constant(table, tf.float32)
        self.functions = {}

    def empty_cache(self, rows, length):
        return ()

    def reorder_cache(self, cache, rows):
        return cache

    def bind(self, encoder_states, encoder_mask):
        def next_logits(tokens, positions, attention_mask, column, cache):
            return tf.gather(self.table, tokens[:, -1]), cache

        return next_logits


def chain_table():
    """Token t prefers t + 1; the last token prefers eos."""
    table = np.full((VOCAB, VOCAB), -5.0)
    for token in range(2, VOCAB - 1):
        table[token, token + 1] = 5.0
    table[VOCAB - 1, EOS] = 5.0
    return table


def run(step, **options):
    states = tf.zeros((1, 1, 1))
    prompt = tf.constant([[2]])
    mask = tf.ones((1, 1), tf.int32)
    return generate(step, states, mask, prompt, mask, GenerationOptions.from_dicts({}, options))


def test_merge_order_and_unknown_names():
    options = GenerationOptions.from_dicts({"num_beams": 3, "max_length": 9}, {"num_beams": 2})
    assert (options.num_beams, options.max_length, options.top_k) == (2, 9, 50)
    with pytest.raises(TypeError, match=r"num_beam'\]; supported: \[.*'num_beams'"):
        GenerationOptions.from_dicts({}, {"num_beam": 3})
    with pytest.raises(TypeError, match="beams"):
        GenerationOptions.from_dicts({"beams": 3}, {})


@pytest.mark.parametrize(
    "options,message",
    [
        ({"max_length": 0}, "max_length must be a positive int, got 0"),
        ({"num_beams": True}, "num_beams must be a positive int, got True"),
        ({"min_new_tokens": -1}, "min_new_tokens must be a non-negative int"),
        ({"top_k": 1.5}, "top_k must be a non-negative int"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"early_stopping": "sometimes"}, "early_stopping must be True, False or 'never'"),
        ({"do_sample": True, "num_beams": 2}, "Beam sampling"),
        ({"seed": 1.0}, "seed must be an int"),
    ],
)
def test_invalid_values_raise(options, message):
    with pytest.raises(ValueError, match=message):
        GenerationOptions(**options)


def test_numpy_ints_are_stored_as_ints():
    # Every int option takes NumPy ints alike and keeps a plain int (JSON-writable export info).
    numpy_ints = {"num_beams": np.int64(2), "max_new_tokens": np.int32(3)}
    numpy_ints.update(min_length=np.int64(1), top_k=np.int16(5), seed=np.int64(7))
    options = GenerationOptions(**numpy_ints)
    assert all(type(getattr(options, name)) is int for name in numpy_ints)
    for name in ("min_length", "seed"):
        with pytest.raises(ValueError, match=name):
            GenerationOptions(**{name: True})


def test_every_option_keys_the_graph_or_is_per_call():
    per_call = {f.name for f in dataclasses.fields(GenerationOptions) if f.metadata}
    assert per_call == set(PER_CALL)
    assert set(GRAPH_SHAPING) == set(GenerationOptions.names()) - per_call
    for name, (base, value) in GRAPH_SHAPING.items():
        before = GenerationOptions(**base).graph_options()
        after = GenerationOptions(**{**base, name: value}).graph_options()
        assert before != after, name
    assert GenerationOptions(**PER_CALL).graph_options() == GenerationOptions()


def test_calls_differing_in_a_graph_option_get_their_own_function():
    step = BigramStep(chain_table())
    run(step, max_new_tokens=3)
    assert len(step.functions) == 1
    for name, (base, value) in GRAPH_SHAPING.items():
        run(step, **{"max_new_tokens": 3, **base})
        known = set(step.functions)
        run(step, **{"max_new_tokens": 3, **base, name: value})
        assert len(set(step.functions) - known) == 1, name
    count = len(step.functions)
    run(step, max_new_tokens=3, **PER_CALL)
    assert len(step.functions) == count


def test_searches_follow_the_toy_model():
    step = BigramStep(chain_table())
    expected = [[2, 3, 4, 5, EOS]]
    np.testing.assert_array_equal(run(step, max_new_tokens=8), expected)
    np.testing.assert_array_equal(run(step, max_new_tokens=8, num_beams=2), expected)
    np.testing.assert_array_equal(run(step, max_new_tokens=8, do_sample=True, top_k=1), expected)
    np.testing.assert_array_equal(run(step, max_new_tokens=2), [[2, 3, 4]])
    # min_new_tokens bans eos, so the last token's second choice follows.
    assert run(step, max_new_tokens=5, min_new_tokens=5)[0, 4] != EOS


def test_processors_follow_transformers_order():
    options = GenerationOptions(
        do_sample=True,
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        repetition_penalty=1.2,
        no_repeat_ngram_size=2,
        min_length=3,
        min_new_tokens=1,
    )
    assert processors.logits_processors(options, EOS) == [
        (processors.repetition_penalty, 1.2),
        (processors.no_repeat_ngram, 2),
        (processors.min_length, 3, EOS),
        (processors.min_new_tokens, 1, EOS),
        (processors.temperature, 0.7),
        (processors.top_k, 5),
        (processors.top_p, 0.9),
    ]
    assert processors.logits_processors(GenerationOptions(temperature=0.7, top_p=0.9), EOS) == []


def test_shift_rows_right_aligns_prompts_and_back():
    ids = tf.constant([[5, 6, 7], [5, 6, 0]])
    offsets = tf.constant([0, 1])
    aligned = shift_rows(ids, -offsets, 3, PAD)
    np.testing.assert_array_equal(aligned, [[5, 6, 7], [PAD, 5, 6]])
    np.testing.assert_array_equal(
        shift_rows(aligned, offsets, 4, EOS), [[5, 6, 7, 1], [5, 6, 1, 1]]
    )
