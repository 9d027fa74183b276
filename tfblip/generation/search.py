"""Greedy search, sampling and beam search (as transformers 5's), for decoding's token loop.

Each, called with (prompt, processors, options, (eos, fill token), seed), and beam search
also with the decoder step's `reorder_cache`, returns its start state (a dict whose "open"
rows keep decoding), `advance(step, state, logits, cache)` -> (state, next tokens, cache,
processed scores), and `finish(state, steps)` -> its results.
"""

import tensorflow as tf

from tfblip.generation.processors import apply_processors

# transformers marks excluded beam candidates with -1e9 (not -inf) to keep sums finite.
EXCLUDED = -1.0e9


def at_column(prompt, step):
    """(1, width + max_new) True at the column where `step` writes its tokens."""
    total = prompt.width + prompt.max_new
    return tf.one_hot(prompt.width + step, total, on_value=True, off_value=False)[None, :]


def best_token(scores, step):
    """Greedy search's choice: each row's highest-scoring token."""
    return tf.argmax(scores, axis=-1, output_type=tf.int32)


def sampled_token(seed):
    """Sampling's choice: a token drawn from each row's softmax, seeded by the int64 `seed`
    and the step, so a seed gives the same tokens in any run."""

    def draw(scores, step):
        step_seed = tf.stack([seed, tf.cast(step, tf.int64)])
        return tf.cast(tf.random.stateless_categorical(scores, 1, seed=step_seed)[:, 0], tf.int32)

    return draw


def greedy_search(prompt, processors, options, token_ids, seed):
    """One token per row and step (the best one, or with do_sample a drawn one), until eos or
    the row's allowance."""
    eos, pad = token_ids
    choose = sampled_token(seed) if options.do_sample else best_token

    def advance(step, state, logits, cache):
        scores = apply_processors(processors, logits, prompt, state["sequences"], step)
        tokens = tf.where(state["open"], choose(scores, step), pad)
        state = {
            "sequences": tf.where(at_column(prompt, step), tokens[:, None], state["sequences"]),
            "open": state["open"] & (tokens != eos) & (step + 1 < prompt.allowed),
        }
        return state, tokens[:, None], cache, scores

    state = {"sequences": prompt.buffer, "open": tf.ones_like(prompt.lengths, tf.bool)}
    return state, advance, lambda state, steps: {"sequences": state["sequences"], "new": steps}


