"""BLIP text tower: a post-LayerNorm BERT with optional cross-attention to image states.

The same layers serve as a bidirectional encoder (ITM/VQA question encoder, TFBlipModel) and
as a causal decoder (captioning, VQA answers). Decoding carries a cache per layer:
`(self_key, self_value)` plus `(cross_key, cross_value)` when the layer cross-attends. The
self-attention entries are buffers the new keys/values are written into at `cache_position`
(generate() sizes them for the whole output; transformers-style stepping without
`cache_position` gets them grown by the new tokens each call); the cross-attention entries
are computed once from the encoder states on the first step and reused afterwards.

Every sublayer's Keras `name` is the attribute name of the PyTorch module it mirrors.
Where Keras reserves the attribute (`output`), the Python attribute differs but the name
does not.
"""

import keras
import tensorflow as tf

from tfblip.configuration import BlipTextConfig
from tfblip.modeling.attention import MultiHeadAttention, with_room
from tfblip.modeling.common import (
    BuildsSublayers,
    ConfigSerializable,
    TowerLayer,
    get_activation,
    run_layers,
    stack,
)
from tfblip.modeling.inputs import checked_text_inputs
from tfblip.modeling.pretrained import PretrainedMixin
from tfblip.modeling.quantization import QuantizeMixin, embedding_table, int8_rows, is_int8
from tfblip.outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
)

IGNORE_INDEX = -100


class TextLayer(TowerLayer):
    config_class = BlipTextConfig


class BlipTextEmbeddings(TextLayer):
    """Word + absolute position embeddings (no token types), LayerNorm, dropout."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        init = keras.initializers.TruncatedNormal(stddev=config.initializer_range)

        def embedding(rows, name):
            return keras.layers.Embedding(
                rows,
                config.hidden_size,
                embeddings_initializer=init,
                name=name,
                dtype=self.dtype_policy,
            )

        self.word_embeddings = embedding(config.vocab_size, "word_embeddings")
        self.position_embeddings = embedding(config.max_position_embeddings, "position_embeddings")
        self.LayerNorm = self.make_layer_norm("LayerNorm")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob, dtype=self.dtype_policy)

    @staticmethod
    @tf.custom_gradient
    def _dense_gradient(table):
        # A lookup's gradient is IndexedSlices with a row per occurrence. Keras' Adam/AdamW
        # square each slice before summing repeated rows (sum of g^2, not (sum of g)^2), so
        # any token seen twice in a batch gets a different update than in PyTorch, whose
        # embedding gradients are dense. Keras updates the whole table densely anyway.
        return tf.identity(table), lambda upstream: tf.convert_to_tensor(upstream)

    def _lookup(self, embedding, ids):
        """`embedding(ids)` with the dense table gradient PyTorch's nn.Embedding gives."""
        ids = tf.convert_to_tensor(ids)
        if ids.dtype not in (tf.int32, tf.int64):
            ids = tf.cast(ids, tf.int32)
        if is_int8(embedding):  # int8 tables are not trained: no gradient to shape
            return int8_rows(embedding, ids)
        table = self._dense_gradient(tf.convert_to_tensor(embedding.embeddings))
        return tf.cast(tf.gather(table, ids), embedding.compute_dtype)

    def call(
        self, input_ids=None, inputs_embeds=None, position_ids=None, past_length=0, training=False
    ):
        if inputs_embeds is None:
            inputs_embeds = self._lookup(self.word_embeddings, input_ids)
            if self.config.pad_token_id is not None:
                # PyTorch's nn.Embedding(padding_idx=pad) sends lookups of the pad id no
                # gradient (the tied LM head still trains that row); the forward is unchanged.
                is_pad = tf.equal(tf.cast(input_ids, tf.int64), self.config.pad_token_id)
                inputs_embeds = tf.where(
                    is_pad[..., None], tf.stop_gradient(inputs_embeds), inputs_embeds
                )
        if position_ids is None:
            seq_len = tf.shape(inputs_embeds)[1]
            position_ids = tf.range(past_length, past_length + seq_len)[None, :]
        embeddings = inputs_embeds + self._lookup(self.position_embeddings, position_ids)
        return self.dropout(self.LayerNorm(embeddings), training=training)


