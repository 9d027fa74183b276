"""Every model's outputs against transformers' PyTorch BLIP with the same random weights."""

import numpy as np
import pytest
import torch
from reference import (
    IMAGE_SIZE,
    assert_close,
    pixel_values,
    reference_model,
    reference_text_model,
    reference_vision_model,
    reference_vqa_decoder_logits,
    text_inputs,
    to_torch,
)

import tfblip


def load_pair(tmp_path_factory, reference, tf_class):
    """Saves the PyTorch model with transformers and loads it into `tf_class`."""
    directory = tmp_path_factory.mktemp(type(reference).__name__)
    reference.save_pretrained(directory)
    return tf_class.from_pretrained(directory)


@pytest.fixture(scope="module")
def vision_pair(tmp_path_factory):
    reference = reference_vision_model(seed=1)
    return reference, load_pair(tmp_path_factory, reference, tfblip.TFBlipVisionModel)


def test_vision_model_outputs(vision_pair):
    reference, model = vision_pair
    pixels = pixel_values(seed=1)
    with torch.no_grad():
        expected = reference(
            pixel_values=to_torch(pixels), output_hidden_states=True, output_attentions=True
        )
    outputs = model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    assert_close(outputs.last_hidden_state, expected.last_hidden_state, name="last_hidden_state")
    assert_close(outputs.pooler_output, expected.pooler_output, name="pooler_output")
    assert len(outputs.hidden_states) == len(expected.hidden_states)
    for index, (ours, theirs) in enumerate(zip(outputs.hidden_states, expected.hidden_states)):
        assert_close(ours, theirs, name=f"hidden_states[{index}]")
    assert len(outputs.attentions) == len(expected.attentions)
    for index, (ours, theirs) in enumerate(zip(outputs.attentions, expected.attentions)):
        assert_close(ours, theirs, name=f"attentions[{index}]")


@pytest.mark.parametrize("height,width", [(42, 42), (36, 48), (24, 24)])
def test_vision_interpolated_position_encoding(vision_pair, height, width):
    reference, model = vision_pair
    pixels = np.random.default_rng(2).normal(size=(2, 3, height, width)).astype(np.float32)
    with torch.no_grad():
        expected = reference(pixel_values=to_torch(pixels), interpolate_pos_encoding=True)
    outputs = model(pixel_values=pixels, interpolate_pos_encoding=True)
    assert_close(outputs.last_hidden_state, expected.last_hidden_state, name="last_hidden_state")
    assert_close(outputs.pooler_output, expected.pooler_output, name="pooler_output")


def test_vision_layer_norm_eps_follows_config(tmp_path_factory):
    # The original BLIP ViT used eps 1e-6; with std-0.2 weights the eps matters at 1e-4.
    reference = reference_vision_model(seed=3, layer_norm_eps=0.5)
    model = load_pair(tmp_path_factory, reference, tfblip.TFBlipVisionModel)
    pixels = pixel_values(seed=3)
    with torch.no_grad():
        expected = reference(pixel_values=to_torch(pixels))
    assert_close(model(pixel_values=pixels).last_hidden_state, expected.last_hidden_state)


@pytest.fixture(scope="module")
def text_pair(tmp_path_factory):
    reference = reference_text_model("BlipTextModel", seed=4)
    return reference, load_pair(tmp_path_factory, reference, tfblip.TFBlipTextModel)


def test_text_model_bidirectional_with_padding(text_pair):
    reference, model = text_pair
    input_ids, attention_mask = text_inputs(batch_size=3, seed=4)
    with torch.no_grad():
        expected = reference(
            input_ids=to_torch(input_ids),
            attention_mask=to_torch(attention_mask),
            output_hidden_states=True,
        )
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert_close(outputs.last_hidden_state, expected.last_hidden_state, name="last_hidden_state")
    assert_close(outputs.pooler_output, expected.pooler_output, name="pooler_output")
    for index, (ours, theirs) in enumerate(zip(outputs.hidden_states, expected.hidden_states)):
        assert_close(ours, theirs, name=f"hidden_states[{index}]")
    assert outputs.past_key_values is None  # an encoder keeps no cache


def test_text_model_cross_attention_and_causal_mask(text_pair):
    reference, model = text_pair
    input_ids, attention_mask = text_inputs(batch_size=2, seed=5)
    image_states = np.random.default_rng(5).normal(size=(2, 11, 24)).astype(np.float32)
    image_mask = np.ones((2, 11), dtype=np.int64)
    for is_decoder in (False, True):
        with torch.no_grad():
            expected = reference(
                input_ids=to_torch(input_ids),
                attention_mask=to_torch(attention_mask),
                encoder_hidden_states=to_torch(image_states),
                encoder_attention_mask=to_torch(image_mask),
                is_decoder=is_decoder,
            )
        outputs = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_states,
            encoder_attention_mask=image_mask,
            is_decoder=is_decoder,
        )
        assert_close(
            outputs.last_hidden_state, expected.last_hidden_state, name=f"decoder={is_decoder}"
        )


