"""BLIP task models: features (TFBlipModel), captioning, VQA and image-text retrieval."""

from collections.abc import Mapping

import keras
import tensorflow as tf

from tfblip.configuration import DEFAULT_ENC_TOKEN_ID, BlipConfig
from tfblip.generation.decoding import generate
from tfblip.generation.options import GenerationOptions
from tfblip.generation.prompts import drop_last_token
from tfblip.modeling.common import ConfigSerializable, dense
from tfblip.modeling.decoder_step import DecoderStep
from tfblip.modeling.multi_worker_fit import MultiWorkerFitMixin
from tfblip.modeling.pretrained import PretrainedMixin
from tfblip.modeling.text import (
    IGNORE_INDEX,
    TFBlipTextLMHeadModel,
    TFBlipTextModel,
    causal_lm_loss,
    check_token_ids,
    checked_length,
    checked_token_ids,
)
from tfblip.modeling.vision import TFBlipVisionModel, check_image_size, check_pixel_values
from tfblip.outputs import (
    BlipForConditionalGenerationModelOutput,
    BlipImageTextMatchingModelOutput,
    BlipOutput,
    BlipTextVisionModelOutput,
)

# BLIP's initial contrastive temperature, for ITC fine-tuning of the retrieval model.
ITC_TEMPERATURE = 0.07


def l2_normalize(x):
    """x / ||x||, computed in float32 (PyTorch's F.normalize clamps the norm at 1e-12)."""
    x = tf.cast(x, tf.float32)
    norm = tf.maximum(tf.norm(x, axis=-1, keepdims=True), 1e-12)
    return x / norm


def contrastive_loss(logits):
    """Cross-entropy of each row against the matching (diagonal) column."""
    logits = tf.cast(logits, tf.float32)
    targets = tf.range(tf.shape(logits)[0])
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    )


def image_text_contrastive_loss(logits_per_text):
    return (
        contrastive_loss(logits_per_text) + contrastive_loss(tf.transpose(logits_per_text))
    ) / 2.0


def all_ones_mask(states):
    """Attention mask over every position of (B, T, D) states."""
    return tf.ones(tf.shape(states)[:2], dtype=tf.int32)


def enc_token_id_in_use(config):
    """The "[ENC]" id that ITM texts and VQA questions start with, or None when
    `config.use_enc_token` is off (they keep their "[CLS]", as in transformers)."""
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
    """`input_ids` with "[ENC]" as first token when `config.use_enc_token` is on, as the
    original BLIP's ITM and VQA encoders (input_ids[:, 0] = enc_token_id); else unchanged."""
    enc_token_id = enc_token_id_in_use(config)
    if enc_token_id is None:
        return input_ids
    input_ids = tf.convert_to_tensor(input_ids)
    first = tf.fill((tf.shape(input_ids)[0], 1), tf.cast(enc_token_id, input_ids.dtype))
    return tf.concat([first, input_ids[:, 1:]], axis=1)


def _check_objective(objective):
    if objective not in ("itm", "itc"):
        raise ValueError(f"objective must be 'itm' or 'itc', got {objective!r}.")


def graph_function(model, name, function, *variant):
    """`function` as a tf.function, traced once per model and variant, then reused.

    Stored outside Keras' attribute tracking, which would otherwise wrap the dict.
    """
    functions = model.__dict__.setdefault("_tfblip_graph_functions", {})
    key = (name, *variant)
    if key not in functions:
        functions[key] = tf.function(function)
    return functions[key]


