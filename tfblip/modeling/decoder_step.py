"""BLIP's text decoder as the step tfblip.generation decodes with: next-token logits + cache."""

import tensorflow as tf

from tfblip.modeling.common import graph_description


class DecoderStep:
    """The text decoder (`lm_head`, a TFBlipTextLMHeadModel) as `tfblip.generation` calls it."""

    def __init__(self, lm_head):
        config = lm_head.config
        self.lm_head = lm_head
        self.eos_token_id = int(config.sep_token_id)  # as transformers, BLIP stops at [SEP]
        self.pad_token_id = int(config.pad_token_id or 0)
        self.max_positions = config.max_position_embeddings
        # The compiled decoding loops live as long as the model, outside Keras' tracking.
        self.functions = lm_head.__dict__.setdefault("_tfblip_generate_functions", {})

    # What a traced loop reads, and what else its graph depends on (the trace cache's key);
    # read only when a loop is traced, not on every generate() call.
    @property
    def variables(self):
        return self.lm_head.variables

    @property
    def description(self):
        return graph_description(self.lm_head)

    def empty_cache(self, rows, length):
        """Zero self-attention key/value buffers of `length` positions, one pair per layer."""
        config = self.lm_head.config
        heads = config.num_attention_heads
        shape = (rows, heads, length, config.hidden_size // heads)
        zeros = tf.zeros(shape, self.lm_head.compute_dtype)
        return tuple((zeros, zeros) for _ in range(config.num_hidden_layers))

    @staticmethod
    def reorder_cache(cache, rows):
        """The cache of the (N,) `rows` (beam search's surviving beams)."""
        return tuple((tf.gather(keys, rows), tf.gather(values, rows)) for keys, values in cache)

    def bind(self, encoder_states, encoder_mask):
        """`next_logits(tokens, positions, attention_mask, column, cache)` of one decoding
        over (N, S, D) `encoder_states` under their (N, S) mask.

        `next_logits` runs the decoder on (N, T) `tokens` at `positions`, written into the
        cache from `column`, and returns the float32 (N, vocab) logits of the last token and
        the updated cache.
        """
        lm_head = self.lm_head
        predictions = lm_head.cls.predictions
        # Once per decoding, outside the token loop: the LM head's kernel and every layer's
        # cross-attention keys/values over the encoder states.
        projection = predictions.decoding_projection(lm_head.bert.embeddings.word_embeddings)
        encoder_states = tf.cast(encoder_states, lm_head.compute_dtype)
        encoder_mask = tf.cast(encoder_mask, tf.int32)
        cross_cache = tuple(
            layer.crossattention.self_attention.keys_and_values(encoder_states)
            for layer in lm_head.bert.encoder.layer
        )

        def next_logits(tokens, positions, attention_mask, column, cache):
            outputs = lm_head.bert(
                input_ids=tokens,
                attention_mask=attention_mask,
                position_ids=positions,
                encoder_attention_mask=encoder_mask,
                past_key_values=tuple(own + cross for own, cross in zip(cache, cross_cache)),
                cache_position=column,
                use_cache=True,
                is_decoder=True,
            )
            # Only the last position's logits are needed, also after the prompt.
            logits = predictions.project(outputs.last_hidden_state[:, -1], projection)
            cache = tuple(layer[:2] for layer in outputs.past_key_values)
            return tf.cast(logits, tf.float32), cache

        return next_logits
