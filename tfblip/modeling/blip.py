"""BLIP task models: features (TFBlipModel), captioning, VQA and image-text retrieval."""

from collections.abc import Mapping

import keras
import tensorflow as tf

from tfblip.arguments import positive_int
from tfblip.configuration import DEFAULT_ENC_TOKEN_ID, BlipConfig
from tfblip.generation.decoding import generate
from tfblip.generation.options import GenerationOptions
from tfblip.generation.prompts import drop_last_token
from tfblip.modeling.common import ConfigSerializable, dense, graph_description
from tfblip.modeling.decoder_step import DecoderStep
from tfblip.modeling.inputs import (
    check_image_size,
    check_pixel_values,
    check_token_ids,
    checked_text_inputs,
)
from tfblip.modeling.multi_worker_fit import MultiWorkerFitMixin
from tfblip.modeling.pretrained import PretrainedMixin
from tfblip.modeling.quantization import QuantizeMixin
from tfblip.modeling.text import (
    IGNORE_INDEX,
    TFBlipTextLMHeadModel,
    TFBlipTextModel,
    causal_lm_loss,
)
from tfblip.modeling.train_functions import FastFirstStepMixin
from tfblip.modeling.vision import TFBlipVisionModel
from tfblip.ops.graph_rewrites import under_lean_graph_rewrites
from tfblip.ops.trace_cache import traced_function
from tfblip.outputs import (
    BlipForConditionalGenerationModelOutput,
    BlipImageTextMatchingModelOutput,
    BlipOutput,
    BlipTextVisionModelOutput,
)

# BLIP's initial contrastive temperature, for ITC fine-tuning of the retrieval model.
ITC_TEMPERATURE = 0.07


def l2_normalize(x):
    """x / ||x|| in float32, the norm clamped at 1e-12 as PyTorch's F.normalize does."""
    x = tf.cast(x, tf.float32)
    return x / tf.maximum(tf.norm(x, axis=-1, keepdims=True), 1e-12)


def image_text_contrastive_loss(logits_per_text):
    """Mean cross-entropy of each row, then each column, against its diagonal entry."""

    def against_diagonal(logits):
        targets = tf.range(tf.shape(logits)[0])
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        return tf.reduce_mean(losses)

    logits = tf.cast(logits_per_text, tf.float32)
    return (against_diagonal(logits) + against_diagonal(tf.transpose(logits))) / 2.0


def all_ones_mask(states):
    """Attention mask over every position of (B, T, D) states."""
    return tf.ones(tf.shape(states)[:2], dtype=tf.int32)


def int32_ids_and_mask(input_ids, attention_mask=None):
    """(ids, mask) as int32 tensors; a missing mask attends to every token."""
    input_ids = tf.cast(input_ids, tf.int32)
    if attention_mask is None:
        return input_ids, tf.ones_like(input_ids)
    return input_ids, tf.cast(attention_mask, tf.int32)


def replace_first_token(input_ids, token_id):
    """`input_ids` with `token_id` in each row's first column (BLIP's [DEC] or [ENC])."""
    input_ids = tf.convert_to_tensor(input_ids)
    first = tf.fill((tf.shape(input_ids)[0], 1), tf.cast(token_id, input_ids.dtype))
    return tf.concat([first, input_ids[:, 1:]], axis=1)


def enc_token_id_in_use(config):
    """The "[ENC]" id ITM texts and VQA questions start with, or None when `use_enc_token`
    is off (they keep their "[CLS]", as in transformers)."""
    if not getattr(config, "use_enc_token", False):
        return None
    text_config = config.text_config
    enc_token_id = getattr(text_config, "enc_token_id", DEFAULT_ENC_TOKEN_ID)
    # Checked here too: the config may have been changed after validation.
    if not isinstance(enc_token_id, int) or not 0 <= enc_token_id < text_config.vocab_size:
        raise ValueError(
            f"use_enc_token is on but text_config.enc_token_id ({enc_token_id!r}) is not a token "
            f"id of the vocabulary (vocab_size {text_config.vocab_size}); set it to the id of "
            "[ENC] (processor.enc_token_id)."
        )
    return enc_token_id


def start_with_enc_token(input_ids, config):
    """`input_ids` starting with "[ENC]" when `config.use_enc_token` is on, as the original
    BLIP's ITM and VQA encoders; else unchanged."""
    enc_token_id = enc_token_id_in_use(config)
    return input_ids if enc_token_id is None else replace_first_token(input_ids, enc_token_id)