class _BlipTaskModel(MultiWorkerFitMixin, PretrainedMixin, ConfigSerializable, keras.Model):
    """Shared constructor plumbing: a BlipConfig and a vision tower named `vision_model`."""

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

    # ------------------------------------------------------------------ training with fit()

    def default_loss(self, x, y_pred):
        """The loss fit() uses when the forward pass computed none."""
        raise ValueError(
            f"{type(self).__name__} computes its training loss from `labels` in the input dict "
            "(see tfblip.data for datasets that provide them); this batch has none."
        )

    def loss_count(self, x):
        """How many terms the model's mean loss averages over, for this replica's batch."""
        labels = tf.convert_to_tensor(x["labels"])
        return tf.reduce_sum(tf.cast(labels[:, 1:] != IGNORE_INDEX, tf.float32))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """fit()/evaluate() loss: the model's own (`labels` in the input dict), no compile loss.

        Under a tf.distribute strategy the mean is taken over the global batch (each replica
        divides its sum by the count over all replicas), so training on several devices gives
        the losses and updates of one device on the whole batch.
        """
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
    """A task model with generate(), and the decoding defaults it starts from.

    Args:
        config: the model's BlipConfig.
        generation_defaults: generate() options used when a call does not give them;
            from_pretrained reads them from the checkpoint's generation_config.json. Part of
            get_config(), so a .keras file keeps them.
        **kwargs: Keras Model arguments (name, dtype, ...).
    """

    def __init__(self, config, generation_defaults=None, **kwargs):
        super().__init__(config, **kwargs)
        generation_defaults = dict(generation_defaults or {})
        GenerationOptions.from_dicts(generation_defaults, {})  # unknown or invalid ones raise now
        self.generation_defaults = generation_defaults

    def get_config(self):
        return {**super().get_config(), "generation_defaults": dict(self.generation_defaults)}

    def _checked_generate_inputs(self, pixel_values, input_ids, interpolate_pos_encoding):
        """(pixel_values, input_ids) as tensors, or a ValueError naming the bad one.

        generate() runs the encoders in traced functions, where these errors would come out
        wrapped in a trace of TensorFlow internals: checking first keeps them plain.
        """
        pixel_values = tf.convert_to_tensor(pixel_values, tf.float32)
        vision_config = self.config.vision_config
        check_pixel_values(pixel_values, vision_config.num_channels)
        check_image_size(pixel_values, vision_config, interpolate_pos_encoding)
        if input_ids is not None:
            input_ids = tf.convert_to_tensor(input_ids)
            check_token_ids(input_ids)
            text_config = self.config.text_config
            checked_token_ids(input_ids, text_config)
            checked_length(input_ids, 0, text_config.max_position_embeddings, "input_ids")
        return pixel_values, input_ids


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipModel(_BlipTaskModel):
    """CLIP-style image/text feature model with a contrastive head."""

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
            input_ids: (B, L) int token ids.
            attention_mask: (B, L), 1 for tokens to attend to; None attends to all.
            position_ids: (B, L) positions; None counts from 0.

        Returns:
            (B, projection_dim): the projected pooled text output, not normalized (`call`
            normalizes it into `text_embeds`).
        """
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        )
        return self.text_projection(text_outputs.pooler_output)

    def get_image_features(self, pixel_values=None, interpolate_pos_encoding=False):
        """Image features, as transformers' BlipModel.get_image_features.

        Args:
            pixel_values: (B, 3, H, W) float pixel values, as the image processor gives.
            interpolate_pos_encoding: for images of another size than the model's.

        Returns:
            (B, projection_dim): the projected pooled vision output, not normalized (`call`
            normalizes it into `image_embeds`).
        """
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
        )
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
        # What both towers return and how they run.
        tower_options = {
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
            "training": training,
        }
        vision_outputs = self.vision_model(
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            **tower_options,
        )
        text_outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **tower_options,
        )
        image_embeds = l2_normalize(self.visual_projection(vision_outputs.pooler_output))
        text_embeds = l2_normalize(self.text_projection(text_outputs.pooler_output))
        logit_scale = tf.exp(tf.cast(self.logit_scale, tf.float32))
        logits_per_text = tf.matmul(text_embeds, image_embeds, transpose_b=True) * logit_scale
        logits_per_image = tf.transpose(logits_per_text)
        return BlipOutput(
            loss=image_text_contrastive_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )

    def default_loss(self, x, y_pred):
        # fit() on image-text pairs trains the contrastive objective (return_loss=True).
        return image_text_contrastive_loss(y_pred["logits_per_text"])

    def loss_count(self, x):
        return tf.cast(tf.shape(x["input_ids"])[0], tf.float32)


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipForConditionalGeneration(_GeneratingTaskModel):
    """Image captioning: the text decoder cross-attends to the image states."""

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
        if input_ids is None:
            raise ValueError(
                "TFBlipForConditionalGeneration needs input_ids (the caption or prompt tokens); "
                "use generate() to caption from the image alone."
            )
        vision_outputs = self.vision_model(
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            training=training,
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
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )

    def generate(
        self,
        pixel_values,
        input_ids=None,
        attention_mask=None,
        interpolate_pos_encoding=False,
        **options,
    ):
        """Captions images, optionally continuing a text prompt; int32 ids starting with bos.

        As transformers: the prompt's first token becomes bos ([DEC]) and its last token (the
        [SEP] a tokenizer appends) is dropped; decoding stops at sep_token_id. Options and
        defaults (from generation_config.json when the checkpoint has one) are transformers':
        max_length, max_new_tokens, min_length, min_new_tokens, num_beams, length_penalty,
        early_stopping, num_return_sequences, do_sample, temperature, top_k, top_p, seed,
        repetition_penalty, no_repeat_ngram_size, output_scores, return_dict_in_generate, and
        jit_compile (XLA). Rows with prompts of different lengths (right-padded, with their
        attention_mask) decode as they would alone.
        """
        options = GenerationOptions.from_dicts(self.generation_defaults, options)
        pixel_values, input_ids = self._checked_generate_inputs(
            pixel_values, input_ids, interpolate_pos_encoding
        )
        encode = graph_function(
            self,
            "encode_image",
            lambda pixels: (
                self.vision_model(
                    pixel_values=pixels, interpolate_pos_encoding=interpolate_pos_encoding
                ).last_hidden_state
            ),
            interpolate_pos_encoding,
        )
        image_embeds = encode(pixel_values)
        prompt_ids, prompt_mask = self.decoder_prompt(
            tf.shape(image_embeds)[0], input_ids, attention_mask
        )
        return generate(
            DecoderStep(self.text_decoder),
            image_embeds,
            all_ones_mask(image_embeds),
            prompt_ids,
            prompt_mask,
            options,
        )

    def unprompted_input_ids(self, batch_size):
        """The input captioning without a prompt starts from, as transformers: [bos, eos] per
        image, prepared by `decoder_prompt` like any prompt."""
        text_config = self.config.text_config
        return tf.tile([[text_config.bos_token_id, text_config.eos_token_id]], [batch_size, 1])

    def decoder_prompt(self, batch_size, input_ids=None, attention_mask=None):
        """(ids, mask) decoding starts from: the prompt with bos for its first token and
        without its last one, or bos alone. Graph ops only (the SavedModel export uses it)."""
        text_config = self.config.text_config
        if input_ids is None:
            input_ids = self.unprompted_input_ids(batch_size)
        input_ids = tf.cast(input_ids, tf.int32)
        if attention_mask is None:
            attention_mask = tf.ones_like(input_ids)
        input_ids = tf.concat(
            [tf.fill((tf.shape(input_ids)[0], 1), text_config.bos_token_id), input_ids[:, 1:]], 1
        )
        return drop_last_token(input_ids, attention_mask)


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipForQuestionAnswering(_GeneratingTaskModel):
    """VQA: the question is encoded with image cross-attention, the answer decoded from it."""

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
        vision_outputs = self.vision_model(
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            training=training,
        )
        image_embeds = vision_outputs.last_hidden_state
        question = self.text_encoder(
            input_ids=start_with_enc_token(input_ids, self.config),
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=all_ones_mask(image_embeds),
            training=training,
        )
        return vision_outputs, question.last_hidden_state

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
            attention_mask=attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            training=training,
        )
        if decoder_input_ids is None:
            # As transformers: answer labels already start with [DEC], so they are the inputs
            # too. Ignored (-100) positions are fed as padding, which PyTorch cannot embed.
            labels = tf.convert_to_tensor(labels)
            decoder_input_ids = tf.where(
                labels == IGNORE_INDEX,
                tf.cast(self.config.text_config.pad_token_id, labels.dtype),
                labels,
            )
        question_mask = attention_mask
        if question_mask is None:
            question_mask = all_ones_mask(question_embeds)
        answer_output = self.text_decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=question_mask,
            labels=labels,
            reduction="mean",
            training=training,
        )
        return BlipTextVisionModelOutput(
            loss=answer_output.loss,
            image_embeds=vision_outputs.last_hidden_state,
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            decoder_logits=answer_output.logits,
        )

    def generate(
        self,
        input_ids,
        pixel_values,
        attention_mask=None,
        interpolate_pos_encoding=False,
        **options,
    ):
        """Answers questions about images; int32 answer ids starting with bos.

        Takes the options of TFBlipForConditionalGeneration.generate. The answer decoder
        cross-attends to the question states under the question's attention mask, so padded
        questions in a batch answer as they would alone (transformers attends to the padding).
        """
        options = GenerationOptions.from_dicts(self.generation_defaults, options)
        pixel_values, input_ids = self._checked_generate_inputs(
            pixel_values, input_ids, interpolate_pos_encoding
        )
        input_ids = tf.cast(input_ids, tf.int32)
        if attention_mask is None:
            attention_mask = tf.ones_like(input_ids)
        encode = graph_function(
            self,
            "encode_question",
            lambda ids, pixels, mask: self.encode_question(
                ids, pixels, attention_mask=mask, interpolate_pos_encoding=interpolate_pos_encoding
            )[1],
            interpolate_pos_encoding,
            enc_token_id_in_use(self.config),
        )
        question_embeds = encode(input_ids, pixel_values, attention_mask)
        text_config = self.config.text_config
        bos_ids = tf.fill((tf.shape(input_ids)[0], 1), text_config.bos_token_id)
        return generate(
            DecoderStep(self.text_decoder),
            question_embeds,
            attention_mask,
            bos_ids,
            tf.ones_like(bos_ids),
            options,
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

        `candidate_ids` (C, A) are the C candidates as the tokenizer gives them ("[CLS] answer
        [SEP]", right-padded; `candidate_attention_mask` defaults to the non-pad tokens); their
        first token becomes bos ("[DEC]"). The decoder's probability of each candidate's first
        answer token after bos selects the k most likely candidates per question (k <= C);
        those are ranked by their log-likelihood: the sum over the answer's tokens after bos,
        its closing [SEP] included, of log p(token | image, question, previous tokens).
        With `label_smoothing` > 0 the score is minus the label-smoothed cross-entropy summed
        the same way; the original scored with its training loss, whose smoothing was 0.1.

        Returns (indices, scores), both (B, k) and best first: int32 indices into the
        candidates and their float32 scores.
        """
        candidate_ids = tf.convert_to_tensor(candidate_ids)
        check_token_ids(candidate_ids, "candidate_ids")
        num_candidates, answer_length = candidate_ids.shape
        if num_candidates == 0 or answer_length is None or answer_length < 2:
            raise ValueError(
                "candidate_ids must hold at least one candidate of at least two tokens "
                f"([CLS] or [DEC], then the answer), got shape {candidate_ids.shape}."
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}.")
        k = min(k, num_candidates)
        text_config = self.config.text_config
        candidate_ids = tf.cast(candidate_ids, tf.int32)
        if candidate_attention_mask is None:
            candidate_attention_mask = tf.cast(candidate_ids != text_config.pad_token_id, tf.int32)
        candidate_attention_mask = tf.cast(candidate_attention_mask, tf.int32)
        candidate_ids = tf.concat(
            [tf.fill((num_candidates, 1), text_config.bos_token_id), candidate_ids[:, 1:]], 1
        )
        input_ids = tf.cast(input_ids, tf.int32)
        if attention_mask is None:
            attention_mask = tf.ones_like(input_ids)
        attention_mask = tf.cast(attention_mask, tf.int32)
        _, question_states = self.encode_question(
            input_ids,
            pixel_values,
            attention_mask=attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding,
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
        answer_mask = tf.gather(candidate_attention_mask, flat_indices)
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
        return (
            tf.gather(top_indices, order, batch_dims=1),
            tf.gather(scores, order, batch_dims=1),
        )


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipForImageTextRetrieval(_BlipTaskModel):
    """Image-text matching (ITM head, (B, 2) logits) or contrastive similarity (B, B).

    Args:
        config: the model's BlipConfig.
        objective: what a call without `use_itm_head` computes, and so what fit() trains:
            "itm" (match logits; labels 1 = match, 0 = no match) or "itc" (the contrastive
            similarities). May be changed later (`model.objective = "itc"`); get_config()
            holds the current value, so a .keras file keeps it.
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

    # ------------------------------------------------------------------ features and scores
    # One API for everything that embeds or scores with this model (the CLI, the export,
    # tfblip.scoring and tfblip.retrieval): image features from pixels or from vision states,
    # text features, ITM logits / probabilities, and both scores of (image, text) pairs.

    def image_text_matching(self, image_embeds, input_ids, attention_mask=None, training=False):
        """ITM logits of each text with its image, and the text encoder's states.

        Args:
            image_embeds: (B, L, D) last hidden states of the vision model, one row per text.
            input_ids: (B, L') int token ids of the texts ("[CLS]" first; "[ENC]" is put in
                its place when the config's use_enc_token asks for it).
            attention_mask: (B, L'), or None to attend to every token.
            training: whether the text encoder runs in training mode (dropout).

        Returns:
            ((B, 2) logits (no match, match), (B, L', H) states of the image-grounded text
            encoder).
        """
        question_embeds = self.text_encoder(
            input_ids=start_with_enc_token(input_ids, self.config),
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=all_ones_mask(image_embeds),
            training=training,
        ).last_hidden_state
        return self.itm_head(question_embeds[:, 0, :]), question_embeds

    def get_image_features(self, pixel_values, interpolate_pos_encoding=False):
        """Contrastive (ITC) features of images, as `contrastive_features` computes them.

        Args:
            pixel_values: (B, 3, H, W) float pixel values, as the image processor gives.
            interpolate_pos_encoding: for images of another size than the model's.

        Returns:
            (B, image_text_hidden_size) float32, L2-normalized: a dot product of an image's and
            a text's features is their cosine similarity.
        """
        image_embeds = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
        ).last_hidden_state
        return self.itc_image_features(image_embeds)

    def get_text_features(self, input_ids, attention_mask=None):
        """Contrastive (ITC) features of texts, as `contrastive_features` computes them: the
        projected first ("[CLS]") state of the text-only encoder.

        Args:
            input_ids: (B, L) int token ids, "[CLS]" first, as the processor gives them.
            attention_mask: (B, L), 1 for tokens to attend to; None attends to all.

        Returns:
            (B, image_text_hidden_size) float32, L2-normalized.
        """
        return self._itc_text_features(self._text_only_states(input_ids, attention_mask))

    def itc_image_features(self, image_embeds):
        """Contrastive (ITC) features of images from their vision states, as
        `get_image_features` gives them from pixels.

        Args:
            image_embeds: (B, L, D) last hidden states of the vision model.

        Returns:
            (B, image_text_hidden_size) float32, L2-normalized: the projected class token.
        """
        return l2_normalize(self.vision_proj(image_embeds[:, 0, :]))

    def itc_text_features(self, input_ids, attention_mask=None):
        """The same as `get_text_features` (the name pairs it with `itc_image_features`)."""
        return self.get_text_features(input_ids, attention_mask)

    def _text_only_states(self, input_ids, attention_mask, training=False):
        return self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, training=training
        ).last_hidden_state

    def _itc_text_features(self, text_states):
        return l2_normalize(self.text_proj(text_states[:, 0, :]))

    def contrastive_features(self, image_embeds, input_ids, attention_mask=None, training=False):
        """Both towers' contrastive (ITC) features and the text encoder's states.

        Args:
            image_embeds: (B, L, D) last hidden states of the vision model.
            input_ids: (B', L') int token ids of the texts.
            attention_mask: (B', L'), or None to attend to every token.
            training: whether the text encoder runs in training mode (dropout).

        Returns:
            (image features (B, E), text features (B', E), text states (B', L', H)); the
            features L2-normalized, as `itc_image_features` and `get_text_features`.
        """
        text_states = self._text_only_states(input_ids, attention_mask, training)
        image_feat = self.itc_image_features(image_embeds)
        return image_feat, self._itc_text_features(text_states), text_states

    def itm_probability(self, image_embeds, input_ids, attention_mask=None):
        """Image-text matching probability of each text with its image.

        Args:
            image_embeds: (B, L, D) last hidden states of the vision model, one row per text.
            input_ids: (B, L') int token ids of the texts.
            attention_mask: (B, L'), or None to attend to every token.

        Returns:
            (B,) float32: softmax(ITM logits)[:, 1], the probability that the text matches.
        """
        logits, _ = self.image_text_matching(image_embeds, input_ids, attention_mask)
        return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)[:, 1]

    def pair_scores(self, image_embeds, input_ids, attention_mask=None):
        """Both scores of (image, text) pairs: ITM probability and ITC cosine similarity.

        Args:
            image_embeds, input_ids, attention_mask: the pairs, as for `itm_probability`.

        Returns:
            (itm_probability (B,), itc_similarity (B,)), both float32: see `itm_probability`;
            the dot product of each pair's ITC features, in [-1, 1].
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
        """`use_itm_head`: ITM logits (B, 2), or the ITC similarity matrix (B, B) when False;
        None follows `self.objective`. `labels` (B,) of 0/1 give the ITM cross-entropy loss."""
        if input_ids is None:
            raise ValueError("TFBlipForImageTextRetrieval needs input_ids (the text tokens).")
        if use_itm_head is None:
            _check_objective(self.objective)
            use_itm_head = self.objective == "itm"
        if labels is not None and not use_itm_head:
            raise ValueError("labels are ITM match labels; they need use_itm_head=True.")
        vision_outputs = self.vision_model(
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            training=training,
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
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            question_embeds=question_embeds,
        )

    def default_loss(self, x, y_pred):
        if self.objective == "itm":
            return super().default_loss(x, y_pred)
        # Image-text contrastive loss over the similarities, sharpened with BLIP's initial
        # temperature (0.07): transformers' retrieval checkpoints carry no learned one.
        return image_text_contrastive_loss(y_pred["itm_score"] / ITC_TEMPERATURE)

    def loss_count(self, x):
        return tf.cast(tf.shape(x["input_ids"])[0], tf.float32)
