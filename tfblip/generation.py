"""Text generation for the BLIP decoder: greedy, sampling and beam search.

The whole token loop runs in one `tf.function` (a `tf.while_loop`), optionally compiled with
XLA. It uses plain TensorFlow ops only and static shapes:

- Prompts of different lengths are left-aligned into a fixed-width buffer (right-aligned,
  really: the prompts end in the same column), with per-row position ids, so every row
  generates exactly what it would alone.
- The self-attention keys/values live in buffers of the final length that each step writes
  into; the cross-attention keys/values over the image (or question) states are computed by
  the first (prefill) step and reused.

Options, their defaults and their meaning follow transformers' `generate()`. Beam search
reproduces transformers 5's vectorized beam search (top 2K candidates per step, finished
hypotheses kept apart with their length-normalized scores, its early-stopping heuristics).
"""

import json
import os

import numpy as np
import tensorflow as tf

from tfblip.outputs import register_output

GENERATION_CONFIG_NAME = "generation_config.json"

# With neither max_length nor max_new_tokens set, transformers 5 generates this many new tokens
# (its "model-agnostic default"), within the position embeddings.
DEFAULT_NEW_TOKENS = 20

DEFAULT_OPTIONS = {
    "max_length": None,
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "do_sample": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "length_penalty": 1.0,
    "early_stopping": False,
    "num_return_sequences": 1,
    "output_scores": False,
    "return_dict_in_generate": False,
    "seed": None,
    "jit_compile": False,
}
# Keys of transformers' generation_config.json that describe the model, not the decoding;
# BLIP's own config decides them (generation stops on sep_token_id, as in transformers).
_FILE_KEYS_IGNORED = {
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "sep_token_id",
    "transformers_version",
    "_from_model_config",
    "use_cache",
}

NEG_INF = float("-inf")
# transformers' beam search marks excluded candidates with -1e9 (not -inf) to keep sums finite.
_BEAM_EXCLUDED = -1.0e9

GenerateOutput = register_output(
    "GenerateOutput",
    ["sequences", "scores", "sequences_scores"],
    "Output of generate(return_dict_in_generate=True): the token ids, the processed scores of "
    "each step (output_scores=True) and, for beam search, each sequence's final score.",
)