class BlipTextDense(TextLayer):
    """hidden_act(dense(x)), then a LayerNorm if asked: PyTorch's intermediate and
    prediction-head transform modules, which exist for their weight names."""

    def __init__(self, config, units, with_layer_norm=False, **kwargs):
        super().__init__(config, **kwargs)
        self.units, self.with_layer_norm = units, with_layer_norm
        self.activation = get_activation(config.hidden_act)
        self.dense = self.make_dense(units, "dense")
        self.LayerNorm = self.make_layer_norm("LayerNorm") if with_layer_norm else None

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "with_layer_norm": self.with_layer_norm,
        }

    def call(self, hidden_states):
        hidden_states = self.activation(self.dense(hidden_states))
        return hidden_states if self.LayerNorm is None else self.LayerNorm(hidden_states)


class BlipTextPooler(TextLayer):
    """tanh(dense(first token)). A class of its own: `.keras` files name it."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.dense = self.make_dense(config.hidden_size, "dense")

    def call(self, hidden_states):
        return tf.tanh(self.dense(hidden_states[:, 0]))


class BlipTextOutput(TextLayer):
    """LayerNorm(dropout(dense(x)) + residual), closing an attention or feed-forward sublayer;
    `input_size` is the width of x."""

    def __init__(self, config, input_size, **kwargs):
        super().__init__(config, **kwargs)
        self.input_size = input_size
        self.dense = self.make_dense(config.hidden_size, "dense", input_size)
        self.LayerNorm = self.make_layer_norm("LayerNorm")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob, dtype=self.dtype_policy)

    def get_config(self):
        return {**super().get_config(), "input_size": self.input_size}

    def call(self, hidden_states, residual, training=False):
        hidden_states = self.dropout(self.dense(hidden_states), training=training)
        return self.LayerNorm(hidden_states + residual)


class BlipTextAttention(TextLayer):
    """Attention over the text itself or, for cross-attention, the image, then `output`."""

    def __init__(self, config, is_cross_attention=False, **kwargs):
        super().__init__(config, **kwargs)
        self.is_cross_attention = is_cross_attention
        self.self_attention = MultiHeadAttention(
            config.hidden_size,
            config.num_attention_heads,
            config.attention_probs_dropout_prob,
            config.initializer_range,
            key_value_size=config.encoder_hidden_size if is_cross_attention else None,
            name="self",
            dtype=self.dtype_policy,
        )
        self.attention_output = BlipTextOutput(
            config, config.hidden_size, name="output", dtype=self.dtype_policy
        )

    def get_config(self):
        return {**super().get_config(), "is_cross_attention": self.is_cross_attention}

    def attend(self, hidden_states, training, **attention_arguments):
        """(output, attention probabilities, cache): `MultiHeadAttention.call`, then `output`.

        A plain method, not `call`: Keras' `__call__` would reject the mixed keyword dict.
        """
        context, probs, cache = self.self_attention(
            hidden_states, training=training, **attention_arguments
        )
        return self.attention_output(context, hidden_states, training=training), probs, cache


class BlipTextLayer(TextLayer):
    """Self-attention, cross-attention (when given image states), feed-forward."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.attention = BlipTextAttention(config, name="attention", dtype=self.dtype_policy)
        # As in transformers, the cross-attention weights exist when the config is a decoder's.
        self.crossattention = (
            BlipTextAttention(
                config, is_cross_attention=True, name="crossattention", dtype=self.dtype_policy
            )
            if config.is_decoder
            else None
        )
        self.intermediate = BlipTextDense(
            config, config.intermediate_size, name="intermediate", dtype=self.dtype_policy
        )
        self.feed_forward_output = BlipTextOutput(
            config, config.intermediate_size, name="output", dtype=self.dtype_policy
        )

    def call(
        self,
        hidden_states,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        cache=None,
        cache_index=None,
        training=False,
    ):
        """Returns (output, self-attention probabilities, cross-attention probabilities or
        None, cache (self_key, self_value[, cross_key, cross_value])).

        `cache` holds the self-attention buffers to write at `cache_index` and, after the
        first decoding call, the cross-attention keys/values to reuse.
        """
        self_cache = cache[:2] if cache is not None else None
        cross_cache = cache[2:] if cache is not None else ()
        hidden_states, self_probs, new_cache = self.attention.attend(
            hidden_states,
            training,
            attention_mask=attention_mask,
            cache=self_cache,
            cache_index=cache_index,
        )
        cross_probs = None
        if encoder_hidden_states is not None or cross_cache:
            if self.crossattention is None:
                raise ValueError(
                    "encoder_hidden_states were given but this text model has no cross-attention "
                    "(its config has is_decoder=False)."
                )
            hidden_states, cross_probs, cross_kv = self.crossattention.attend(
                hidden_states,
                training,
                attention_mask=encoder_attention_mask,
                key_value_states=encoder_hidden_states,
                cache=cross_cache or None,
            )
            new_cache = new_cache + cross_kv
        layer_output = self.feed_forward_output(
            self.intermediate(hidden_states), hidden_states, training=training
        )
        return layer_output, self_probs, cross_probs, new_cache