def test_cross_attention_mask_hides_masked_encoder_states(text_pair):
    # transformers 5 drops encoder_attention_mask inside cross-attention (4.x and the original
    # BLIP apply it). Masking encoder states must equal removing them, which the reference
    # computes on the trimmed states.
    reference, model = text_pair
    input_ids, attention_mask = text_inputs(batch_size=2, seed=16)
    image_states = np.random.default_rng(16).normal(size=(2, 11, 24)).astype(np.float32)
    image_mask = np.ones((2, 11), dtype=np.int64)
    image_mask[1, 6:] = 0
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_states,
        encoder_attention_mask=image_mask,
        is_decoder=True,
    )
    for row, valid in enumerate(image_mask.sum(axis=1)):
        with torch.no_grad():
            expected = reference(
                input_ids=to_torch(input_ids[row : row + 1]),
                attention_mask=to_torch(attention_mask[row : row + 1]),
                encoder_hidden_states=to_torch(image_states[row : row + 1, :valid]),
                is_decoder=True,
            )
        assert_close(
            outputs.last_hidden_state[row : row + 1], expected.last_hidden_state, name=f"row {row}"
        )


def test_text_decoder_cache_matches_full_forward(text_pair):
    _, model = text_pair
    input_ids, _ = text_inputs(batch_size=2, length=8, seed=6)
    image_states = np.random.default_rng(6).normal(size=(2, 11, 24)).astype(np.float32)
    full = model(input_ids=input_ids, encoder_hidden_states=image_states, is_decoder=True)
    prefix = model(
        input_ids=input_ids[:, :5],
        encoder_hidden_states=image_states,
        is_decoder=True,
        use_cache=True,
    )
    cache = prefix.past_key_values
    # Per layer: self key/value over the 5 prefix tokens, cross key/value over the 11 image states.
    assert [tuple(t.shape) for t in cache[0]] == [
        (2, 4, 5, 8),
        (2, 4, 5, 8),
        (2, 4, 11, 8),
        (2, 4, 11, 8),
    ]
    pieces = [prefix.last_hidden_state]
    for step in range(5, 8):
        # The cross-attention keys/values come from the cache: no image states passed again.
        out = model(
            input_ids=input_ids[:, step : step + 1],
            past_key_values=cache,
            is_decoder=True,
            use_cache=True,
        )
        cache = out.past_key_values
        # As transformers: the self-attention entries grow by the new token, the cross ones stay.
        assert [t.shape[2] for t in cache[0]] == [step + 1, step + 1, 11, 11]
        pieces.append(out.last_hidden_state)
    assert_close(np.concatenate(pieces, axis=1), full.last_hidden_state.numpy(), atol=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_text_lm_head_logits_and_loss(tmp_path_factory, label_smoothing):
    reference = reference_text_model("BlipTextLMHeadModel", seed=7, label_smoothing=label_smoothing)
    model = load_pair(tmp_path_factory, reference, tfblip.TFBlipTextLMHeadModel)
    input_ids, attention_mask = text_inputs(batch_size=3, seed=7)
    labels = np.where(attention_mask == 1, input_ids, -100)
    image_states = np.random.default_rng(7).normal(size=(3, 11, 24)).astype(np.float32)
    with torch.no_grad():
        expected = reference(
            input_ids=to_torch(input_ids),
            attention_mask=to_torch(attention_mask),
            encoder_hidden_states=to_torch(image_states),
            labels=to_torch(labels),
        )
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_states,
        labels=labels,
    )
    assert_close(outputs.logits, expected.logits, name="logits")
    assert_close(outputs.loss, expected.loss, atol=1e-5, name="loss")


@pytest.fixture(scope="module")
def feature_pair(tmp_path_factory):
    reference = reference_model("BlipModel", seed=8)
    return reference, load_pair(tmp_path_factory, reference, tfblip.TFBlipModel)


