"""The decoding after the encoders: prompt layout, the token loop, transformers' results.

The loop is one `tf.while_loop` in a `tf.function` (XLA-compilable). The
model is reached through a decoder step such as `tfblip.modeling.decoder_step.DecoderStep`:
`eos_token_id`, `pad_token_id`, `max_positions`, `functions` (the compiled loops, kept as long
as the model), `variables` and `description` (what a traced loop reads, and a JSON-able value
naming everything else its graph depends on: see tfblip.ops.trace_cache),
`empty_cache(rows, length)`, `reorder_cache(cache, rows)` (beam search keeps
the given rows) and `bind(encoder_states, encoder_mask)`, which returns
`next_logits(tokens, positions, attention_mask, column, cache)` -> (float32 logits of the
last token, cache). The cache's layout is the step's own business.
"""

import functools

import numpy as np
import tensorflow as tf

from tfblip.generation.processors import logits_processors
from tfblip.generation.prompts import Prompt, shift_rows
from tfblip.generation.search import beam_search, greedy_search
from tfblip.ops.graph_rewrites import under_lean_graph_rewrites
from tfblip.ops.trace_cache import traced_function
from tfblip.outputs import register_output

# With neither max_length nor max_new_tokens set, transformers 5 generates this many new tokens
# (its "model-agnostic default"), within the position embeddings.
DEFAULT_NEW_TOKENS = 20

GenerateOutput = register_output(
    "GenerateOutput",
    ["sequences", "scores", "sequences_scores"],
    "Output of generate(return_dict_in_generate=True): the token ids, the processed scores of "
    "each step (output_scores=True) and, for beam search, each sequence's final score.",
)


def allowed_new_tokens(lengths, options, max_positions):
    """(N,) how many tokens each row may add: max_new_tokens, else max_length minus the
    prompt, else transformers' default of 20 within the position embeddings."""
    if options.max_new_tokens is not None:
        return tf.fill(tf.shape(lengths), options.max_new_tokens)
    if options.max_length is not None:
        return options.max_length - lengths
    return tf.minimum(DEFAULT_NEW_TOKENS, max_positions - lengths)


def decode(
    step, encoder_states, encoder_mask, input_ids, attention_mask, options, seed, max_new=None
):
    """The whole decoding after the encoders, as TensorFlow ops (traceable, no Python values).

    Args:
        step: the decoder step (see the module docstring).
        encoder_states, encoder_mask: (B, S, D) states the decoder cross-attends to, (B, S).
        input_ids, attention_mask: (B, P) prompts starting with bos, without [SEP], right-padded.
        options: the GenerationOptions.
        seed: an int64 scalar tensor, for sampling.
        max_new: the longest continuation as a Python int (static shapes, as XLA needs), or
            None to take it from the data in the graph (one graph for every prompt length).

    Returns:
        A dict: "sequences" laid out as transformers does, padding from column "width" on;
        "steps"; "scores" (steps, rows, vocab) with output_scores; "sequences_scores" for
        beam search.
    """
    eos, pad = step.eos_token_id, step.pad_token_id
    # transformers fills beam outputs with `pad_token_id or eos_token_id`: a pad id of 0 counts
    # as unset, so BLIP's beam outputs end in [SEP]s.
    fill = (pad or eos) if options.num_beams > 1 else pad
    lengths = tf.reduce_sum(tf.cast(attention_mask, tf.int32), axis=1)
    width = tf.shape(input_ids)[1]
    offsets = width - lengths
    allowed = allowed_new_tokens(lengths, options, step.max_positions)
    if max_new is None:
        max_new = tf.reduce_max(allowed)
        tf.debugging.assert_positive(
            max_new, message="The prompt leaves no room to generate within max_length."
        )
    ids = shift_rows(tf.cast(input_ids, tf.int32), -offsets, width, pad)
    copies = options.num_beams if options.num_beams > 1 else options.num_return_sequences
    # One row per beam or returned sequence.
    ids, lengths, allowed, encoder_states, encoder_mask, row_offsets = (
        tf.repeat(x, copies, axis=0) if copies > 1 else x
        for x in (ids, lengths, tf.maximum(allowed, 1), encoder_states, encoder_mask, offsets)
    )
    buffer = tf.pad(ids, [[0, 0], [0, max_new]], constant_values=fill)
    prompt = Prompt(buffer, lengths, allowed, width, max_new)
    next_logits = step.bind(encoder_states, encoder_mask)
    full_mask = tf.cast(tf.range(width + max_new)[None, :] >= row_offsets[:, None], tf.int32)

    if options.num_beams > 1:
        search = functools.partial(beam_search, reorder_cache=step.reorder_cache)
    else:
        search = greedy_search
    processors = logits_processors(options, eos)
    state, advance, finish = search(prompt, processors, options, (eos, fill), seed)
    cache = step.empty_cache(tf.shape(ids)[0], width + max_new)
    # Without output_scores no TensorArray at all: LiteRT's builtin ops have none of dynamic
    # element shape, and an empty tuple costs nothing in the loop.
    scores = (
        tf.TensorArray(tf.float32, max_new, element_shape=(None, None))
        if options.output_scores
        else ()
    )

    def body(index, tokens, state, cache, scores):
        # The first pass runs the whole prompt, each later one the token chosen last: the
        # decoder appears once in the graph, so it is traced and optimized once.
        column = tf.where(index > 0, width + index - 1, 0)
        positions = column + tf.range(tf.shape(tokens)[1])[None, :] - row_offsets[:, None]
        logits, cache = next_logits(tokens, tf.maximum(positions, 0), full_mask, column, cache)
        state, tokens, cache, index_scores = advance(index, state, logits, cache)
        if options.output_scores:
            scores = scores.write(index, index_scores)
        return index + 1, tokens, state, cache, scores

    loop_vars = (tf.constant(0), ids, state, cache, scores)
    # The tokens go from the prompt's width to one column; every other shape stays as is.
    invariants = tf.nest.map_structure(lambda _: None, loop_vars)
    invariants = (invariants[0], tf.TensorShape([ids.shape[0], None]), *invariants[2:])
    if options.jit_compile:
        # XLA compiles loops over static shapes only: the prompt pass runs before the loop.
        loop_vars, invariants = body(*loop_vars), None
    steps, _, state, _, scores = tf.while_loop(
        lambda index, tokens, state, *_: (index < max_new) & tf.reduce_any(state["open"]),
        body,
        loop_vars,
        shape_invariants=invariants,
        maximum_iterations=max_new,
    )
    result = finish(state, steps)
    # An unwritten TensorArray cannot be stacked: an empty placeholder instead.
    result["scores"] = scores.stack() if options.output_scores else tf.zeros((0,))
    result["steps"], result["width"] = steps, width + result.pop("new")
    # Laid out at the full width, a static shape for XLA; callers cut it to "width".
    if options.num_return_sequences > 1:
        offsets = tf.repeat(offsets, options.num_return_sequences, axis=0)
    result["sequences"] = shift_rows(result["sequences"], offsets, width + max_new, fill)
    return result


