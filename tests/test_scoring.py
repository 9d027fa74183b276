"""tfblip.scoring (VQA answer ranking, caption scoring) and the [ENC] option of the VQA model,
against the same computations done by hand with transformers' PyTorch BLIP."""

import numpy as np
import pytest
import torch
from reference import assert_close, to_torch
from test_retrieval import photos, reference_checkpoint

import tfblip
from tfblip.scoring import CaptionScore, RankedAnswer, rank_answers, score_captions

QUESTIONS = ["what is in the picture?", "is there a cat?", "what color is the sky?"]
# Distinct first tokens: the first-token probabilities that pick the top k do not tie.
CANDIDATES = ["yes", "no", "two", "a red car", "blue", "cat on the table", "dog", "in"]
CAPTIONS = ["a cat lying down", "an astronaut in front of a flag", "a cup of coffee"]


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vqa")
    # The answer decoder cross-attends to question states: equal text and vision widths.
    reference = reference_checkpoint(
        directory, "BlipForQuestionAnswering", seed=41, vision={"hidden_size": 32}
    )
    model = tfblip.TFBlipForQuestionAnswering.from_pretrained(directory)
    return directory, reference, model, tfblip.BlipProcessor.from_pretrained(directory)


@pytest.fixture(scope="module")
def captioning(tmp_path_factory):
    directory = tmp_path_factory.mktemp("caption")
    reference = reference_checkpoint(directory, "BlipForConditionalGeneration", seed=42)
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(directory)
    return directory, reference, model, tfblip.BlipProcessor.from_pretrained(directory)


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    directory = tmp_path_factory.mktemp("retrieval")
    reference = reference_checkpoint(directory, "BlipForImageTextRetrieval", seed=43)
    return reference, tfblip.TFBlipForImageTextRetrieval.from_pretrained(directory)


def pixels_of(processor, images):
    return processor(images=images, return_tensors="np")["pixel_values"]


# ------------------------------------------------------------------------------------------
# VQA answer ranking
# ------------------------------------------------------------------------------------------


def torch_rank_answers(reference, processor, images, k, label_smoothing):
    """The original rank_answer, written out with transformers' modules: (indices, scores).

    One question at a time, unpadded: transformers' decoder attends to a padded question's
    padding (the original and tfblip mask it), so only unpadded questions compare.
    """
    answers = processor(text=CANDIDATES, padding=True, return_tensors="np")
    answer_ids = to_torch(answers["input_ids"]).clone()
    answer_ids[:, 0] = processor.bos_token_id
    answer_mask = to_torch(answers["attention_mask"])
    loss = torch.nn.CrossEntropyLoss(reduction="none", label_smoothing=label_smoothing)
    pixels = to_torch(pixels_of(processor, images))
    indices, scores = [], []
    with torch.no_grad():
        for row, question in enumerate(QUESTIONS):
            question_ids = to_torch(processor(text=[question], return_tensors="np")["input_ids"])
            image_states = reference.vision_model(pixel_values=pixels[row : row + 1])
            states = reference.text_encoder(
                input_ids=question_ids, encoder_hidden_states=image_states.last_hidden_state
            ).last_hidden_state
            first_logits = reference.text_decoder(
                input_ids=torch.full((1, 1), processor.bos_token_id),
                encoder_hidden_states=states,
            ).logits[0, 0]
            first_probs = first_logits.softmax(-1)[answer_ids[:, 1]]
            top = first_probs.topk(k).indices
            ids, ids_mask = answer_ids[top], answer_mask[top]
            logits = reference.text_decoder(
                input_ids=ids,
                attention_mask=ids_mask,
                encoder_hidden_states=states.expand(k, -1, -1),
            ).logits
            targets = ids.masked_fill(ids_mask == 0, -100)
            token_losses = loss(
                logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].flatten()
            )
            row_scores = -token_losses.view(k, -1).sum(1)
            order = row_scores.argsort(descending=True)
            indices.append(top[order].numpy())
            scores.append(row_scores[order].numpy())
    return np.stack(indices), np.stack(scores)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_rank_answers_as_the_original_rank_answer(vqa, label_smoothing):
    _, reference, model, processor = vqa
    first_tokens = processor(text=CANDIDATES)["input_ids"]
    assert len({ids[1] for ids in first_tokens}) == len(CANDIDATES)
    images = photos()[:3]
    ranked = rank_answers(
        model,
        processor,
        images,
        QUESTIONS,
        CANDIDATES,
        k=5,
        label_smoothing=label_smoothing,
        batch_size=2,
    )
    indices, scores = torch_rank_answers(reference, processor, images, 5, label_smoothing)
    assert [[answer.answer for answer in row] for row in ranked] == [
        [CANDIDATES[i] for i in row] for row in indices
    ]
    assert_close([[answer.score for answer in row] for row in ranked], scores, name="scores")
    assert isinstance(ranked[0][0], RankedAnswer)


