"""Scoring with BLIP: rank candidate answers to visual questions, score captions of images.

* :func:`rank_answers` answers a question by ranking a given list of candidate answers, as the
  original BLIP's VQA evaluation (``rank_answer`` in its blip_vqa.py); see
  :meth:`tfblip.modeling.blip.TFBlipForQuestionAnswering.rank_answers` for the formula.
* :func:`score_captions` gives each caption's log-likelihood under the captioning decoder and,
  with a retrieval model, its image-text matching probability, to rank or filter captions.

Images are file paths, PIL images or arrays (prepared by the processor), one per question or
caption, or one image for all of them; a 4-D float array (N, C, H, W) is taken as pixel values
already prepared.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfblip.arguments import positive_int, text_list
from tfblip.modeling.blip import (
    TFBlipForConditionalGeneration,
    TFBlipForImageTextRetrieval,
    TFBlipForQuestionAnswering,
)
from tfblip.modeling.text import IGNORE_INDEX, causal_lm_loss

__all__ = ["CaptionScore", "RankedAnswer", "rank_answers", "score_captions"]

# Question length of the original BLIP VQA (blip_vqa.py truncates questions to 35 tokens).
DEFAULT_MAX_QUESTION_LENGTH = 35


class RankedAnswer(NamedTuple):
    """A candidate answer and its score: the log-likelihood of its tokens ([SEP] included)
    given the image and question (see TFBlipForQuestionAnswering.rank_answers)."""

    answer: str
    score: float


class CaptionScore(NamedTuple):
    """How well a caption fits its image.

    log_likelihood: sum over the caption's tokens after bos ([DEC]), its closing [SEP]
        included and a prompt's tokens excluded, of log p(token | image, previous tokens).
    mean_log_likelihood: log_likelihood / num_tokens, comparable across caption lengths.
    num_tokens: how many tokens log_likelihood sums over.
    itm_probability: the retrieval model's image-text matching probability
        (softmax(itm_logits)[1]), None without a retrieval model.
    """

    text: str
    log_likelihood: float
    mean_log_likelihood: float
    num_tokens: int
    itm_probability: float | None = None


def _check_model(model, cls, name="model"):
    if not isinstance(model, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {type(model).__name__}.")


class _Images:
    """The images of a scoring call, one per item or one shared by all items."""

    def __init__(self, images, count, processor, channels):
        if isinstance(images, (np.ndarray, tf.Tensor)) and len(images.shape) == 4:
            pixels = np.asarray(images)
            if not np.issubdtype(pixels.dtype, np.floating) or pixels.shape[1] != channels:
                raise ValueError(
                    f"A 4-D array is taken as prepared pixel values (N, {channels}, H, W) of "
                    f"floats; got {pixels.dtype} {pixels.shape}. Pass raw images as a list."
                )
            self.pixels, self.images = pixels, None
            given = len(pixels)
        else:
            self.images = list(images) if isinstance(images, (list, tuple)) else [images]
            self.pixels = None
            given = len(self.images)
            if getattr(processor, "image_processor", None) is None:
                raise ValueError("Preparing images needs a processor with an image processor.")
        if given not in (1, count):
            raise ValueError(
                f"Got {given} images for {count} texts: give one image per text, or one image."
            )
        self.shared = given == 1 and count != 1
        self.processor = processor

    def pixel_values(self, start, end):
        """Pixel values of items start..end-1: one row each, or one row when shared."""
        if self.shared:
            start, end = 0, 1
        if self.pixels is not None:
            return self.pixels[start:end]
        return self.processor(images=self.images[start:end], return_tensors="np")["pixel_values"]


def _tokenize(processor, texts, max_position_embeddings, truncate_to=None):
    """(input_ids, attention_mask) int32 arrays, padded to the longest text."""
    encoded = processor(
        text=texts,
        padding="longest",
        truncation=truncate_to is not None,
        max_length=truncate_to,
        return_tensors="np",
    )
    input_ids = encoded["input_ids"].astype(np.int32)
    if input_ids.shape[1] > max_position_embeddings:
        lengths = encoded["attention_mask"].sum(axis=1)
        longest = int(np.argmax(lengths))
        raise ValueError(
            f"Text {longest} is {int(lengths[longest])} tokens long; the model reads at most "
            f"{max_position_embeddings}: {texts[longest]!r:.80}"
        )
    return input_ids, encoded["attention_mask"].astype(np.int32)


# --------------------------------------------------------------------------------- VQA


def rank_answers(
    model,
    processor,
    images,
    questions,
    candidates,
    *,
    k=128,
    label_smoothing=0.0,
    batch_size=16,
    max_question_length=DEFAULT_MAX_QUESTION_LENGTH,
    interpolate_pos_encoding=False,
):
    """Answers each question by ranking `candidates`, as the original BLIP VQA evaluation.

    The first-token probability picks each question's k most likely candidates (k=128 in
    the original's VQA config), which are re-ranked by log-likelihood. Returns, per question,
    those candidates as RankedAnswers, best first: `[0].answer` is the answer.

    Args:
        model: a TFBlipForQuestionAnswering.
        processor: its BlipProcessor.
        images: one per question, or one for all questions.
        questions: a str or a list of str.
        candidates: the candidate answers (e.g. the answer list of a VQA dataset).
        label_smoothing: 0 scores the log-likelihood; 0.1 reproduces the original's scores
            exactly (they were its label-smoothed training loss).
        batch_size: questions per forward pass; each brings min(k, len(candidates))
            decoder rows.
        max_question_length: questions are truncated to this many tokens (35 in the
            original); None keeps them whole.
    """
    _check_model(model, TFBlipForQuestionAnswering)
    questions = text_list(questions, "questions")
    candidates = text_list(candidates, "candidates")
    batch_size = positive_int("batch_size", batch_size)
    text_config = model.config.text_config
    positions = text_config.max_position_embeddings
    candidate_ids, candidate_mask = _tokenize(processor, candidates, positions)
    question_ids, question_mask = _tokenize(processor, questions, positions, max_question_length)
    image_source = _Images(
        images, len(questions), processor, model.config.vision_config.num_channels
    )
    results = []
    for start in range(0, len(questions), batch_size):
        end = min(start + batch_size, len(questions))
        pixels = image_source.pixel_values(start, end)
        if image_source.shared:
            pixels = np.repeat(pixels, end - start, axis=0)
        indices, scores = model.rank_answers(
            question_ids[start:end],
            pixels,
            candidate_ids,
            attention_mask=question_mask[start:end],
            candidate_attention_mask=candidate_mask,
            k=k,
            label_smoothing=label_smoothing,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )
        for row_indices, row_scores in zip(indices.numpy(), scores.numpy()):
            results.append(
                [
                    RankedAnswer(candidates[index], float(score))
                    for index, score in zip(row_indices, row_scores)
                ]
            )
    return results


# --------------------------------------------------------------------------------- captions


def score_captions(
    model,
    processor,
    images,
    texts,
    *,
    prompt=None,
    retrieval_model=None,
    retrieval_processor=None,
    batch_size=32,
    interpolate_pos_encoding=False,
):
    """Scores captions of images: a CaptionScore per text, in order.

    Each text is scored against its image (one image per text), or all against one image.
    The decoder reads "[DEC] caption [SEP]" (the tokenizer's [CLS] replaced by bos, as in
    BLIP's training and generation); texts are never truncated.

    Args:
        model: a TFBlipForConditionalGeneration.
        processor: its BlipProcessor.
        prompt: text the captions continue (e.g. "a picture of ", BLIP's captioning prompt):
            scored as prompt + caption with the prompt's tokens left out of the score, as the
            original's training loss. It must end at a word boundary.
        retrieval_model: a TFBlipForImageTextRetrieval; adds each caption's ITM probability
            (the caption alone, without prompt).
        retrieval_processor: the retrieval model's processor, if not `processor`.
        batch_size: captions per forward pass.
    """
    _check_model(model, TFBlipForConditionalGeneration)
    if retrieval_model is not None:
        _check_model(retrieval_model, TFBlipForImageTextRetrieval, "retrieval_model")
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str or None, got {type(prompt).__name__}.")
    texts = text_list(texts, "texts")
    batch_size = positive_int("batch_size", batch_size)
    text_config = model.config.text_config
    input_ids, attention_mask = _tokenize(
        processor,
        [(prompt or "") + text for text in texts],
        text_config.max_position_embeddings,
    )
    input_ids[:, 0] = text_config.bos_token_id
    labels = np.where(attention_mask == 1, input_ids, IGNORE_INDEX)
    if prompt:
        prompt_length = _prompt_length(processor, prompt, input_ids)
        labels[:, :prompt_length] = IGNORE_INDEX
    num_tokens = (labels[:, 1:] != IGNORE_INDEX).sum(axis=1)

    def log_likelihoods_of(states, start, end):
        logits = model.text_decoder(
            input_ids=input_ids[start:end],
            attention_mask=attention_mask[start:end],
            encoder_hidden_states=states,
            use_cache=False,
        ).logits
        return -causal_lm_loss(logits, labels[start:end], reduction="none")

    pairs = _PairBatches(model, processor, images, len(texts), batch_size, interpolate_pos_encoding)
    log_likelihoods = pairs.score(log_likelihoods_of)

    itm_probabilities = [None] * len(texts)
    if retrieval_model is not None:
        itm_probabilities = _itm_probabilities(
            retrieval_model,
            retrieval_processor or processor,
            images,
            texts,
            batch_size,
            interpolate_pos_encoding,
        )
    return [
        CaptionScore(
            text=text,
            log_likelihood=float(log_likelihood),
            mean_log_likelihood=float(log_likelihood) / int(count),
            num_tokens=int(count),
            itm_probability=probability,
        )
        for text, log_likelihood, count, probability in zip(
            texts, log_likelihoods, num_tokens, itm_probabilities
        )
    ]


def _prompt_length(processor, prompt, input_ids):
    """Tokens of "[CLS] prompt" (without [SEP]), checked to start every text's ids."""
    prompt_ids = processor(text=prompt)["input_ids"][:-1]
    prompt_length = len(prompt_ids)
    prompt_ids[0] = input_ids[0, 0]  # bos, as the texts'
    if input_ids.shape[1] < prompt_length or not np.all(
        input_ids[:, :prompt_length] == np.asarray(prompt_ids)
    ):
        raise ValueError(
            f"The prompt {prompt!r} does not tokenize the same at the start of every caption; "
            "end it at a word boundary (e.g. with a space)."
        )
    return prompt_length


class _PairBatches:
    """The (image, text) pairs of a scoring call, scored batch by batch.

    Args:
        model: the model whose vision tower encodes the images.
        processor: prepares the images (see _Images).
        images: one per pair, or one shared by all pairs.
        count: how many pairs.
        batch_size: pairs per forward pass.
        interpolate_pos_encoding: for images of another size than the model's.
    """

    def __init__(self, model, processor, images, count, batch_size, interpolate_pos_encoding):
        channels = model.config.vision_config.num_channels
        self._images = _Images(images, count, processor, channels)
        self._model = model
        self._count = count
        self._batch_size = batch_size
        self._interpolate_pos_encoding = interpolate_pos_encoding

    def _states(self, pixels):
        """The vision tower's last hidden states of prepared pixels."""
        return self._model.vision_model(
            pixel_values=tf.constant(pixels, tf.float32),
            interpolate_pos_encoding=self._interpolate_pos_encoding,
        ).last_hidden_state

    def score(self, score):
        """score(image states, start, end) of each batch of pairs start..end-1, concatenated
        as a float32 array. A shared image is encoded once and repeated for each batch."""
        shared_states = None
        if self._images.shared:
            shared_states = self._states(self._images.pixel_values(0, 1))
        results = []
        for start in range(0, self._count, self._batch_size):
            end = min(start + self._batch_size, self._count)
            if shared_states is not None:
                states = tf.repeat(shared_states, end - start, axis=0)
            else:
                states = self._states(self._images.pixel_values(start, end))
            results.append(np.asarray(score(states, start, end), np.float32))
        return np.concatenate(results)


def _itm_probabilities(model, processor, images, texts, batch_size, interpolate_pos_encoding):
    input_ids, attention_mask = _tokenize(
        processor, texts, model.config.text_config.max_position_embeddings
    )
    pairs = _PairBatches(model, processor, images, len(texts), batch_size, interpolate_pos_encoding)
    probabilities = pairs.score(
        lambda states, start, end: model.itm_probability(
            states, input_ids[start:end], attention_mask[start:end]
        )
    )
    return [float(p) for p in probabilities]