def test_blip_model_outputs_and_contrastive_loss(feature_pair):
    reference, model = feature_pair
    pixels = pixel_values(batch_size=3, seed=8)
    input_ids, attention_mask = text_inputs(batch_size=3, seed=8)
    with torch.no_grad():
        expected = reference(
            input_ids=to_torch(input_ids),
            pixel_values=to_torch(pixels),
            attention_mask=to_torch(attention_mask),
            return_loss=True,
        )
    outputs = model(
        input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask, return_loss=True
    )
    for field in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds", "loss"):
        assert_close(outputs[field], expected[field], name=field)
    assert_close(
        outputs.vision_model_output.pooler_output,
        expected.vision_model_output.pooler_output,
        name="vision pooler",
    )
    assert_close(
        outputs.text_model_output.pooler_output,
        expected.text_model_output.pooler_output,
        name="text pooler",
    )


def test_blip_model_feature_getters(feature_pair):
    reference, model = feature_pair
    pixels = pixel_values(batch_size=2, seed=9)
    input_ids, attention_mask = text_inputs(batch_size=2, seed=9)
    with torch.no_grad():
        text_expected = reference.get_text_features(
            input_ids=to_torch(input_ids), attention_mask=to_torch(attention_mask)
        ).pooler_output
        image_expected = reference.get_image_features(pixel_values=to_torch(pixels)).pooler_output
    text = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    assert_close(text, text_expected, name="text features")
    assert_close(
        model.get_image_features(pixel_values=pixels), image_expected, name="image features"
    )


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_captioning_loss_and_logits(tmp_path_factory, label_smoothing):
    reference = reference_model(
        "BlipForConditionalGeneration", seed=10, text={"label_smoothing": label_smoothing}
    )
    model = load_pair(tmp_path_factory, reference, tfblip.TFBlipForConditionalGeneration)
    pixels = pixel_values(batch_size=3, seed=10)
    input_ids, attention_mask = text_inputs(batch_size=3, seed=10)
    labels = np.where(attention_mask == 1, input_ids, -100)
    with torch.no_grad():
        expected = reference(
            pixel_values=to_torch(pixels),
            input_ids=to_torch(input_ids),
            attention_mask=to_torch(attention_mask),
            labels=to_torch(labels),
        )
    outputs = model(
        pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask, labels=labels
    )
    for field in ("logits", "image_embeds", "last_hidden_state"):
        assert_close(outputs[field], expected[field], name=field)
    assert_close(outputs.loss, expected.loss, atol=1e-5, name="loss")


@pytest.fixture(scope="module")
def vqa_pair(tmp_path_factory):
    # The answer decoder cross-attends to question states through weights sized for image
    # states, so VQA needs equal text and vision widths.
    reference = reference_model("BlipForQuestionAnswering", seed=11, vision={"hidden_size": 32})
    return reference, load_pair(tmp_path_factory, reference, tfblip.TFBlipForQuestionAnswering)


def vqa_inputs(seed):
    """Unpadded questions (transformers 5 ignores the question mask when decoding answers)."""
    pixels = pixel_values(batch_size=2, seed=seed)
    input_ids, _ = text_inputs(batch_size=2, seed=seed)
    question_mask = np.ones_like(input_ids)
    answers, answer_mask = text_inputs(batch_size=2, length=4, seed=seed + 1)
    answers[:, 0] = 97  # answers start with [DEC]
    return pixels, input_ids, question_mask, answers, answer_mask


def test_vqa_loss_with_labels(vqa_pair):
    reference, model = vqa_pair
    pixels, input_ids, question_mask, answers, _ = vqa_inputs(seed=11)
    with torch.no_grad():
        expected = reference(
            input_ids=to_torch(input_ids),
            pixel_values=to_torch(pixels),
            attention_mask=to_torch(question_mask),
            labels=to_torch(answers),
        )
    outputs = model(
        input_ids=input_ids, pixel_values=pixels, attention_mask=question_mask, labels=answers
    )
    assert_close(outputs.loss, expected.loss, atol=1e-5, name="loss")
    assert_close(outputs.image_embeds, expected.image_embeds, name="image_embeds")


def test_vqa_labels_with_ignored_positions(vqa_pair):
    # transformers cannot embed -100 labels; we feed them as padding and leave them out of
    # the loss, which the reference computes from its own encoder and decoder.
    reference, model = vqa_pair
    pixels, input_ids, question_mask, answers, answer_mask = vqa_inputs(seed=17)
    labels = np.where(answer_mask == 1, answers, -100)
    with torch.no_grad():
        image_states = reference.vision_model(pixel_values=to_torch(pixels)).last_hidden_state
        question = reference.text_encoder(
            input_ids=to_torch(input_ids), encoder_hidden_states=image_states
        ).last_hidden_state
        expected = reference.text_decoder(
            input_ids=to_torch(np.where(labels == -100, 0, labels)),
            encoder_hidden_states=question,
            labels=to_torch(labels),
        ).loss
    outputs = model(
        input_ids=input_ids, pixel_values=pixels, attention_mask=question_mask, labels=labels
    )
    assert_close(outputs.loss, expected, atol=1e-5, name="loss")