def test_rank_answers_scores_are_log_likelihoods(vqa):
    _, _, model, processor = vqa
    pixels = pixels_of(processor, photos()[:1])
    question = processor(text=QUESTIONS[:1], return_tensors="np")
    answers = processor(text=CANDIDATES, padding=True, return_tensors="np")
    indices, scores = model.rank_answers(
        question["input_ids"], pixels, answers["input_ids"], k=100
    )  # k above the number of candidates: all of them, and the default mask (non-pad tokens)
    assert indices.shape == scores.shape == (1, len(CANDIDATES))
    assert sorted(indices.numpy()[0]) == list(range(len(CANDIDATES)))
    # The same sum from the decoder's logits: log p of each answer token after [DEC].
    ids = answers["input_ids"].copy()
    ids[:, 0] = processor.bos_token_id
    _, question_states = model.encode_question(question["input_ids"], pixels)
    logits = model.text_decoder(
        input_ids=ids,
        attention_mask=answers["attention_mask"],
        encoder_hidden_states=np.repeat(question_states.numpy(), len(CANDIDATES), axis=0),
    ).logits.numpy()
    log_probs = logits[:, :-1] - np.log(np.exp(logits[:, :-1]).sum(-1, keepdims=True))
    token_log_probs = np.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
    expected = (token_log_probs * answers["attention_mask"][:, 1:]).sum(1)
    assert_close(scores.numpy()[0], expected[indices.numpy()[0]], name="log-likelihoods")
    assert np.all(np.diff(scores.numpy()[0]) <= 0)


def test_shared_image_for_several_questions(vqa):
    _, _, model, processor = vqa
    image = photos()[0]
    shared = rank_answers(model, processor, image, QUESTIONS, CANDIDATES, k=3)
    repeated = rank_answers(model, processor, [image] * 3, QUESTIONS, CANDIDATES, k=3)
    assert [[a.answer for a in row] for row in shared] == [
        [a.answer for a in row] for row in repeated
    ]
    assert_close(
        [[a.score for a in row] for row in shared],
        [[a.score for a in row] for row in repeated],
        atol=1e-5,
    )