def read_generation_config(directory):
    """Decoding defaults from a checkpoint's generation_config.json ({} when absent)."""
    path = os.path.join(directory, GENERATION_CONFIG_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except ValueError as error:
        raise ValueError(f"Cannot read {path}: {error}") from error
    return {k: v for k, v in data.items() if k in DEFAULT_OPTIONS}


def resolve_options(defaults, options):
    """Merged, validated options: transformers' defaults < generation_config.json < call."""
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise TypeError(
            f"Unknown generate() option(s) {unknown}; supported: {sorted(DEFAULT_OPTIONS)}."
        )
    merged = {**DEFAULT_OPTIONS, **defaults, **options}
    _validate(merged)
    return merged


def _validate(o):
    def positive_int(name, allow_none=False):
        value = o[name]
        if value is None and allow_none:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")

    positive_int("max_length", allow_none=True)
    positive_int("max_new_tokens", allow_none=True)
    positive_int("num_beams")
    positive_int("num_return_sequences")
    for name in ("min_length", "no_repeat_ngram_size"):
        if not isinstance(o[name], int) or o[name] < 0:
            raise ValueError(f"{name} must be a non-negative int, got {o[name]!r}.")
    if o["min_new_tokens"] is not None and (
        not isinstance(o["min_new_tokens"], int) or o["min_new_tokens"] < 0
    ):
        raise ValueError(f"min_new_tokens must be a non-negative int, got {o['min_new_tokens']!r}.")
    if not o["temperature"] > 0:
        raise ValueError(f"temperature must be > 0, got {o['temperature']!r}.")
    if not 0 < o["top_p"] <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {o['top_p']!r}.")
    if o["top_k"] is not None and (not isinstance(o["top_k"], int) or o["top_k"] < 0):
        raise ValueError(f"top_k must be a non-negative int, got {o['top_k']!r}.")
    if not o["repetition_penalty"] > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {o['repetition_penalty']!r}.")
    if o["early_stopping"] not in (True, False, "never"):
        raise ValueError(
            f"early_stopping must be True, False or 'never', got {o['early_stopping']!r}."
        )
    if o["do_sample"] and o["num_beams"] > 1:
        raise ValueError("Beam sampling (do_sample=True with num_beams > 1) is not supported.")
    if o["num_beams"] > 1 and o["num_return_sequences"] > o["num_beams"]:
        raise ValueError(
            f"num_return_sequences ({o['num_return_sequences']}) cannot exceed num_beams "
            f"({o['num_beams']})."
        )
    if o["num_beams"] == 1 and not o["do_sample"] and o["num_return_sequences"] > 1:
        raise ValueError(
            "Greedy decoding returns one sequence per input; num_return_sequences > 1 needs "
            "do_sample=True or num_beams >= num_return_sequences."
        )
    if o["seed"] is not None and not isinstance(o["seed"], int):
        raise ValueError(f"seed must be an int, got {o['seed']!r}.")


# ----------------------------------------------------------------------------- prompts


def drop_last_token(input_ids, attention_mask):
    """Each row without its last real token (the [SEP] a tokenizer appends), as transformers
    drops the last column; for right-padded rows this drops the row's own [SEP], not a pad."""
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


# ----------------------------------------------------------------------------- processors


def _token_presence(sequences, valid, vocab_size):
    """(N, V) 1.0 where a token occurs among the valid positions of its row."""
    rows = tf.broadcast_to(tf.range(tf.shape(sequences)[0])[:, None], tf.shape(sequences))
    indices = tf.stack([tf.reshape(rows, [-1]), tf.reshape(sequences, [-1])], axis=1)
    counts = tf.scatter_nd(
        indices, tf.reshape(tf.cast(valid, tf.float32), [-1]), (tf.shape(sequences)[0], vocab_size)
    )
    return counts > 0


def _banned_ngram_tokens(sequences, valid, end, n, vocab_size):
    """(N, V) True for tokens that would repeat an n-gram, given tokens before column `end`."""
    length = tf.shape(sequences)[1]
    windows = tf.stack([sequences[:, k : length - n + 1 + k] for k in range(n)], axis=2)
    window_valid = tf.reduce_all(
        tf.stack([valid[:, k : length - n + 1 + k] for k in range(n)], axis=2), axis=2
    )
    starts = tf.range(length - n + 1)
    window_valid &= (starts + n <= end)[None, :]
    last = tf.gather(sequences, end - (n - 1) + tf.range(n - 1), axis=1)  # (N, n-1)
    matches = tf.reduce_all(tf.equal(windows[:, :, : n - 1], last[:, None, :]), axis=2)
    matches &= window_valid
    return _token_presence(windows[:, :, n - 1], matches, vocab_size)


def process_scores(scores, sequences, valid, step, end, lengths, o, eos_token_id):
    """transformers' logits processors, in its order, for the options in use."""
    vocab_size = scores.shape[-1]
    if o["repetition_penalty"] != 1.0:
        penalty = o["repetition_penalty"]
        present = _token_presence(sequences, valid, vocab_size)
        penalized = tf.where(scores < 0, scores * penalty, scores / penalty)
        scores = tf.where(present, penalized, scores)
    if o["no_repeat_ngram_size"] > 0:
        banned = _banned_ngram_tokens(sequences, valid, end, o["no_repeat_ngram_size"], vocab_size)
        scores = tf.where(banned, NEG_INF, scores)
    eos = tf.one_hot(eos_token_id, vocab_size, on_value=True, off_value=False)[None, :]
    if o["min_length"] > 0:
        too_short = (lengths + step < o["min_length"])[:, None]
        scores = tf.where(too_short & eos, NEG_INF, scores)
    if o["min_new_tokens"]:
        scores = tf.where((step < o["min_new_tokens"]) & eos, NEG_INF, scores)
    return scores


def warp_for_sampling(scores, o):
    """Temperature, top-k and top-p, as transformers' sampling warpers."""
    if o["temperature"] != 1.0:
        scores = scores / o["temperature"]
    top_k = min(o["top_k"] or 0, scores.shape[-1])
    if top_k > 0:
        kth = tf.math.top_k(scores, k=top_k).values[:, -1:]
        scores = tf.where(scores < kth, NEG_INF, scores)
    if o["top_p"] < 1.0:
        order = tf.argsort(scores, axis=-1, direction="ASCENDING")
        ascending = tf.gather(scores, order, batch_dims=1)
        cumulative = tf.cumsum(tf.nn.softmax(ascending, axis=-1), axis=-1)
        remove_sorted = cumulative <= 1.0 - o["top_p"]
        remove_sorted = tf.concat([remove_sorted[:, :-1], tf.zeros_like(remove_sorted[:, -1:])], 1)
        inverse = tf.argsort(order, axis=-1)
        remove = tf.gather(remove_sorted, inverse, batch_dims=1)
        scores = tf.where(remove, NEG_INF, scores)
    return scores


# ----------------------------------------------------------------------------- decoding


class _Decoder:
    """One decoder call over a fixed-size cache: (tokens, column) -> last-token logits."""

    def __init__(self, lm_head, encoder_states, encoder_mask, attention_mask, offsets):
        self.lm_head = lm_head
        self.encoder_states = encoder_states
        self.encoder_mask = encoder_mask
        self.attention_mask = attention_mask
        self.offsets = offsets
        self.predictions = lm_head.cls.predictions
        self.projection = self.predictions.decoding_projection(
            lm_head.bert.embeddings.word_embeddings.embeddings
        )

    def empty_cache(self, rows, length):
        config = self.lm_head.config
        heads = config.num_attention_heads
        shape = (rows, heads, length, config.hidden_size // heads)
        zeros = tf.zeros(shape, self.lm_head.compute_dtype)
        return tuple((zeros, zeros) for _ in range(config.num_hidden_layers))

    def __call__(self, tokens, column, cache, with_encoder_states):
        positions = column + tf.range(tf.shape(tokens)[1])[None, :] - self.offsets[:, None]
        outputs = self.lm_head.bert(
            input_ids=tokens,
            attention_mask=self.attention_mask,
            position_ids=tf.maximum(positions, 0),
            encoder_hidden_states=self.encoder_states if with_encoder_states else None,
            encoder_attention_mask=self.encoder_mask,
            past_key_values=cache,
            cache_position=column,
            use_cache=True,
            is_decoder=True,
        )
        # Only the last position's logits are needed, also after the prompt.
        logits = self.predictions.project(outputs.last_hidden_state[:, -1], *self.projection)
        return tf.cast(logits, tf.float32), outputs.past_key_values


def _stacked(scores_array, o):
    # An unwritten TensorArray cannot be stacked: return an empty placeholder instead.
    return scores_array.stack() if o["output_scores"] else tf.zeros((0,))


def _reorder_cache(cache, indices):
    # Beams of one input share their image, so only the self-attention entries move.
    return tuple(
        (tf.gather(k, indices), tf.gather(v, indices), *layer[2:])
        for layer in cache
        for k, v in [layer[:2]]
    )


def _greedy_or_sample(
    decoder, ids, mask, lengths, allowed, prompt_width, max_new, o, ids_cfg, seed
):
    eos, pad = ids_cfg["eos"], ids_cfg["pad"]
    rows = tf.shape(ids)[0]
    total = prompt_width + max_new
    sequences = tf.concat([ids, tf.fill((rows, max_new), pad)], axis=1)
    valid = tf.concat([tf.cast(mask, tf.bool), tf.zeros((rows, max_new), tf.bool)], axis=1)
    logits, cache = decoder(ids, 0, decoder.empty_cache(rows, total), with_encoder_states=True)
    vocab_size = logits.shape[-1]
    scores_array = tf.TensorArray(tf.float32, size=max_new, element_shape=(None, vocab_size))
    finished = tf.zeros((rows,), tf.bool)

    def condition(step, finished, *_):
        return (step < max_new) & ~tf.reduce_all(finished)

    def body(step, finished, sequences, valid, logits, cache, scores_array):
        column = prompt_width + step
        scores = process_scores(logits, sequences, valid, step, column, lengths, o, eos)
        if o["do_sample"]:
            scores = warp_for_sampling(scores, o)
            step_seed = tf.stack([seed, tf.cast(step, tf.int64)])
            draw = tf.random.stateless_categorical(scores, 1, seed=step_seed)
            tokens = tf.cast(draw[:, 0], tf.int32)
        else:
            tokens = tf.argmax(scores, axis=-1, output_type=tf.int32)
        if o["output_scores"]:
            scores_array = scores_array.write(step, scores)
        tokens = tf.where(finished, pad, tokens)
        column_mask = tf.one_hot(column, total, on_value=True, off_value=False)[None, :]
        sequences = tf.where(column_mask, tokens[:, None], sequences)
        valid = valid | column_mask
        finished = finished | tf.equal(tokens, eos) | (step + 1 >= allowed)
        logits, cache = decoder(tokens[:, None], column, cache, with_encoder_states=False)
        return step + 1, finished, sequences, valid, logits, cache, scores_array

    step, _, sequences, _, _, _, scores_array = tf.while_loop(
        condition,
        body,
        (tf.constant(0), finished, sequences, valid, logits, cache, scores_array),
        maximum_iterations=max_new,
    )
    return {"sequences": sequences, "steps": step, "scores": _stacked(scores_array, o)}


def _beam_fill(ids_cfg):
    # transformers fills unwritten beam positions with `pad_token_id or eos_token_id`: a pad
    # id of 0 counts as unset, so BLIP's beam outputs end in [SEP]s.
    return ids_cfg["pad"] or ids_cfg["eos"]


def _beam_search(decoder, ids, mask, lengths, allowed, prompt_width, max_new, o, ids_cfg):
    eos = ids_cfg["eos"]
    beams = o["num_beams"]
    keep = 2 * beams  # transformers: max(2, 1 + number of eos tokens) * num_beams
    rows = tf.shape(ids)[0]
    batch = rows // beams
    total = prompt_width + max_new
    length_penalty, early_stopping = o["length_penalty"], o["early_stopping"]
    fill = _beam_fill(ids_cfg)

    def unflatten(x):
        return tf.reshape(x, tf.concat([[batch, beams], tf.shape(x)[1:]], 0))

    def flatten(x):
        return tf.reshape(x, tf.concat([[rows], tf.shape(x)[2:]], 0))

    running = unflatten(tf.concat([ids, tf.fill((rows, max_new), fill)], axis=1))
    valid = unflatten(tf.concat([tf.cast(mask, tf.bool), tf.zeros((rows, max_new), tf.bool)], 1))
    allowed = unflatten(allowed)[:, :1]  # (B, 1): per input, shared by its beams
    running_scores = tf.tile(
        tf.constant([[0.0] + [_BEAM_EXCLUDED] * (beams - 1)], tf.float32), [batch, 1]
    )
    state = {
        "running": running,
        "valid": valid,
        "running_scores": running_scores,
        "sequences": running,
        "beam_scores": tf.fill((batch, beams), _BEAM_EXCLUDED),
        "generated": tf.zeros((batch, beams), tf.int32),
        "finished": tf.zeros((batch, beams), tf.bool),
        "improvable": tf.ones((batch, 1), tf.bool),
        "all_hit": tf.constant(False),
    }
    logits, cache = decoder(ids, 0, decoder.empty_cache(rows, total), with_encoder_states=True)
    vocab_size = logits.shape[-1]
    scores_array = tf.TensorArray(tf.float32, size=max_new, element_shape=(None, vocab_size))
    top_beam_mask = tf.constant([True] * beams + [False] * (keep - beams))[None, :]

    def gather_beams(x, indices):
        return tf.gather(x, indices, batch_dims=1)

    def condition(step, state, logits, cache, scores_array):
        open_beam = ~(tf.reduce_all(state["finished"]) & (early_stopping is True))
        return (step < max_new) & tf.reduce_any(state["improvable"]) & open_beam & ~state["all_hit"]

    def body(step, state, logits, cache, scores_array):
        column = prompt_width + step
        flat_running, flat_valid = flatten(state["running"]), flatten(state["valid"])
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        log_probs = process_scores(
            log_probs, flat_running, flat_valid, step, column, lengths, o, eos
        )
        if o["output_scores"]:
            scores_array = scores_array.write(step, log_probs)
        accumulated = unflatten(log_probs) + state["running_scores"][:, :, None]
        accumulated = tf.reshape(accumulated, (batch, beams * vocab_size))
        topk_scores, topk_indices = tf.math.top_k(accumulated, k=keep)
        parents = topk_indices // vocab_size
        tokens = topk_indices % vocab_size
        column_mask = tf.one_hot(column, total, on_value=True, off_value=False)[None, None, :]
        candidates = tf.where(
            column_mask, tokens[:, :, None], gather_beams(state["running"], parents)
        )
        candidates_valid = gather_beams(state["valid"], parents) | column_mask
        hits = tf.equal(tokens, eos) | (step + 1 >= allowed)

        # The best `beams` candidates that did not finish keep running.
        running_candidates = topk_scores + tf.cast(hits, tf.float32) * _BEAM_EXCLUDED
        next_indices = tf.math.top_k(running_candidates, k=beams).indices
        running = gather_beams(candidates, next_indices)
        running_valid = gather_beams(candidates_valid, next_indices)
        running_scores = gather_beams(running_candidates, next_indices)
        running_parents = gather_beams(parents, next_indices)

        # Candidates among the top `beams` that finished compete with the finished ones.
        just_finished = hits & top_beam_mask
        normalized = topk_scores / tf.cast(step + 1, tf.float32) ** length_penalty
        if early_stopping is True:
            batch_full = tf.reduce_all(state["finished"], axis=1, keepdims=True)
            normalized += tf.cast(batch_full, tf.float32) * _BEAM_EXCLUDED
        normalized += tf.cast(~state["improvable"], tf.float32) * _BEAM_EXCLUDED
        normalized += tf.cast(~just_finished, tf.float32) * _BEAM_EXCLUDED
        merged_sequences = tf.concat([state["sequences"], candidates], axis=1)
        merged_scores = tf.concat([state["beam_scores"], normalized], axis=1)
        merged_generated = tf.concat([state["generated"], tf.fill((batch, keep), step + 1)], axis=1)
        merged_finished = tf.concat([state["finished"], just_finished], axis=1)
        best = tf.math.top_k(merged_scores, k=beams).indices
        beam_scores = gather_beams(merged_scores, best)
        finished = gather_beams(merged_finished, best)

        # transformers' heuristic: can a running beam still beat the worst finished one?
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = tf.cast(allowed, tf.float32)
        else:
            best_length = tf.cast(step + 1, tf.float32)
        best_running = running_scores[:, :1] / best_length**length_penalty
        worst_finished = tf.where(
            tf.reduce_all(finished, axis=1, keepdims=True),
            tf.reduce_min(beam_scores, axis=1, keepdims=True),
            _BEAM_EXCLUDED,
        )
        improvable = state["improvable"] & tf.reduce_any(
            best_running > worst_finished, axis=1, keepdims=True
        )
        new_state = {
            "running": running,
            "valid": running_valid,
            "running_scores": running_scores,
            "sequences": gather_beams(merged_sequences, best),
            "beam_scores": beam_scores,
            "generated": gather_beams(merged_generated, best),
            "finished": finished,
            "improvable": improvable,
            "all_hit": tf.reduce_all(hits),
        }
        flat_parents = tf.reshape(running_parents + tf.range(batch)[:, None] * beams, [-1])
        cache = _reorder_cache(cache, flat_parents)
        next_tokens = tf.reshape(gather_beams(tokens, next_indices), (rows, 1))
        logits, cache = decoder(next_tokens, column, cache, with_encoder_states=False)
        return step + 1, new_state, logits, cache, scores_array

    step, state, _, _, scores_array = tf.while_loop(
        condition,
        body,
        (tf.constant(0), state, logits, cache, scores_array),
        maximum_iterations=max_new,
    )
    returned = o["num_return_sequences"]
    generated = state["generated"][:, :returned]
    return {
        "sequences": tf.reshape(state["sequences"][:, :returned], (-1, total)),
        "sequences_scores": tf.reshape(state["beam_scores"][:, :returned], [-1]),
        "generated": tf.reshape(generated, [-1]),
        "steps": step,
        "scores": _stacked(scores_array, o),
    }


def _allowed_new_tokens(lengths, o, max_positions):
    """(N,) how many tokens each row may add: max_new_tokens, else max_length minus the prompt,
    else transformers' default of 20 within the position embeddings."""
    if o["max_new_tokens"] is not None:
        return tf.fill(tf.shape(lengths), o["max_new_tokens"])
    if o["max_length"] is not None:
        return o["max_length"] - lengths
    return tf.minimum(DEFAULT_NEW_TOKENS, max_positions - lengths)


def decode(lm_head, encoder_states, encoder_mask, input_ids, attention_mask, o, seed, max_new=None):
    """The whole decoding after the encoders, as TensorFlow ops (traceable, no Python values).

    `input_ids` (B, P) are prompts already starting with bos, without [SEP], right-padded
    under `attention_mask`; `encoder_states` (B, S, D) are what the decoder cross-attends to,
    `encoder_mask` (B, S) their mask; `seed` an int64 scalar for sampling. `max_new`: the
    longest continuation as a Python int (static shapes, as XLA needs), or None to take it
    from the data in the graph (SavedModel export). Returns a dict: "sequences" laid out as
    transformers does (each row's prompt, its generated tokens, then padding; the columns
    from "width" on are padding to cut), "steps", "scores" (steps, rows, vocab) when
    output_scores, and "sequences_scores" for beam search.
    """
    text_config = lm_head.config
    ids_cfg = {"eos": int(text_config.sep_token_id), "pad": int(text_config.pad_token_id or 0)}
    ids, mask, offsets = align_right(
        tf.cast(input_ids, tf.int32), tf.cast(attention_mask, tf.int32), ids_cfg["pad"]
    )
    lengths = tf.reduce_sum(mask, axis=1)
    allowed = _allowed_new_tokens(lengths, o, text_config.max_position_embeddings)
    if max_new is None:
        max_new = tf.reduce_max(allowed)
        tf.debugging.assert_positive(
            max_new, message="The prompt leaves no room to generate within max_length."
        )
    allowed = tf.maximum(allowed, 1)
    prompt_width = tf.shape(ids)[1]

    copies = o["num_beams"] if o["num_beams"] > 1 else o["num_return_sequences"]

    def expand(x):
        return tf.repeat(x, copies, axis=0)

    mask = expand(mask)
    new_columns = tf.ones((tf.shape(mask)[0], max_new), tf.int32)
    decoder = _Decoder(
        lm_head,
        expand(tf.cast(encoder_states, lm_head.compute_dtype)),
        expand(tf.cast(encoder_mask, tf.int32)),
        tf.concat([mask, new_columns], axis=1),
        expand(offsets),
    )
    common = (decoder, expand(ids), mask, expand(lengths), expand(allowed))
    common += (prompt_width, max_new, o, ids_cfg)
    if o["num_beams"] > 1:
        result = _beam_search(*common)
        result["width"] = prompt_width + tf.reduce_max(result["generated"])
        fill = _beam_fill(ids_cfg)
        returned = o["num_return_sequences"]
    else:
        result = _greedy_or_sample(*common, seed)
        result["width"] = prompt_width + result["steps"]
        fill = ids_cfg["pad"]
        returned = copies
    # Laid out at the full width, a static shape for XLA; callers cut it to "width".
    result["sequences"] = _to_transformers_layout(
        result["sequences"], tf.repeat(offsets, returned, axis=0), prompt_width + max_new, fill
    )
    return result


_STATIC_KEYS = (
    "do_sample",
    "num_beams",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "length_penalty",
    "early_stopping",
    "num_return_sequences",
    "min_length",
    "min_new_tokens",
    "max_length",
    "max_new_tokens",
    "output_scores",
)


def _compiled(lm_head, o, max_new):
    """One tf.function per decoding setup, kept on the model so repeated calls reuse it."""
    cache = lm_head.__dict__.setdefault("_tfblip_generate_functions", {})
    key = (tuple(o[k] for k in _STATIC_KEYS), o["jit_compile"], max_new)
    if key not in cache:

        def run(encoder_states, encoder_mask, input_ids, attention_mask, seed):
            return decode(
                lm_head, encoder_states, encoder_mask, input_ids, attention_mask, o, seed, max_new
            )

        cache[key] = tf.function(run, jit_compile=o["jit_compile"])
    return cache[key]


def generate(lm_head, encoder_states, encoder_mask, input_ids, attention_mask, o):
    """`decode` run eagerly: checks the prompt leaves room, picks a seed, returns what
    transformers' generate returns (ids, or a GenerateOutput with return_dict_in_generate)."""
    lengths = tf.reduce_sum(tf.cast(attention_mask, tf.int32), axis=1)
    allowed = _allowed_new_tokens(lengths, o, lm_head.config.max_position_embeddings)
    max_new = int(tf.reduce_max(allowed))
    if max_new < 1:
        raise ValueError(
            f"The prompt ({int(tf.reduce_max(lengths))} tokens with bos) leaves no room to "
            f"generate (max_length={o['max_length']}); raise max_length or pass max_new_tokens."
        )
    # Checked here, once: inside the decoding loop a position past the table would fail as a
    # TensorFlow gather error.
    max_positions = lm_head.config.max_position_embeddings
    needed = int(tf.reduce_max(lengths + allowed))
    if needed > max_positions:
        raise ValueError(
            f"Generating {max_new} tokens (max_new_tokens={o['max_new_tokens']}, "
            f"max_length={o['max_length']}) after the prompt ({int(tf.reduce_max(lengths))} "
            f"tokens with bos) needs {needed} positions, but the model has {max_positions} "
            "position embeddings (max_position_embeddings); lower max_new_tokens or "
            "max_length, or shorten the prompt."
        )
    seed = o["seed"] if o["seed"] is not None else int(np.random.randint(0, 2**31 - 1))
    result = _compiled(lm_head, o, max_new)(
        encoder_states,
        encoder_mask,
        tf.cast(input_ids, tf.int32),
        tf.cast(attention_mask, tf.int32),
        tf.constant(seed, tf.int64),
    )
    sequences = result["sequences"][:, : int(result["width"])]
    if not o["return_dict_in_generate"]:
        return sequences
    scores = None
    if o["output_scores"]:
        steps = int(result["steps"])
        scores = tuple(tf.unstack(result["scores"][:steps], num=steps))
    return GenerateOutput(
        sequences=sequences,
        scores=scores,
        sequences_scores=result.get("sequences_scores") if o["output_scores"] else None,
    )


def _to_transformers_layout(sequences, offsets, width, fill):
    """Rows start with their prompt (no left padding) and are cut/padded to `width`."""
    source = tf.range(width)[None, :] + offsets[:, None]
    inside = source < tf.shape(sequences)[1]
    moved = tf.gather(sequences, tf.minimum(source, tf.shape(sequences)[1] - 1), batch_dims=1)
    return tf.where(inside, moved, fill)