def test_vqa_decoder_logits_from_decoder_input_ids(vqa_pair):
    reference, model = vqa_pair
    pixels, input_ids, question_mask, answers, answer_mask = vqa_inputs(seed=13)
    expected = reference_vqa_decoder_logits(reference, pixels, input_ids, answers, answer_mask)
    outputs = model(
        input_ids=input_ids,
        pixel_values=pixels,
        attention_mask=question_mask,
        decoder_input_ids=answers,
        decoder_attention_mask=answer_mask,
    )
    assert outputs.loss is None
    assert_close(outputs.decoder_logits, expected, name="decoder_logits")


@pytest.fixture(scope="module")
def retrieval_pair(tmp_path_factory):
    reference = reference_model("BlipForImageTextRetrieval", seed=15)
    return reference, load_pair(tmp_path_factory, reference, tfblip.TFBlipForImageTextRetrieval)


@pytest.mark.parametrize("use_itm_head", [True, False])
def test_retrieval_scores(retrieval_pair, use_itm_head):
    reference, model = retrieval_pair
    pixels = pixel_values(batch_size=3, seed=15)
    input_ids, attention_mask = text_inputs(batch_size=3, seed=15)
    with torch.no_grad():
        expected = reference(
            input_ids=to_torch(input_ids),
            pixel_values=to_torch(pixels),
            attention_mask=to_torch(attention_mask),
            use_itm_head=use_itm_head,
        )
    outputs = model(
        input_ids=input_ids,
        pixel_values=pixels,
        attention_mask=attention_mask,
        use_itm_head=use_itm_head,
    )
    assert outputs.itm_score.shape == ((3, 2) if use_itm_head else (3, 3))
    assert_close(outputs.itm_score, expected.itm_score, name="itm_score")
    assert_close(outputs.question_embeds, expected.question_embeds, name="question_embeds")
    assert_close(outputs.last_hidden_state, expected.last_hidden_state, name="last_hidden_state")


def test_pixel_values_of_the_default_size_need_no_interpolation(vision_pair):
    _, model = vision_pair
    outputs = model(pixel_values=pixel_values(batch_size=1, size=IMAGE_SIZE))
    assert outputs.last_hidden_state.shape == (1, 26, 24)


def test_fixed_size_cache_matches_full_forward(text_pair):
    # Generation writes keys/values into buffers of the final length instead of growing them.
    _, model = text_pair
    input_ids, _ = text_inputs(batch_size=2, length=8, seed=18)
    attention_mask = np.ones((2, 10), np.int32)
    attention_mask[1, :2] = 0  # left padding, as generation lays out mixed prompt lengths
    positions = np.maximum(np.arange(10)[None] - (1 - attention_mask).sum(1, keepdims=True), 0)
    ids = np.concatenate([np.zeros((2, 2), np.int64), input_ids], axis=1)
    image_states = np.random.default_rng(18).normal(size=(2, 11, 24)).astype(np.float32)
    full = model(
        input_ids=ids,
        attention_mask=attention_mask,
        position_ids=positions,
        encoder_hidden_states=image_states,
        is_decoder=True,
    ).last_hidden_state.numpy()
    buffers = tuple(
        (np.zeros((2, 4, 10, 8), np.float32), np.zeros((2, 4, 10, 8), np.float32)) for _ in range(2)
    )
    prefix = model(
        input_ids=ids[:, :6],
        attention_mask=attention_mask,
        position_ids=positions[:, :6],
        encoder_hidden_states=image_states,
        past_key_values=buffers,
        cache_position=0,
        is_decoder=True,
        use_cache=True,
    )
    pieces, cache = [prefix.last_hidden_state.numpy()], prefix.past_key_values
    for step in range(6, 10):
        out = model(
            input_ids=ids[:, step : step + 1],
            attention_mask=attention_mask,
            position_ids=positions[:, step : step + 1],
            past_key_values=cache,
            cache_position=step,
            is_decoder=True,
            use_cache=True,
        )
        cache = out.past_key_values
        pieces.append(out.last_hidden_state.numpy())
    # Rows attend to real tokens only, so compare those (row 1's two pads are don't-cares).
    cached = np.concatenate(pieces, axis=1)
    assert_close(cached[0], full[0], atol=1e-5)
    assert_close(cached[1, 2:], full[1, 2:], atol=1e-5)
