"""Beam search, as transformers 5's vectorized beam search.

Each step keeps the top 2K candidates of the K beams of an input; finished hypotheses are
kept apart with their length-normalized scores, under transformers' early-stopping heuristics.
"""

import tensorflow as tf

from tfblip.generation.processors import History, apply_processors
from tfblip.generation.prompts import written_at

# transformers marks excluded candidates with -1e9 (not -inf) to keep sums finite.
EXCLUDED = -1.0e9


def beam_fill(token_ids):
    """The id of unwritten beam positions: transformers' `pad_token_id or eos_token_id`.

    A pad id of 0 counts as unset, so BLIP's beam outputs end in [SEP]s.
    """
    eos, pad = token_ids
    return pad or eos


def _reorder_cache(cache, indices):
    # Beams of one input share their image, so only the self-attention entries move.
    return tuple(
        (tf.gather(layer[0], indices), tf.gather(layer[1], indices), *layer[2:]) for layer in cache
    )


def beam_search(prompt, logits, cache, extend, processors, token_ids, options):
    """Beam search over rows that hold `options.num_beams` copies of each input.

    Args:
        prompt: the right-aligned `Prompt`, each input repeated num_beams times.
        logits, cache: the prefill step's next-token logits and cache.
        extend: `(tokens (N, 1), column, cache) -> (logits, cache)`.
        processors: the logits processors, applied to the log-probabilities.
        token_ids: (eos, pad) ids.
        options: the GenerationOptions (num_beams, length_penalty, early_stopping,
            num_return_sequences, output_scores).

    Returns:
        A dict: "sequences" (B * returned, width + max_new), "sequences_scores", "generated"
        (tokens each returned sequence generated), "steps", "scores".
    """
    eos = token_ids[0]
    beams = options.num_beams
    length_penalty, early_stopping = options.length_penalty, options.early_stopping
    keep = 2 * beams  # transformers: max(2, 1 + number of eos tokens) * num_beams
    rows = tf.shape(prompt.ids)[0]
    batch = rows // beams
    max_new = prompt.max_new
    total = prompt.width + max_new

    def unflatten(x):
        return tf.reshape(x, tf.concat([[batch, beams], tf.shape(x)[1:]], 0))

    def flatten(x):
        return tf.reshape(x, tf.concat([[rows], tf.shape(x)[2:]], 0))

    def gather_beams(x, indices):
        return tf.gather(x, indices, batch_dims=1)

    running = unflatten(tf.concat([prompt.ids, tf.fill((rows, max_new), beam_fill(token_ids))], 1))
    valid = tf.concat([tf.cast(prompt.mask, tf.bool), tf.zeros((rows, max_new), tf.bool)], 1)
    allowed = unflatten(prompt.allowed)[:, :1]  # (B, 1): per input, shared by its beams
    state = {
        "running": running,
        "valid": unflatten(valid),
        "running_scores": tf.tile(
            tf.constant([[0.0] + [EXCLUDED] * (beams - 1)], tf.float32), [batch, 1]
        ),
        "sequences": running,
        "beam_scores": tf.fill((batch, beams), EXCLUDED),
        "generated": tf.zeros((batch, beams), tf.int32),
        "finished": tf.zeros((batch, beams), tf.bool),
        "improvable": tf.ones((batch, 1), tf.bool),
        "all_hit": tf.constant(False),
    }
    vocab_size = logits.shape[-1]
    scores_array = tf.TensorArray(tf.float32, size=max_new, element_shape=(None, vocab_size))
    top_beam_mask = tf.constant([True] * beams + [False] * (keep - beams))[None, :]

    def condition(step, state, logits, cache, scores_array):
        open_beam = ~(tf.reduce_all(state["finished"]) & (early_stopping is True))
        return (step < max_new) & tf.reduce_any(state["improvable"]) & open_beam & ~state["all_hit"]

    def body(step, state, logits, cache, scores_array):
        column = prompt.width + step
        history = History(
            flatten(state["running"]), flatten(state["valid"]), step, column, prompt.lengths
        )
        log_probs = apply_processors(processors, tf.nn.log_softmax(logits, axis=-1), history)
        if options.output_scores:
            scores_array = scores_array.write(step, log_probs)
        accumulated = unflatten(log_probs) + state["running_scores"][:, :, None]
        accumulated = tf.reshape(accumulated, (batch, beams * vocab_size))
        topk_scores, topk_indices = tf.math.top_k(accumulated, k=keep)
        parents = topk_indices // vocab_size
        tokens = topk_indices % vocab_size
        here = written_at(column, total)[None]
        candidates = tf.where(here, tokens[:, :, None], gather_beams(state["running"], parents))
        candidates_valid = gather_beams(state["valid"], parents) | here
        hits = tf.equal(tokens, eos) | (step + 1 >= allowed)

        # The best `beams` candidates that did not finish keep running.
        running_candidates = topk_scores + tf.cast(hits, tf.float32) * EXCLUDED
        next_indices = tf.math.top_k(running_candidates, k=beams).indices
        running_scores = gather_beams(running_candidates, next_indices)
        running_parents = gather_beams(parents, next_indices)

        # Candidates among the top `beams` that finished compete with the finished ones.
        just_finished = hits & top_beam_mask
        normalized = topk_scores / tf.cast(step + 1, tf.float32) ** length_penalty
        if early_stopping is True:
            batch_full = tf.reduce_all(state["finished"], axis=1, keepdims=True)
            normalized += tf.cast(batch_full, tf.float32) * EXCLUDED
        normalized += tf.cast(~state["improvable"], tf.float32) * EXCLUDED
        normalized += tf.cast(~just_finished, tf.float32) * EXCLUDED
        merged_scores = tf.concat([state["beam_scores"], normalized], axis=1)
        best = tf.math.top_k(merged_scores, k=beams).indices
        beam_scores = gather_beams(merged_scores, best)
        finished = gather_beams(tf.concat([state["finished"], just_finished], axis=1), best)

        # transformers' heuristic: can a running beam still beat the worst finished one?
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = tf.cast(allowed, tf.float32)
        else:
            best_length = tf.cast(step + 1, tf.float32)
        best_running = running_scores[:, :1] / best_length**length_penalty
        worst_finished = tf.where(
            tf.reduce_all(finished, axis=1, keepdims=True),
            tf.reduce_min(beam_scores, axis=1, keepdims=True),
            EXCLUDED,
        )
        improvable = state["improvable"] & tf.reduce_any(
            best_running > worst_finished, axis=1, keepdims=True
        )
        generated = tf.concat([state["generated"], tf.fill((batch, keep), step + 1)], axis=1)
        new_state = {
            "running": gather_beams(candidates, next_indices),
            "valid": gather_beams(candidates_valid, next_indices),
            "running_scores": running_scores,
            "sequences": gather_beams(tf.concat([state["sequences"], candidates], 1), best),
            "beam_scores": beam_scores,
            "generated": gather_beams(generated, best),
            "finished": finished,
            "improvable": improvable,
            "all_hit": tf.reduce_all(hits),
        }
        flat_parents = tf.reshape(running_parents + tf.range(batch)[:, None] * beams, [-1])
        next_tokens = tf.reshape(gather_beams(tokens, next_indices), (rows, 1))
        logits, cache = extend(next_tokens, column, _reorder_cache(cache, flat_parents))
        return step + 1, new_state, logits, cache, scores_array

    step, state, _, _, scores_array = tf.while_loop(
        condition,
        body,
        (tf.constant(0), state, logits, cache, scores_array),
        maximum_iterations=max_new,
    )
    returned = options.num_return_sequences
    return {
        "sequences": tf.reshape(state["sequences"][:, :returned], (-1, total)),
        "sequences_scores": tf.reshape(state["beam_scores"][:, :returned], [-1]),
        "generated": tf.reshape(state["generated"][:, :returned], [-1]),
        "steps": step,
        "scores": scores_array.stack() if options.output_scores else tf.zeros((0,)),
    }