def vision_fields(vision_outputs):
    """The vision tower's outputs under the names the task outputs give them."""
    names = ("last_hidden_state", "hidden_states", "attentions")
    return {name: getattr(vision_outputs, name) for name in names}


def _check_objective(objective):
    if objective not in ("itm", "itc"):
        raise ValueError(f"objective must be 'itm' or 'itc', got {objective!r}.")


def graph_function(model, name, function, *variant, input_signature=None):
    """`function` as a tf.function, traced once per model and variant, then reused (kept
    outside Keras' attribute tracking, which would wrap the dict).

    With an `input_signature` (unknown sizes allowed) it is traced once for every shape, or
    read from the trace cache (tfblip.ops.trace_cache); without one, a second shape traces it
    once more, for any shape (TensorFlow's reduce_retracing). The functions are plain
    TensorFlow (no AutoGraph conversion, which would only add tracing time) and run under
    `lean_graph_rewrites`, which shortens Grappler's optimisation at the first call.
    """
    functions = model.__dict__.setdefault("_tfblip_graph_functions", {})
    key = (name, *variant)
    if key not in functions:
        if input_signature is None:
            traced = tf.function(function, autograph=False, reduce_retracing=True)
        else:
            description = graph_description(model, function=[name, *variant])
            traced = traced_function(function, input_signature, model.variables, description)
        functions[key] = under_lean_graph_rewrites(traced)
    return functions[key]


def pixel_signature(vision_config, interpolate_pos_encoding):
    """A TensorSpec of (any batch, channels, H, W) images: the configured size, or any size
    when the position embeddings are interpolated."""
    size = None if interpolate_pos_encoding else vision_config.image_size
    return tf.TensorSpec((None, vision_config.num_channels, size, size), tf.float32)


TOKEN_SIGNATURE = tf.TensorSpec((None, None), tf.int32)


class _BlipTaskModel(
    FastFirstStepMixin,
    MultiWorkerFitMixin,
    PretrainedMixin,
    QuantizeMixin,
    ConfigSerializable,
    keras.Model,
):
    """What the task models share: a BlipConfig, the vision tower, keyword inputs, fit()'s loss."""

    config_class = BlipConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.vision_model = TFBlipVisionModel(
            config.vision_config, name="vision_model", dtype=self.dtype_policy
        )

    def build(self, input_shape=None):
        """Every sublayer builds itself from the config when constructed."""

    def __call__(self, *args, **kwargs):
        # Keras' fit/evaluate/predict pass a batch's input dict as the only positional
        # argument; the models take keyword inputs, as transformers' do.
        if len(args) == 1 and isinstance(args[0], Mapping):
            kwargs = {**args[0], **kwargs}
            args = ()
        return super().__call__(*args, **kwargs)

    def _vision(
        self,
        pixel_values,
        interpolate_pos_encoding=False,
        output_attentions=False,
        output_hidden_states=False,
        training=False,
    ):
        """The vision tower's outputs; every task model runs it with the same options."""
        return self.vision_model(
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            training=training,
        )

    def _image_states(self, pixel_values, interpolate_pos_encoding=False):
        return self._vision(pixel_values, interpolate_pos_encoding).last_hidden_state

    def _grounded_text_states(self, input_ids, attention_mask, image_embeds, training=False):
        """States of `text_encoder` over texts that cross-attend to the image (ITM, VQA)."""
        return self.text_encoder(
            input_ids=start_with_enc_token(input_ids, self.config),
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=all_ones_mask(image_embeds),
            training=training,
        ).last_hidden_state

    # ------------------------------------------------------------------ training with fit()

    def default_loss(self, x, y_pred):
        """The loss fit() uses when the forward pass computed none."""
        raise ValueError(
            f"{type(self).__name__} computes its training loss from `labels` in the input dict "
            "(see tfblip.data for datasets that provide them); this batch has none."
        )

    def loss_count(self, x):
        """How many terms the mean loss averages over in this replica's batch: its pairs."""
        return tf.cast(tf.shape(x["input_ids"])[0], tf.float32)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """fit()/evaluate() loss: the model's own, no compile loss; under a tf.distribute
        strategy the mean over the global batch, as one device would compute it."""
        if self._compile_loss is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own loss; call compile() without `loss`."
            )
        loss = y_pred.get("loss") if isinstance(y_pred, Mapping) else None
        if loss is None:
            loss = self.default_loss(x, y_pred)
        loss = tf.cast(loss, tf.float32)
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            count = tf.cast(self.loss_count(x), tf.float32)
            loss = tf.math.divide_no_nan(loss * count, replica.all_reduce("sum", count))
        for extra in self.losses:
            loss += self._aggregate_additional_loss(extra)
        return loss


