"""Beam search, as transformers 5's vectorized beam search.

Each step keeps the top 2K candidates of an input's K beams; finished hypotheses are kept
apart with their length-normalized scores, under transformers' early-stopping heuristics.
"""

import tensorflow as tf

from tfblip.generation.processors import apply_processors
from tfblip.generation.prompts import at_column

# transformers marks excluded candidates with -1e9 (not -inf) to keep sums finite.
EXCLUDED = -1.0e9


def beam_fill(token_ids):
    """transformers fills unwritten beam positions with `pad_token_id or eos_token_id`: a pad
    id of 0 counts as unset, so BLIP's beam outputs end in [SEP]s."""
    eos, pad = token_ids
    return pad or eos


def beam_search(prompt, logits, cache, extend, processors, token_ids, options):
    """Beam search over rows holding `options.num_beams` copies of each input.

    Args:
        prompt, logits, cache, extend, processors, token_ids: as for `greedy_search`;
            processors apply to log-probabilities.
        options: the GenerationOptions (num_beams, length_penalty, early_stopping,
            num_return_sequences, output_scores).

    Returns:
        A dict: "sequences" (B * returned, width + max_new), "sequences_scores", "generated"
        (tokens each returned sequence added), "steps", "scores".
    """
    beams = options.num_beams
    length_penalty, early_stopping = options.length_penalty, options.early_stopping
    keep = 2 * beams  # transformers: max(2, 1 + number of eos tokens) * num_beams
    rows = tf.shape(prompt.ids)[0]
    batch, total, vocab_size = rows // beams, prompt.width + prompt.max_new, logits.shape[-1]

    def unflatten(x):
        return tf.reshape(x, tf.concat([[batch, beams], tf.shape(x)[1:]], 0))

    def gather_beams(x, indices):
        return tf.gather(x, indices, batch_dims=1)

    filled = tf.pad(prompt.ids, [[0, 0], [0, prompt.max_new]], constant_values=beam_fill(token_ids))
    allowed = unflatten(prompt.allowed)[:, :1]  # (B, 1): per input, shared by its beams
    first_beam_only = tf.constant([[0.0] + [EXCLUDED] * (beams - 1)], tf.float32)
    state = {
        "running": unflatten(filled),
        "running_scores": tf.tile(first_beam_only, [batch, 1]),
        "sequences": unflatten(filled),
        "beam_scores": tf.fill((batch, beams), EXCLUDED),
        "generated": tf.zeros((batch, beams), tf.int32),
        "finished": tf.zeros((batch, beams), tf.bool),
        "improvable": tf.ones((batch, 1), tf.bool),
        "all_hit": tf.constant(False),
    }
    scores_array = tf.TensorArray(tf.float32, prompt.max_new, element_shape=(None, vocab_size))
    top_beams = tf.constant([True] * beams + [False] * (keep - beams))[None, :]

    def condition(step, state, logits, cache, scores_array):
        open_beam = ~(tf.reduce_all(state["finished"]) & (early_stopping is True))
        within = step < prompt.max_new
        return within & tf.reduce_any(state["improvable"]) & open_beam & ~state["all_hit"]

    def body(step, state, logits, cache, scores_array):
        column = prompt.width + step
        history = prompt.history(tf.reshape(state["running"], (rows, total)), step)
        log_probs = apply_processors(processors, tf.nn.log_softmax(logits, axis=-1), history)
        if options.output_scores:
            scores_array = scores_array.write(step, log_probs)
        accumulated = unflatten(log_probs) + state["running_scores"][:, :, None]
        top_scores, top_indices = tf.math.top_k(
            tf.reshape(accumulated, (batch, beams * vocab_size)), k=keep
        )
        parents, tokens = top_indices // vocab_size, top_indices % vocab_size
        candidates = tf.where(
            at_column(column, total)[None],
            tokens[:, :, None],
            gather_beams(state["running"], parents),
        )
        hits = tf.equal(tokens, token_ids[0]) | (step + 1 >= allowed)

        # The best `beams` candidates that did not finish keep running.
        running_candidates = top_scores + tf.cast(hits, tf.float32) * EXCLUDED
        next_indices = tf.math.top_k(running_candidates, k=beams).indices
        running_scores = gather_beams(running_candidates, next_indices)

        # Candidates among the top `beams` that finished compete with the finished ones.
        just_finished = hits & top_beams
        normalized = top_scores / tf.cast(step + 1, tf.float32) ** length_penalty
        if early_stopping is True:
            batch_full = tf.reduce_all(state["finished"], axis=1, keepdims=True)
            normalized += tf.cast(batch_full, tf.float32) * EXCLUDED
        normalized += tf.cast(~state["improvable"], tf.float32) * EXCLUDED
        normalized += tf.cast(~just_finished, tf.float32) * EXCLUDED
        merged_scores = tf.concat([state["beam_scores"], normalized], 1)
        best = tf.math.top_k(merged_scores, k=beams).indices
        beam_scores = gather_beams(merged_scores, best)
        finished = gather_beams(tf.concat([state["finished"], just_finished], 1), best)

        # transformers' heuristic: can a running beam still beat the worst finished one?
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = tf.cast(allowed, tf.float32)
        else:
            best_length = tf.cast(step + 1, tf.float32)
        best_running = running_scores[:, :1] / best_length**length_penalty
        all_finished = tf.reduce_all(finished, axis=1, keepdims=True)
        worst_finished = tf.where(
            all_finished, tf.reduce_min(beam_scores, axis=1, keepdims=True), EXCLUDED
        )
        generated = tf.concat([state["generated"], tf.fill((batch, keep), step + 1)], 1)
        new_state = {
            "running": gather_beams(candidates, next_indices),
            "running_scores": running_scores,
            "sequences": gather_beams(tf.concat([state["sequences"], candidates], 1), best),
            "beam_scores": beam_scores,
            "generated": gather_beams(generated, best),
            "finished": finished,
            "improvable": state["improvable"] & (best_running > worst_finished),
            "all_hit": tf.reduce_all(hits),
        }
        # Beams of one input share their encoder states: only self-attention entries move.
        parent_rows = tf.reshape(
            gather_beams(parents, next_indices) + tf.range(batch)[:, None] * beams, [-1]
        )
        cache = tuple(
            (tf.gather(keys, parent_rows), tf.gather(values, parent_rows), *cross)
            for keys, values, *cross in cache
        )
        next_tokens = tf.reshape(gather_beams(tokens, next_indices), (rows, 1))
        logits, cache = extend(next_tokens, column, cache)
        return step + 1, new_state, logits, cache, scores_array

    step, state, _, _, scores_array = tf.while_loop(
        condition,
        body,
        (tf.constant(0), state, logits, cache, scores_array),
        maximum_iterations=prompt.max_new,
    )
    returned = options.num_return_sequences
    return {
        "sequences": tf.reshape(state["sequences"][:, :returned], (-1, total)),
        "sequences_scores": tf.reshape(state["beam_scores"][:, :returned], [-1]),
        "generated": tf.reshape(state["generated"][:, :returned], [-1]),
        "steps": step,
        "scores": scores_array.stack() if options.output_scores else tf.zeros((0,)),
    }