def test_enc_token_question_encoding_matches_transformers_with_enc_first(vqa):
    directory, reference, model, processor = vqa
    config = tfblip.BlipConfig.from_pretrained(directory)
    config.text_config.enc_token_id = processor.enc_token_id
    config.use_enc_token = True
    enc_model = tfblip.TFBlipForQuestionAnswering.from_pretrained(directory, config=config)
    pixels = pixels_of(processor, photos()[:3])
    question = processor(text=QUESTIONS, padding=True, return_tensors="np")
    ids, mask = question["input_ids"], question["attention_mask"]
    _, with_cls = model.encode_question(ids, pixels, attention_mask=mask)
    _, with_enc = enc_model.encode_question(ids, pixels, attention_mask=mask)
    assert np.max(np.abs(with_cls.numpy() - with_enc.numpy())) > 0.1
    enc_ids = ids.copy()
    enc_ids[:, 0] = processor.enc_token_id
    with torch.no_grad():
        image_states = reference.vision_model(pixel_values=to_torch(pixels)).last_hidden_state
        expected = reference.text_encoder(
            input_ids=to_torch(enc_ids),
            attention_mask=to_torch(mask),
            encoder_hidden_states=image_states,
        ).last_hidden_state
    assert_close(with_enc, expected, name="question states with [ENC]")

    # generate() traces the question encoder once per setting of the option.
    def first_step_scores(tf_model):
        out = tf_model.generate(
            ids, pixels, attention_mask=mask, max_new_tokens=2,
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
        return np.asarray(out.scores[0])

    plain = first_step_scores(enc_model.__class__.from_pretrained(directory))
    enc = first_step_scores(enc_model)
    toggled = tfblip.TFBlipForQuestionAnswering.from_pretrained(directory)
    assert_close(first_step_scores(toggled), plain, atol=1e-5, name="off")
    toggled.config.text_config.enc_token_id = processor.enc_token_id
    toggled.config.use_enc_token = True
    assert_close(first_step_scores(toggled), enc, atol=1e-5, name="switched on")
    assert np.max(np.abs(plain - enc)) > 1e-3


def test_rank_answers_errors(vqa, captioning):
    _, _, model, processor = vqa
    image = photos()[0]
    with pytest.raises(TypeError, match="TFBlipForQuestionAnswering"):
        rank_answers(captioning[2], processor, image, QUESTIONS, CANDIDATES)
    with pytest.raises(TypeError, match="candidates must be"):
        rank_answers(model, processor, image, QUESTIONS, [])
    with pytest.raises(ValueError, match="k must be a positive int"):
        rank_answers(model, processor, image, QUESTIONS, CANDIDATES, k=0)
    with pytest.raises(ValueError, match="2 images for 3 texts"):
        rank_answers(model, processor, [image, image], QUESTIONS, CANDIDATES)
    with pytest.raises(ValueError, match="at least two tokens"):
        model.rank_answers(np.ones((1, 4), np.int32), pixels_of(processor, [image]), [[1], [2]])
    with pytest.raises(ValueError, match="integer token ids"):
        model.rank_answers(np.ones((1, 4), np.int32), pixels_of(processor, [image]), [[1.0, 2.0]])


# ------------------------------------------------------------------------------------------
# Caption scoring
# ------------------------------------------------------------------------------------------


def torch_caption_log_likelihoods(reference, processor, images, texts, prompt=""):
    """(sums, counts): log p of each token after [DEC], the prompt's tokens left out."""
    tokens = processor(text=[prompt + t for t in texts], padding=True, return_tensors="np")
    ids = tokens["input_ids"].copy()
    ids[:, 0] = processor.bos_token_id
    pixels = pixels_of(processor, images)
    if len(pixels) == 1:
        pixels = np.repeat(pixels, len(texts), axis=0)
    with torch.no_grad():
        logits = reference(
            pixel_values=to_torch(pixels),
            input_ids=to_torch(ids),
            attention_mask=to_torch(tokens["attention_mask"]),
        ).logits
    log_probs = logits[:, :-1].log_softmax(-1)
    token_log_probs = log_probs.gather(-1, to_torch(ids[:, 1:, None])).squeeze(-1).numpy()
    counted = tokens["attention_mask"][:, 1:].copy()
    prompt_length = len(processor(text=prompt)["input_ids"]) - 1 if prompt else 1
    counted[:, : prompt_length - 1] = 0
    return (token_log_probs * counted).sum(1), counted.sum(1)


@pytest.mark.parametrize("shared_image", [True, False])
def test_caption_log_likelihoods(captioning, shared_image):
    _, reference, model, processor = captioning
    images = photos()[:1] if shared_image else photos()[1:2] + photos()[:1] + photos()[2:3]
    scores = score_captions(model, processor, images, CAPTIONS, batch_size=2)
    sums, counts = torch_caption_log_likelihoods(reference, processor, images, CAPTIONS)
    assert [score.text for score in scores] == CAPTIONS
    assert [score.num_tokens for score in scores] == list(counts)
    assert_close([score.log_likelihood for score in scores], sums, name="log-likelihoods")
    assert_close(
        [score.mean_log_likelihood for score in scores], sums / counts, name="mean log-likelihoods"
    )
    assert all(score.itm_probability is None for score in scores)


def test_caption_log_likelihoods_after_a_prompt(captioning):
    _, reference, model, processor = captioning
    prompt = "a picture of "
    scores = score_captions(model, processor, photos()[1], CAPTIONS, prompt=prompt)
    sums, counts = torch_caption_log_likelihoods(
        reference, processor, photos()[1:2], CAPTIONS, prompt
    )
    caption_tokens = [len(ids) - 2 for ids in processor(text=CAPTIONS)["input_ids"]]
    assert list(counts) == [n + 1 for n in caption_tokens]  # the caption's tokens and [SEP]
    assert [score.num_tokens for score in scores] == list(counts)
    assert_close([score.log_likelihood for score in scores], sums, name="log-likelihoods")


def test_itm_probabilities_of_captions(captioning, retrieval):
    _, _, model, processor = captioning
    reference, retrieval_model = retrieval
    images = photos()[:3]
    scores = score_captions(model, processor, images, CAPTIONS, retrieval_model=retrieval_model)
    tokens = processor(text=CAPTIONS, padding=True, return_tensors="np")
    with torch.no_grad():
        logits = reference(
            input_ids=to_torch(tokens["input_ids"]),
            pixel_values=to_torch(pixels_of(processor, images)),
            attention_mask=to_torch(tokens["attention_mask"]),
        ).itm_score
    expected = logits.softmax(-1)[:, 1]
    assert_close([score.itm_probability for score in scores], expected, name="ITM probabilities")
    assert isinstance(scores[0], CaptionScore)


def test_score_captions_errors(captioning, retrieval):
    _, _, model, processor = captioning
    image = photos()[0]
    with pytest.raises(TypeError, match="TFBlipForConditionalGeneration"):
        score_captions(retrieval[1], processor, image, CAPTIONS)
    with pytest.raises(TypeError, match="retrieval_model must be"):
        score_captions(model, processor, image, CAPTIONS, retrieval_model=model)
    with pytest.raises(ValueError, match="2 images for 3 texts"):
        score_captions(model, processor, [image, image], CAPTIONS)
    with pytest.raises(ValueError, match="word boundary"):
        score_captions(model, processor, image, ["f a cat"], prompt="a picture o")
    with pytest.raises(ValueError, match="reads at most 64"):
        score_captions(model, processor, image, ["a cat " * 40])
    with pytest.raises(TypeError, match="texts must be"):
        score_captions(model, processor, image, [1, 2])
    with pytest.raises(ValueError, match="prepared pixel values"):
        score_captions(model, processor, np.zeros((1, 30, 30, 3), np.uint8), CAPTIONS)