class BlipTextEncoder(TextLayer):
    """The blocks, `layer.<i>`; TFBlipTextModel runs them."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.layer = stack(BlipTextLayer, config, "layer", self.dtype_policy)


def self_attention_mask(
    attention_mask, batch_size, query_length, past_length, is_decoder, key_length=None
):
    """Boolean (B, 1, Tq, Tk) keep mask: padding, plus causality when decoding; None when
    nothing is masked.

    `attention_mask` covers every key, (B, key_length): the cached and the new tokens, so
    key_length is past_length + query_length unless a fixed-size cache is longer.
    """
    padding = None
    if attention_mask is not None:
        padding = tf.cast(attention_mask, tf.bool)[:, None, None, :]
    if not is_decoder:
        return padding
    if key_length is None:
        key_length = past_length + query_length
    query_positions = past_length + tf.range(query_length)
    causal = query_positions[:, None] >= tf.range(key_length)[None, :]
    keep = tf.broadcast_to(causal[None, None], (batch_size, 1, query_length, key_length))
    return keep if padding is None else tf.logical_and(keep, padding)


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipTextModel(
    PretrainedMixin, QuantizeMixin, BuildsSublayers, ConfigSerializable, keras.Model
):
    """BERT-style text model; causal with `is_decoder=True`, else bidirectional.

    Cross-attends to `encoder_hidden_states` when given. With `use_cache` (decoder only) it
    returns `past_key_values` to feed back with the next tokens.

    `from_pretrained` also takes the text tower of a full BLIP checkpoint that has one: the
    `text_encoder` of a retrieval or VQA checkpoint, the `text_model` of a BlipModel one.

    Args:
        config: a `BlipTextConfig`; `is_decoder=True` gives the layers cross-attention.
        add_pooling_layer: add the `pooler` (tanh of a dense of the first token's state).
        **kwargs: Keras model arguments (`name`, `dtype`).
    """

    config_class = BlipTextConfig
    tower_prefixes = ("text_encoder.", "text_model.")

    @classmethod
    def checkpoint_arguments(cls, keys):
        # The retrieval and VQA text encoders have no pooler; BlipModel's text model has one.
        return {"add_pooling_layer": "pooler.dense.weight" in keys}

    def __init__(self, config, add_pooling_layer=True, **kwargs):
        super().__init__(config, **kwargs)
        self.add_pooling_layer = add_pooling_layer
        self.embeddings = BlipTextEmbeddings(config, name="embeddings", dtype=self.dtype_policy)
        self.encoder = BlipTextEncoder(config, name="encoder", dtype=self.dtype_policy)
        self.pooler = (
            BlipTextPooler(config, name="pooler", dtype=self.dtype_policy)
            if add_pooling_layer
            else None
        )
        self.build()

    def get_config(self):
        return {**super().get_config(), "add_pooling_layer": self.add_pooling_layer}

    def call(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        encoder_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_values=None,
        use_cache=None,
        is_decoder=False,
        cache_position=None,
        output_attentions=False,
        output_hidden_states=False,
        training=False,
    ):
        """Encodes text, or decodes it causally with `is_decoder=True`.

        Args:
            input_ids: (B, T) int token ids; or give `inputs_embeds` (B, T, D) instead.
            attention_mask: (B, keys) 1 for tokens to attend to, 0 for padding; keys count
                the cached tokens too.
            position_ids: (B, T) positions; default: after the cached tokens.
            inputs_embeds: (B, T, D) word embeddings in place of `input_ids`.
            encoder_embeds: (B, T, D) states that skip the embeddings layer entirely.
            encoder_hidden_states: (B, S, encoder_hidden_size) image states to cross-attend to.
            encoder_attention_mask: (B, S) mask of those states.
            past_key_values: the cache a previous call returned (decoder only).
            use_cache: return `past_key_values` (decoder only); default: config.use_cache.
            is_decoder: causal self-attention.
            cache_position: where the new tokens go in fixed-size cache buffers (generate()).
            output_attentions: also return the attention probabilities.
            output_hidden_states: also return the input and every layer's hidden states.
            training: applies dropout when True.

        Returns:
            BaseModelOutputWithPoolingAndCrossAttentions: `last_hidden_state` (B, T, D),
            `pooler_output` (B, D) or None, and `past_key_values`, `hidden_states`,
            `attentions`, `cross_attentions` when asked for.

        Raises:
            ValueError: not exactly one of input_ids and inputs_embeds, ids outside the
                vocabulary or text longer than the position embeddings (InvalidArgumentError
                instead when only known while the graph runs), or image states for a model
                without cross-attention.
        """
        # With `cache_position` (generate()), the cache is fixed-size buffers; without it
        # (transformers-style stepping), the keys/values of the past_length tokens so far.
        if past_key_values is None:
            past_length = 0
        elif cache_position is None:
            past_length = tf.shape(past_key_values[0][0])[2]
        else:
            past_length = cache_position
        if encoder_embeds is not None:
            embedding_output = encoder_embeds
        else:
            # generate()'s decoding loop (the caller that passes cache_position) feeds tokens
            # it drew from the vocabulary, within the positions it checked before the loop:
            # range checks would only cost time on every step.
            input_ids, inputs_embeds, position_ids = checked_text_inputs(
                self.config,
                input_ids,
                inputs_embeds,
                position_ids,
                past_length,
                check_ranges=cache_position is None,
            )
            embedding_output = self.embeddings(
                input_ids=input_ids,
                inputs_embeds=inputs_embeds,
                position_ids=position_ids,
                past_length=past_length,
                training=training,
            )
        batch_size, query_length = tf.shape(embedding_output)[0], tf.shape(embedding_output)[1]
        key_length = None
        if past_key_values is not None:
            if cache_position is None:
                # One cache layout inside: buffers with room for the new tokens, written at
                # past_length. The cache returned is then the given one grown by them, as in
                # transformers.
                past_key_values = tuple(
                    (*with_room(layer[:2], query_length), *layer[2:]) for layer in past_key_values
                )
                cache_position = past_length
            key_length = tf.shape(past_key_values[0][0])[2]
        if encoder_attention_mask is not None:
            encoder_attention_mask = tf.cast(encoder_attention_mask, tf.bool)[:, None, None, :]
        if encoder_hidden_states is not None:
            encoder_hidden_states = tf.cast(encoder_hidden_states, self.compute_dtype)
        shared = {
            "attention_mask": self_attention_mask(
                attention_mask, batch_size, query_length, past_length, is_decoder, key_length
            ),
            "encoder_hidden_states": encoder_hidden_states,
            "encoder_attention_mask": encoder_attention_mask,
            "cache_index": cache_position,
            "training": training,
        }
        layers = self.encoder.layer
        caches = past_key_values if past_key_values is not None else [None] * len(layers)
        sequence_output, all_hidden_states, outputs = run_layers(
            layers, embedding_output, [{**shared, "cache": cache} for cache in caches]
        )
        self_attentions, cross_attentions, new_caches = outputs
        if use_cache is None:
            use_cache = self.config.use_cache
        output_cross = output_attentions and cross_attentions[0] is not None
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output) if self.pooler is not None else None,
            past_key_values=new_caches if (use_cache and is_decoder) else None,
            hidden_states=all_hidden_states if output_hidden_states else None,
            attentions=self_attentions if output_attentions else None,
            cross_attentions=cross_attentions if output_cross else None,
        )


class BlipTextLMPredictionHead(TextLayer):
    """transform -> vocabulary projection (tied to the word embeddings by default) + bias."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.transform = BlipTextDense(
            config,
            config.hidden_size,
            with_layer_norm=True,
            name="transform",
            dtype=self.dtype_policy,
        )
        # Untied, transformers' decoder is a Linear with its own weight and bias, and
        # `predictions.bias` goes unused (it is still loaded and saved, as transformers does).
        untied = not config.tie_word_embeddings
        self.decoder = self.make_dense(config.vocab_size, "decoder") if untied else None

    def build(self, input_shape=None):
        super().build()
        self.bias = self.add_weight(
            shape=(self.config.vocab_size,), initializer="zeros", name="bias"
        )

    def call(self, hidden_states, word_embeddings):
        """`word_embeddings` is the word Embedding layer, the tied projection (unused when
        untied)."""
        hidden_states = self.transform(hidden_states)
        if self.decoder is not None:
            return self.decoder(hidden_states)
        table, scales = embedding_table(word_embeddings)
        logits = tf.matmul(hidden_states, tf.cast(table, hidden_states.dtype), transpose_b=True)
        return self._scaled(logits, scales) + tf.cast(self.bias, logits.dtype)

    @staticmethod
    def _scaled(logits, scales):
        return logits if scales is None else logits / tf.cast(scales, logits.dtype)

    def decoding_projection(self, word_embeddings):
        """What `project` multiplies by, built once per generate() call: (kernel (hidden,
        vocab), its int8 scales or None) of the tied word Embedding layer `word_embeddings`,
        or None when the head is untied (its Dense layer).

        TensorFlow's CPU matmul of one row against the (vocab, hidden) embeddings with
        transpose_b is ~4x slower than against a transposed copy, and decoding does it on
        every step.
        """
        if self.decoder is not None:
            return None
        table, scales = embedding_table(word_embeddings)
        return tf.transpose(table), scales

    def project(self, hidden_states, projection):
        """Logits of (B, hidden) states through `decoding_projection`'s `projection`."""
        hidden_states = self.transform(hidden_states)
        if projection is None:
            return self.decoder(hidden_states)
        kernel, scales = projection
        logits = tf.matmul(hidden_states, tf.cast(kernel, hidden_states.dtype))
        return self._scaled(logits, scales) + tf.cast(self.bias, logits.dtype)