def beam_search(prompt, processors, options, token_ids, seed, reorder_cache):
    """Beam search over K = num_beams rows per input: each step keeps the top 2K candidates
    (processors apply to log-probabilities); finished hypotheses compete apart on their
    length-normalized scores, under transformers' early-stopping heuristics. The decoder
    step's `reorder_cache(cache, rows)` moves the cache along with the beams."""
    beams, keep = options.num_beams, 2 * options.num_beams  # transformers: max(2, 1 + eos ids)
    length_penalty, early_stopping = options.length_penalty, options.early_stopping
    rows, total = tf.shape(prompt.buffer)[0], prompt.width + prompt.max_new
    batch = rows // beams

    def unflatten(x):
        return tf.reshape(x, tf.concat([[batch, beams], tf.shape(x)[1:]], 0))

    def gather_beams(x, indices):
        return tf.gather(x, indices, batch_dims=1)

    allowed = unflatten(prompt.allowed)[:, :1]  # (B, 1): per input, shared by its beams
    top_beams = tf.constant([True] * beams + [False] * (keep - beams))[None, :]
    # The running beams; the best finished hypotheses ("sequences"), with the tokens they
    # added; and whether an input's running beams may still beat its finished ones ("open").
    state = {
        "running": unflatten(prompt.buffer),
        "running_scores": tf.tile([[0.0] + [EXCLUDED] * (beams - 1)], [batch, 1]),
        "sequences": unflatten(prompt.buffer),
        "beam_scores": tf.fill((batch, beams), EXCLUDED),
        "generated": tf.zeros((batch, beams), tf.int32),
        "finished": tf.zeros((batch, beams), tf.bool),
        "open": tf.ones((batch, 1), tf.bool),
    }

    def advance(step, state, logits, cache):
        vocab_size = logits.shape[-1]
        running = tf.reshape(state["running"], (rows, total))
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        log_probs = apply_processors(processors, log_probs, prompt, running, step)
        accumulated = unflatten(log_probs) + state["running_scores"][:, :, None]
        top_scores, top_indices = tf.math.top_k(
            tf.reshape(accumulated, (batch, beams * vocab_size)), k=keep
        )
        parents, tokens = top_indices // vocab_size, top_indices % vocab_size
        candidates = tf.where(
            at_column(prompt, step)[None],
            tokens[:, :, None],
            gather_beams(state["running"], parents),
        )
        hits = tf.equal(tokens, token_ids[0]) | (step + 1 >= allowed)

        # The best `beams` candidates that did not finish keep running.
        running_candidates = top_scores + tf.cast(hits, tf.float32) * EXCLUDED
        next_indices = tf.math.top_k(running_candidates, k=beams).indices
        running_scores = gather_beams(running_candidates, next_indices)

        # Candidates among the top `beams` that finished compete with the finished ones.
        normalized = top_scores / tf.cast(step + 1, tf.float32) ** length_penalty
        if early_stopping is True:
            batch_full = tf.reduce_all(state["finished"], axis=1, keepdims=True)
            normalized += tf.cast(batch_full, tf.float32) * EXCLUDED
        normalized += tf.cast(~state["open"], tf.float32) * EXCLUDED
        just_finished = hits & top_beams
        normalized += tf.cast(~just_finished, tf.float32) * EXCLUDED
        merged_scores = tf.concat([state["beam_scores"], normalized], 1)
        best = tf.math.top_k(merged_scores, k=beams).indices
        beam_scores = gather_beams(merged_scores, best)
        finished = gather_beams(tf.concat([state["finished"], just_finished], 1), best)

        # transformers' heuristic: can a running beam still beat the worst finished one?
        longest = early_stopping == "never" and length_penalty > 0.0
        best_length = tf.cast(allowed if longest else step + 1, tf.float32)
        best_running = running_scores[:, :1] / best_length**length_penalty
        all_finished = tf.reduce_all(finished, axis=1, keepdims=True)
        worst_finished = tf.where(
            all_finished, tf.reduce_min(beam_scores, axis=1, keepdims=True), EXCLUDED
        )
        # Decoding also stops when every candidate finished, and with early_stopping=True
        # when every beam of the batch did.
        stop = tf.reduce_all(hits)
        if early_stopping is True:
            stop |= tf.reduce_all(finished)
        generated = tf.concat([state["generated"], tf.fill((batch, keep), step + 1)], 1)
        state = {
            "running": gather_beams(candidates, next_indices),
            "running_scores": running_scores,
            "sequences": gather_beams(tf.concat([state["sequences"], candidates], 1), best),
            "beam_scores": beam_scores,
            "generated": gather_beams(generated, best),
            "finished": finished,
            "open": state["open"] & (best_running > worst_finished) & ~stop,
        }
        parent_rows = tf.reshape(
            gather_beams(parents, next_indices) + tf.range(batch)[:, None] * beams, [-1]
        )
        cache = reorder_cache(cache, parent_rows)
        tokens = tf.reshape(gather_beams(tokens, next_indices), (rows, 1))
        return state, tokens, cache, log_probs

    def finish(state, steps):
        returned = options.num_return_sequences
        return {
            "sequences": tf.reshape(state["sequences"][:, :returned], (-1, total)),
            "sequences_scores": tf.reshape(state["beam_scores"][:, :returned], [-1]),
            "new": tf.reduce_max(state["generated"][:, :returned]),
        }

    return state, advance, finish