class _GeneratingTaskModel(_BlipTaskModel):
    """A task model with a text decoder, generate(), and the decoding defaults it starts from."""

    def __init__(self, config, generation_defaults=None, **kwargs):
        super().__init__(config, **kwargs)
        generation_defaults = dict(generation_defaults or {})
        GenerationOptions.from_dicts(generation_defaults, {})  # unknown or invalid ones raise now
        self.generation_defaults = generation_defaults

    def get_config(self):
        return {**super().get_config(), "generation_defaults": dict(self.generation_defaults)}

    def loss_count(self, x):
        """The answer or caption tokens the mean loss averages over (labels after bos)."""
        labels = tf.convert_to_tensor(x["labels"])
        return tf.reduce_sum(tf.cast(labels[:, 1:] != IGNORE_INDEX, tf.float32))

    def _generate_inputs(self, options, pixel_values, input_ids, interpolate_pos_encoding):
        """(options, pixel_values, input_ids), checked before the traced encoders run, where
        a ValueError would come out wrapped in a trace of TensorFlow internals."""
        options = GenerationOptions.from_dicts(self.generation_defaults, options)
        pixel_values = tf.convert_to_tensor(pixel_values, tf.float32)
        vision_config = self.config.vision_config
        check_pixel_values(pixel_values, vision_config.num_channels)
        check_image_size(pixel_values, vision_config, interpolate_pos_encoding)
        if input_ids is not None:
            input_ids, _, _ = checked_text_inputs(
                self.config.text_config, input_ids, None, None, 0, check_ranges=True
            )
        return options, pixel_values, input_ids

    def _decode(self, options, encoder_states, encoder_mask, prompt_ids, prompt_mask):
        step = DecoderStep(self.text_decoder)
        return generate(step, encoder_states, encoder_mask, prompt_ids, prompt_mask, options)


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipModel(_BlipTaskModel):
    """CLIP-style image/text feature model with a contrastive head.

    Args:
        config: the model's BlipConfig.
        **kwargs: Keras Model arguments (name, dtype, ...).
    """

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        init = config.initializer_range
        self.text_model = TFBlipTextModel(
            config.text_config, add_pooling_layer=True, name="text_model", dtype=self.dtype_policy
        )
        self.visual_projection = dense(
            config.projection_dim, "visual_projection", init, self.dtype_policy, use_bias=False
        )
        self.text_projection = dense(
            config.projection_dim, "text_projection", init, self.dtype_policy, use_bias=False
        )
        self.build()

    def build(self, input_shape=None):
        self.visual_projection.build((None, self.config.vision_config.hidden_size))
        self.text_projection.build((None, self.config.text_config.hidden_size))
        self.logit_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.config.logit_scale_init_value),
            name="logit_scale",
        )

    def get_text_features(self, input_ids=None, attention_mask=None, position_ids=None):
        """Text features, as transformers' BlipModel.get_text_features.

        Args:
            input_ids, attention_mask, position_ids: (B, L) tokens, mask (None: all) and positions.

        Returns:
            (B, projection_dim): the projected pooled text output, not normalized.
        """
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        )
        return self.text_projection(text_outputs.pooler_output)

    def get_image_features(self, pixel_values=None, interpolate_pos_encoding=False):
        """Image features, as transformers' BlipModel.get_image_features.

        Args:
            pixel_values, interpolate_pos_encoding: (B, 3, H, W) images; True for another size.

        Returns:
            (B, projection_dim): the projected pooled vision output, not normalized.
        """
        vision_outputs = self._vision(pixel_values, interpolate_pos_encoding)
        return self.visual_projection(vision_outputs.pooler_output)

    def call(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        return_loss=False,
        interpolate_pos_encoding=False,
        output_attentions=False,
        output_hidden_states=False,
        training=False,
    ):
        """Embeds texts and images and scores every text against every image.

        Args:
            input_ids, attention_mask, position_ids, pixel_values: as for the features methods.
            return_loss: whether to compute the image-text contrastive loss.
            interpolate_pos_encoding, output_attentions, output_hidden_states, training: options.

        Returns:
            BlipOutput: normalized `text_embeds`, `image_embeds`; `logits_per_text` (B', B) and
            `logits_per_image`, scaled cosine similarities; `loss`; both towers' outputs.
        """
        vision_outputs = self._vision(
            pixel_values,
            interpolate_pos_encoding,
            output_attentions,
            output_hidden_states,
            training,
        )
        text_outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            training=training,
        )
        image_embeds = l2_normalize(self.visual_projection(vision_outputs.pooler_output))
        text_embeds = l2_normalize(self.text_projection(text_outputs.pooler_output))
        logit_scale = tf.exp(tf.cast(self.logit_scale, tf.float32))
        logits_per_text = tf.matmul(text_embeds, image_embeds, transpose_b=True) * logit_scale
        return BlipOutput(
            loss=image_text_contrastive_loss(logits_per_text) if return_loss else None,
            logits_per_image=tf.transpose(logits_per_text),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )

    def default_loss(self, x, y_pred):
        # fit() on image-text pairs trains the contrastive objective (return_loss=True).
        return image_text_contrastive_loss(y_pred["logits_per_text"])


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipForConditionalGeneration(_GeneratingTaskModel):
    """Image captioning: the text decoder cross-attends to the image states.

    Args:
        config: the model's BlipConfig.
        generation_defaults: generate() options for calls that do not give them (from_pretrained
            reads generation_config.json); get_config() keeps them.
        **kwargs: Keras Model arguments (name, dtype, ...).
    """

    def __init__(self, config, generation_defaults=None, **kwargs):
        super().__init__(config, generation_defaults, **kwargs)
        self.text_decoder = TFBlipTextLMHeadModel(
            config.text_config, name="text_decoder", dtype=self.dtype_policy
        )
        self.build()

    def call(
        self,
        pixel_values=None,
        input_ids=None,
        attention_mask=None,
        labels=None,
        interpolate_pos_encoding=False,
        output_attentions=False,
        output_hidden_states=False,
        training=False,
    ):
        """Decoder logits of captions over the image; with `labels`, their mean next-token loss.

        Args:
            pixel_values: (B, 3, H, W) float pixel values.
            input_ids, attention_mask, labels: (B, L) caption tokens, mask and next-token
                targets (-100 ignored).
            interpolate_pos_encoding, output_attentions, output_hidden_states, training: options.

        Returns:
            BlipForConditionalGenerationModelOutput: `loss`, `logits` (B, L, vocab), the image
            states `image_embeds` and the vision tower's outputs.
        """
        if input_ids is None:
            raise ValueError(
                "TFBlipForConditionalGeneration needs input_ids (the caption or prompt tokens); "
                "use generate() to caption from the image alone."
            )
        vision_outputs = self._vision(
            pixel_values,
            interpolate_pos_encoding,
            output_attentions,
            output_hidden_states,
            training,
        )
        image_embeds = vision_outputs.last_hidden_state
        outputs = self.text_decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            labels=labels,
            reduction="mean",
            training=training,
        )
        return BlipForConditionalGenerationModelOutput(
            loss=outputs.loss,
            logits=outputs.logits,
            image_embeds=image_embeds,
            **vision_fields(vision_outputs),
        )

    def generate(
        self,
        pixel_values,
        input_ids=None,
        attention_mask=None,
        interpolate_pos_encoding=False,
        **options,
    ):
        """Captions images, optionally continuing a prompt, as transformers.

        The prompt's first token becomes bos ([DEC]) and its last (a tokenizer's [SEP]) is dropped;
        right-padded prompts of different lengths decode as they would alone.

        Args:
            pixel_values, interpolate_pos_encoding: (B, 3, H, W) images; True for another size.
            input_ids, attention_mask: (B, L) prompt tokens and mask, or None for no prompt.
            **options: transformers' generate options over `generation_defaults`: max_length,
                max_new_tokens, min_length, min_new_tokens, num_beams, length_penalty,
                early_stopping, num_return_sequences, do_sample, temperature, top_k, top_p, seed,
                repetition_penalty, no_repeat_ngram_size, output_scores, return_dict_in_generate,
                jit_compile (XLA).

        Returns:
            int32 ids (B * num_return_sequences, T) from bos to sep_token_id, or a GenerateOutput
            (return_dict_in_generate).
        """
        options, pixel_values, input_ids = self._generate_inputs(
            options, pixel_values, input_ids, interpolate_pos_encoding
        )
        interpolate = bool(interpolate_pos_encoding)
        encode = graph_function(
            self,
            "encode_image",
            lambda pixels: self._image_states(pixels, interpolate),
            interpolate,
            input_signature=[pixel_signature(self.config.vision_config, interpolate)],
        )
        image_embeds = encode(pixel_values)
        prompt_ids, prompt_mask = self.decoder_prompt(
            tf.shape(image_embeds)[0], input_ids, attention_mask
        )
        return self._decode(
            options, image_embeds, all_ones_mask(image_embeds), prompt_ids, prompt_mask
        )

    def unprompted_input_ids(self, batch_size):
        """[bos, eos] per image: what captioning without a prompt starts from, as transformers."""
        text_config = self.config.text_config
        return tf.tile([[text_config.bos_token_id, text_config.eos_token_id]], [batch_size, 1])

    def decoder_prompt(self, batch_size, input_ids=None, attention_mask=None):
        """(ids, mask) decoding starts from: the prompt with bos for its first token and
        without its last one. Graph ops only (the SavedModel export uses it)."""
        if input_ids is None:
            input_ids = self.unprompted_input_ids(batch_size)
        input_ids, attention_mask = int32_ids_and_mask(input_ids, attention_mask)
        bos_ids = replace_first_token(input_ids, self.config.text_config.bos_token_id)
        return drop_last_token(bos_ids, attention_mask)


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipForQuestionAnswering(_GeneratingTaskModel):
    """VQA: the question is encoded with image cross-attention, the answer decoded from it.

    Args:
        config: the model's BlipConfig, with equal text and vision hidden sizes.
        generation_defaults, **kwargs: as for TFBlipForConditionalGeneration.

    Raises:
        ValueError: if the text and vision hidden sizes differ.
    """

    def __init__(self, config, generation_defaults=None, **kwargs):
        if config.vision_config.hidden_size != config.text_config.hidden_size:
            raise ValueError(
                "TFBlipForQuestionAnswering needs equal text and vision hidden sizes (the answer "
                "decoder cross-attends to question states through weights sized for image "
                f"states); got text {config.text_config.hidden_size}, vision "
                f"{config.vision_config.hidden_size}."
            )
        super().__init__(config, generation_defaults, **kwargs)
        self.text_encoder = TFBlipTextModel(
            config.text_config,
            add_pooling_layer=False,
            name="text_encoder",
            dtype=self.dtype_policy,
        )
        self.text_decoder = TFBlipTextLMHeadModel(
            config.text_config, name="text_decoder", dtype=self.dtype_policy
        )
        self.build()

    def encode_question(
        self,
        input_ids,
        pixel_values,
        attention_mask=None,
        interpolate_pos_encoding=False,
        output_attentions=False,
        output_hidden_states=False,
        training=False,
    ):
        """Returns (vision outputs, question states cross-attended to the image)."""
        vision_outputs = self._vision(
            pixel_values,
            interpolate_pos_encoding,
            output_attentions,
            output_hidden_states,
            training,
        )
        image_embeds = vision_outputs.last_hidden_state
        return vision_outputs, self._grounded_text_states(
            input_ids, attention_mask, image_embeds, training
        )

    def _question_states(self, input_ids, pixel_values, attention_mask, interpolate_pos_encoding):
        return self.encode_question(
            input_ids, pixel_values, attention_mask, interpolate_pos_encoding
        )[1]

    def call(
        self,
        input_ids=None,
        pixel_values=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        attention_mask=None,
        labels=None,
        interpolate_pos_encoding=False,
        output_attentions=False,
        output_hidden_states=False,
        training=False,
    ):
        """Answer decoder logits over the question and image; with `labels`, their mean loss.

        Args:
            input_ids, attention_mask: (B, L) question tokens and mask.
            pixel_values: (B, 3, H, W) float pixel values.
            decoder_input_ids, decoder_attention_mask: (B, A) answer tokens and mask; None takes
                them from `labels`, (B, A) targets starting with [DEC] (-100 ignored).
            interpolate_pos_encoding, output_attentions, output_hidden_states, training: options.

        Returns:
            BlipTextVisionModelOutput: `loss`, `decoder_logits` (B, A, vocab), the image states
            `image_embeds` and the vision tower's outputs.
        """
        if labels is None and decoder_input_ids is None:
            raise ValueError(
                "Pass labels (training) or decoder_input_ids (scoring) to "
                "TFBlipForQuestionAnswering; use generate() to answer a question."
            )
        if input_ids is None:
            raise ValueError("TFBlipForQuestionAnswering needs input_ids (the question tokens).")
        vision_outputs, question_embeds = self.encode_question(
            input_ids,
            pixel_values,
            attention_mask,
            interpolate_pos_encoding,
            output_attentions,
            output_hidden_states,
            training,
        )
        if decoder_input_ids is None:
            # As transformers: answer labels already start with [DEC], so they are the inputs
            # too. Ignored (-100) positions are fed as padding, which PyTorch cannot embed.
            labels = tf.convert_to_tensor(labels)
            pad_id = tf.cast(self.config.text_config.pad_token_id, labels.dtype)
            decoder_input_ids = tf.where(labels == IGNORE_INDEX, pad_id, labels)
        if attention_mask is None:
            attention_mask = all_ones_mask(question_embeds)
        answer_output = self.text_decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=attention_mask,
            labels=labels,
            reduction="mean",
            training=training,
        )
        return BlipTextVisionModelOutput(
            loss=answer_output.loss,
            image_embeds=vision_outputs.last_hidden_state,
            decoder_logits=answer_output.logits,
            **vision_fields(vision_outputs),
        )

    def generate(
        self,
        input_ids,
        pixel_values,
        attention_mask=None,
        interpolate_pos_encoding=False,
        **options,
    ):
        """Answers questions about images; padded questions answer as they would alone.

        Args:
            input_ids, attention_mask: (B, L) question tokens and mask.
            pixel_values, interpolate_pos_encoding, **options: as for captioning's generate.

        Returns:
            int32 answer ids starting with bos, or a GenerateOutput (return_dict_in_generate).
        """
        options, pixel_values, input_ids = self._generate_inputs(
            options, pixel_values, input_ids, interpolate_pos_encoding
        )
        input_ids, attention_mask = int32_ids_and_mask(input_ids, attention_mask)
        # The [ENC] id is a Python constant in the traced function: one per id.
        interpolate = bool(interpolate_pos_encoding)
        encode = graph_function(
            self,
            "encode_question",
            lambda ids, pixels, mask: self._question_states(ids, pixels, mask, interpolate),
            enc_token_id_in_use(self.config),
            interpolate,
            input_signature=[
                TOKEN_SIGNATURE,
                pixel_signature(self.config.vision_config, interpolate),
                TOKEN_SIGNATURE,
            ],
        )
        question_embeds = encode(input_ids, pixel_values, attention_mask)
        bos_ids = tf.fill((tf.shape(input_ids)[0], 1), self.config.text_config.bos_token_id)
        return self._decode(
            options, question_embeds, attention_mask, bos_ids, tf.ones_like(bos_ids)
        )

    def rank_answers(
        self,
        input_ids,
        pixel_values,
        candidate_ids,
        attention_mask=None,
        candidate_attention_mask=None,
        k=128,
        label_smoothing=0.0,
        interpolate_pos_encoding=False,
    ):
        """Ranks a fixed list of candidate answers for each question, as BLIP's rank_answer.

        The probability of each candidate's first answer token selects k candidates per question;
        they rank by log-likelihood: the sum of log p(token | image, question, previous tokens)
        over the answer's tokens after bos, its closing [SEP] included.

        Args:
            input_ids, attention_mask, pixel_values, interpolate_pos_encoding: as for generate.
            candidate_ids: (C, A) "[CLS] answer [SEP]" tokens, right-padded; [CLS] becomes bos.
            candidate_attention_mask: (C, A); None takes the non-pad tokens.
            k: how many candidates to score per question (at most C).
            label_smoothing: > 0 scores by minus the label-smoothed cross-entropy summed the same
                way (the original scored with its training loss, smoothing 0.1).

        Returns:
            (indices, scores), (B, k) each, best first: int32 candidate indices, float32 scores.

        Raises:
            ValueError: for candidates of fewer than two tokens or a k that is no positive int.
        """
        candidate_ids = tf.convert_to_tensor(candidate_ids)
        check_token_ids(candidate_ids, "candidate_ids")
        num_candidates, answer_length = candidate_ids.shape
        if num_candidates == 0 or answer_length is None or answer_length < 2:
            raise ValueError(
                "candidate_ids must hold at least one candidate of at least two tokens "
                f"([CLS] or [DEC], then the answer), got shape {candidate_ids.shape}."
            )
        k = min(positive_int("k", k), num_candidates)
        text_config = self.config.text_config
        if candidate_attention_mask is None:
            candidate_attention_mask = candidate_ids != text_config.pad_token_id
        candidate_ids, candidate_mask = int32_ids_and_mask(candidate_ids, candidate_attention_mask)
        candidate_ids = replace_first_token(candidate_ids, text_config.bos_token_id)
        input_ids, attention_mask = int32_ids_and_mask(input_ids, attention_mask)
        question_states = self._question_states(
            input_ids, pixel_values, attention_mask, interpolate_pos_encoding
        )
        batch_size = tf.shape(question_states)[0]
        bos_ids = tf.fill((batch_size, 1), text_config.bos_token_id)
        first_logits = self.text_decoder(
            input_ids=bos_ids,
            encoder_hidden_states=question_states,
            encoder_attention_mask=attention_mask,
            use_cache=False,
        ).logits[:, 0, :]
        first_token_probs = tf.nn.softmax(tf.cast(first_logits, tf.float32), axis=-1)
        candidate_probs = tf.gather(first_token_probs, candidate_ids[:, 1], axis=1)
        _, top_indices = tf.math.top_k(candidate_probs, k=k)

        # One row per (question, selected candidate), a question's k candidates adjacent.
        flat_indices = tf.reshape(top_indices, [-1])
        answer_ids = tf.gather(candidate_ids, flat_indices)
        answer_mask = tf.gather(candidate_mask, flat_indices)
        answer_logits = self.text_decoder(
            input_ids=answer_ids,
            attention_mask=answer_mask,
            encoder_hidden_states=tf.repeat(question_states, k, axis=0),
            encoder_attention_mask=tf.repeat(attention_mask, k, axis=0),
            use_cache=False,
        ).logits
        labels = tf.where(answer_mask == 1, answer_ids, IGNORE_INDEX)
        scores = -causal_lm_loss(answer_logits, labels, label_smoothing, reduction="none")
        scores = tf.reshape(scores, (batch_size, k))
        order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
        return tf.gather(top_indices, order, batch_dims=1), tf.gather(scores, order, batch_dims=1)


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipForImageTextRetrieval(_BlipTaskModel):
    """Image-text matching (ITM head, (B, 2) logits) or contrastive similarity (B, B).

    Its methods embed and score for the CLI, the export, tfblip.scoring and tfblip.retrieval.

    Args:
        config: the model's BlipConfig.
        objective: what a call without `use_itm_head` computes and fit() trains: "itm" (match
            logits; labels 1 = match) or "itc" (contrastive similarities). May be set later;
            get_config() keeps it.
        **kwargs: Keras Model arguments (name, dtype, ...).
    """

    def __init__(self, config, objective="itm", **kwargs):
        super().__init__(config, **kwargs)
        init = config.initializer_range
        self.text_encoder = TFBlipTextModel(
            config.text_config,
            add_pooling_layer=False,
            name="text_encoder",
            dtype=self.dtype_policy,
        )
        self.vision_proj = dense(
            config.image_text_hidden_size, "vision_proj", init, self.dtype_policy
        )
        self.text_proj = dense(config.image_text_hidden_size, "text_proj", init, self.dtype_policy)
        self.itm_head = dense(2, "itm_head", init, self.dtype_policy)
        _check_objective(objective)
        self.objective = objective
        self.build()

    def get_config(self):
        return {**super().get_config(), "objective": self.objective}

    def build(self, input_shape=None):
        self.vision_proj.build((None, self.config.vision_config.hidden_size))
        self.text_proj.build((None, self.config.text_config.hidden_size))
        self.itm_head.build((None, self.config.text_config.hidden_size))

    def image_text_matching(self, image_embeds, input_ids, attention_mask=None, training=False):
        """ITM logits of each text with its image.

        Args:
            image_embeds: (B, S, D) vision states, one row per text.
            input_ids, attention_mask: (B, L) text tokens ("[CLS]" first, made "[ENC]" under the
                config's use_enc_token) and mask (None: all).
            training: whether the text encoder runs in training mode.

        Returns:
            ((B, 2) logits (no match, match), (B, L, H) image-grounded text states).
        """
        question_embeds = self._grounded_text_states(
            input_ids, attention_mask, image_embeds, training
        )
        return self.itm_head(question_embeds[:, 0, :]), question_embeds

    def get_image_features(self, pixel_values, interpolate_pos_encoding=False):
        """Contrastive (ITC) features of images.

        Args:
            pixel_values, interpolate_pos_encoding: (B, 3, H, W) images; True for another size.

        Returns:
            (B, E) float32, L2-normalized: image . text features is their cosine similarity.
        """
        return self.itc_image_features(self._image_states(pixel_values, interpolate_pos_encoding))

    def get_text_features(self, input_ids, attention_mask=None):
        """Contrastive (ITC) features of texts, from the text-only encoder's "[CLS]" state.

        Args:
            input_ids, attention_mask: (B, L) tokens as the processor gives them; mask None: all.

        Returns:
            (B, E) float32, L2-normalized.
        """
        return self._text_states_and_features(input_ids, attention_mask)[1]

    def itc_image_features(self, image_embeds):
        """Contrastive (ITC) features of images from (B, S, D) vision states `image_embeds`.

        Returns:
            (B, E) float32, L2-normalized: the projected class token.
        """
        return l2_normalize(self.vision_proj(image_embeds[:, 0, :]))

    itc_text_features = get_text_features  # the name that pairs with itc_image_features

    def _text_states_and_features(self, input_ids, attention_mask, training=False):
        states = self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, training=training
        ).last_hidden_state
        return states, l2_normalize(self.text_proj(states[:, 0, :]))

    def contrastive_features(self, image_embeds, input_ids, attention_mask=None, training=False):
        """Both towers' contrastive (ITC) features and the text-only encoder's states.

        Args:
            image_embeds: (B, S, D) vision states.
            input_ids, attention_mask, training: (B', L) texts, as for `image_text_matching`.

        Returns:
            (image features (B, E), text features (B', E), text states (B', L, H)).
        """
        states, text_features = self._text_states_and_features(input_ids, attention_mask, training)
        return self.itc_image_features(image_embeds), text_features, states

    def itm_probability(self, image_embeds, input_ids, attention_mask=None):
        """Probability that each text matches its image: softmax(ITM logits)[:, 1].

        Args:
            image_embeds, input_ids, attention_mask: as for `image_text_matching`.

        Returns:
            (B,) float32.
        """
        logits, _ = self.image_text_matching(image_embeds, input_ids, attention_mask)
        return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)[:, 1]

    def pair_scores(self, image_embeds, input_ids, attention_mask=None):
        """Both scores of (image, text) pairs.

        Args:
            image_embeds, input_ids, attention_mask: as for `image_text_matching`.

        Returns:
            (itm_probability (B,), itc_similarity (B,)) float32; the latter in [-1, 1].
        """
        image_features, text_features, _ = self.contrastive_features(
            image_embeds, input_ids, attention_mask
        )
        similarity = tf.reduce_sum(image_features * text_features, axis=-1)
        return self.itm_probability(image_embeds, input_ids, attention_mask), similarity

    def call(
        self,
        input_ids=None,
        pixel_values=None,
        use_itm_head=None,
        attention_mask=None,
        labels=None,
        interpolate_pos_encoding=False,
        output_attentions=False,
        output_hidden_states=False,
        training=False,
    ):
        """Scores texts against images with the ITM head or the contrastive similarities.

        Args:
            input_ids, attention_mask, pixel_values: (B, L) texts and (B, 3, H, W) images.
            use_itm_head: ITM logits (B, 2), or ITC similarities (B, B) when False; None follows
                `objective`.
            labels: (B,) 0/1 match labels, for the ITM cross-entropy loss.
            interpolate_pos_encoding, output_attentions, output_hidden_states, training: options.

        Returns:
            BlipImageTextMatchingModelOutput: `loss`, `itm_score`, the text states
            `question_embeds` and the vision tower's outputs.
        """
        if input_ids is None:
            raise ValueError("TFBlipForImageTextRetrieval needs input_ids (the text tokens).")
        if use_itm_head is None:
            _check_objective(self.objective)
            use_itm_head = self.objective == "itm"
        if labels is not None and not use_itm_head:
            raise ValueError("labels are ITM match labels; they need use_itm_head=True.")
        vision_outputs = self._vision(
            pixel_values,
            interpolate_pos_encoding,
            output_attentions,
            output_hidden_states,
            training,
        )
        image_embeds = vision_outputs.last_hidden_state
        if use_itm_head:
            score, question_embeds = self.image_text_matching(
                image_embeds, input_ids, attention_mask, training=training
            )
        else:
            image_feat, text_feat, question_embeds = self.contrastive_features(
                image_embeds, input_ids, attention_mask, training=training
            )
            score = tf.matmul(image_feat, text_feat, transpose_b=True)
        loss = None
        if labels is not None:
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=tf.cast(labels, tf.int32), logits=tf.cast(score, tf.float32)
                )
            )
        return BlipImageTextMatchingModelOutput(
            loss=loss,
            itm_score=score,
            question_embeds=question_embeds,
            **vision_fields(vision_outputs),
        )

    def default_loss(self, x, y_pred):
        if self.objective == "itm":
            return super().default_loss(x, y_pred)
        # Image-text contrastive loss over the similarities, sharpened with BLIP's initial
        # temperature (0.07): transformers' retrieval checkpoints carry no learned one.
        return image_text_contrastive_loss(y_pred["itm_score"] / ITC_TEMPERATURE)