class BlipTextOnlyMLMHead(TextLayer):
    """PyTorch's `cls` module: it only holds `predictions`."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.predictions = BlipTextLMPredictionHead(
            config, name="predictions", dtype=self.dtype_policy
        )


def causal_lm_loss(logits, labels, label_smoothing=0.0, reduction="mean"):
    """Next-token cross-entropy of `logits[:, :-1]` against `labels[:, 1:]`, as transformers.

    Labels equal to -100 are ignored. With `reduction="mean"` the loss is averaged over the
    counted tokens; with "none" it is summed per sequence.
    """
    logits = tf.cast(logits[:, :-1], tf.float32)
    labels = tf.cast(labels[:, 1:], tf.int32)
    counted = tf.cast(tf.not_equal(labels, IGNORE_INDEX), tf.float32)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    safe_labels = tf.where(labels == IGNORE_INDEX, 0, labels)
    nll = -tf.gather(log_probs, safe_labels, axis=-1, batch_dims=2)
    per_token = nll
    if label_smoothing:
        smooth = -tf.reduce_mean(log_probs, axis=-1)
        per_token = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    per_token = per_token * counted
    if reduction == "mean":
        return tf.math.divide_no_nan(tf.reduce_sum(per_token), tf.reduce_sum(counted))
    if reduction == "none":
        return tf.reduce_sum(per_token, axis=1)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipTextLMHeadModel(
    PretrainedMixin, QuantizeMixin, BuildsSublayers, ConfigSerializable, keras.Model
):
    """The BLIP text decoder: `bert` (no pooler) + `cls` language-modeling head.

    Args:
        config: a `BlipTextConfig`.
        **kwargs: Keras model arguments (`name`, `dtype`).
    """

    config_class = BlipTextConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.bert = TFBlipTextModel(
            config, add_pooling_layer=False, name="bert", dtype=self.dtype_policy
        )
        self.cls = BlipTextOnlyMLMHead(config, name="cls", dtype=self.dtype_policy)
        self.build()

    def call(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        labels=None,
        past_key_values=None,
        use_cache=None,
        is_decoder=True,
        cache_position=None,
        reduction="mean",
        output_attentions=False,
        output_hidden_states=False,
        training=False,
    ):
        """Next-token logits, and the loss when given labels.

        Args:
            labels: (B, T) token ids to predict, shifted inside as transformers does; -100
                is ignored. Turns `use_cache` off.
            reduction: "mean" (over the counted tokens) or "none" (a sum per sequence).
            Every other argument: as `TFBlipTextModel.call`.

        Returns:
            CausalLMOutputWithCrossAttentions: `loss` (None without labels), `logits`
            (B, T, vocab), and the cache, hidden states and attentions when asked for.

        Raises:
            ValueError: as `TFBlipTextModel.call`, or an unknown `reduction`.
        """
        if labels is not None:
            use_cache = False
        # Every argument but the loss's goes to `bert` as it is.
        arguments = {k: v for k, v in locals().items() if k not in ("self", "labels", "reduction")}
        outputs = self.bert(**arguments)
        word_embeddings = self.bert.embeddings.word_embeddings
        logits = self.cls.predictions(outputs.last_hidden_state, word_embeddings=word_embeddings)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.config.label_smoothing, reduction=reduction)
        return CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
        )