def generate(step, encoder_states, encoder_mask, input_ids, attention_mask, options):
    """`decode` run eagerly, returning what transformers' generate returns; one traced loop
    per graph-shaping options (`options.graph_options()`, and with XLA the length) is kept in
    `step.functions`, for any batch size and prompt length.

    Args:
        step, encoder_states, encoder_mask, input_ids, attention_mask, options: as `decode`.

    Returns:
        The int32 token ids, or a GenerateOutput with return_dict_in_generate.

    Raises:
        ValueError: the prompt leaves no room to generate, or needs more positions than the
            model has.
    """
    ids, mask = tf.cast(input_ids, tf.int32), tf.cast(attention_mask, tf.int32)
    lengths = tf.reduce_sum(mask, axis=1)
    allowed = allowed_new_tokens(lengths, options, step.max_positions)
    max_new, prompt_length = int(tf.reduce_max(allowed)), int(tf.reduce_max(lengths))
    if max_new < 1:
        raise ValueError(
            f"The prompt ({prompt_length} tokens with bos) leaves no room to generate "
            f"(max_length={options.max_length}); raise max_length or pass max_new_tokens."
        )
    # Checked here, once: in the loop a position past the table fails as a gather error.
    needed = int(tf.reduce_max(lengths + allowed))
    if needed > step.max_positions:
        raise ValueError(
            f"Generating {max_new} tokens (max_new_tokens={options.max_new_tokens}, "
            f"max_length={options.max_length}) after the prompt ({prompt_length} tokens with "
            f"bos) needs {needed} positions, but the model has {step.max_positions} position "
            "embeddings (max_position_embeddings); lower max_new_tokens or max_length, or "
            "shorten the prompt."
        )
    # XLA needs the longest continuation as a static size; without XLA the loop takes it
    # from the data, so prompts of any length run the same graph.
    static_max_new = max_new if options.jit_compile else None
    key = (options.graph_options(), static_max_new)
    if key not in step.functions:
        graph_options = key[0]

        def run(states, states_mask, ids, mask, seed):
            return decode(step, states, states_mask, ids, mask, graph_options, seed, static_max_new)

        # Any batch size, prompt and encoder length: traced once per options and max_new.
        states = tf.TensorSpec((None, None, encoder_states.shape[-1]), encoder_states.dtype)
        rows = tf.TensorSpec((None, None), tf.int32)
        signature = [states, rows, rows, rows, tf.TensorSpec((), tf.int64)]
        if options.jit_compile:
            function = tf.function(
                run, input_signature=signature, jit_compile=True, autograph=False
            )
        else:
            description = {"step": step.description, "options": repr(graph_options)}
            function = traced_function(run, signature, step.variables, description)
        step.functions[key] = under_lean_graph_rewrites(function)
    seed = options.seed if options.seed is not None else np.random.randint(0, 2**31 - 1)
    seed = tf.constant(seed, tf.int64)
    result = step.functions[key](encoder_states, tf.cast(encoder_mask, tf.int32), ids, mask, seed)
    sequences = result["sequences"][:, : int(result["width"])]
    if not options.return_dict_in_generate:
        return sequences
    if not options.output_scores:
        return GenerateOutput(sequences=sequences)
    scores = tuple(tf.unstack(result["scores"][: int(result["steps"])]))
    sequences_scores = result.get("sequences_scores")
    return GenerateOutput(sequences=sequences, scores=scores, sequences_scores=sequences_scores)
