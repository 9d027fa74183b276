"""Processor + model from one checkpoint directory, against transformers' processor + model."""

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from reference import assert_close, reference_model
from skimage import data
from test_processing import _build_vocab, _write_salesforce_dir

import tfblip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A captioning checkpoint with Salesforce-style tokenizer and preprocessor files."""
    directory = tmp_path_factory.mktemp("blip")
    vocab = _build_vocab()
    text = {"vocab_size": len(vocab) + 2, "bos_token_id": len(vocab), "sep_token_id": 102}
    reference = reference_model("BlipForConditionalGeneration", seed=30, text=text)
    reference.save_pretrained(directory)
    _write_salesforce_dir(directory, vocab, transformers.BlipImageProcessorPil(size=30))
    return directory, reference


def photos():
    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea())]


def test_captioning_pipeline_matches_transformers(checkpoint):
    directory, reference = checkpoint
    texts = ["an astronaut in front of a flag", "a cat"]

    processor = tfblip.BlipProcessor.from_pretrained(directory)
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(directory)
    inputs = processor(images=photos(), text=texts, padding=True, return_tensors="tf")
    assert inputs["pixel_values"].shape == (2, 3, 30, 30)
    caption_ids = inputs["input_ids"].numpy()
    caption_ids[:, 0] = processor.bos_token_id
    labels = np.where(inputs["attention_mask"].numpy() == 1, caption_ids, -100)
    outputs = model(
        pixel_values=inputs["pixel_values"],
        input_ids=caption_ids,
        attention_mask=inputs["attention_mask"],
        labels=labels,
    )

    reference_processor = transformers.BlipProcessor.from_pretrained(directory)
    expected_inputs = reference_processor(
        images=photos(), text=texts, padding=True, return_tensors="pt"
    )
    expected_ids = expected_inputs["input_ids"].clone()
    expected_ids[:, 0] = reference.config.text_config.bos_token_id
    assert np.array_equal(caption_ids, expected_ids.numpy())
    with torch.no_grad():
        expected = reference(
            pixel_values=expected_inputs["pixel_values"],
            input_ids=expected_ids,
            attention_mask=expected_inputs["attention_mask"],
            labels=torch.from_numpy(labels).long(),
        )
    assert_close(outputs.logits, expected.logits, name="logits")
    assert_close(outputs.loss, expected.loss, atol=1e-5, name="loss")


def test_processor_outputs_feed_every_task_model(checkpoint, tmp_path):
    directory, _ = checkpoint
    processor = tfblip.BlipProcessor.from_pretrained(directory)
    pair = processor(images=photos(), text=["a", "b c"], padding=True, return_tensors="tf")
    config = tfblip.BlipConfig.from_pretrained(directory)
    retrieval = tfblip.TFBlipForImageTextRetrieval(config)
    assert retrieval(**pair).itm_score.shape == (2, 2)
    features = tfblip.TFBlipModel(config)
    assert features(**pair, return_loss=True).logits_per_image.shape == (2, 2)
    processor.save_pretrained(tmp_path)
    again = tfblip.BlipProcessor.from_pretrained(tmp_path)(text=["a", "b c"], padding=True)
    assert again["input_ids"] == processor(text=["a", "b c"], padding=True)["input_ids"]


def test_caption_text_matches_transformers(checkpoint):
    directory, reference = checkpoint
    processor = tfblip.BlipProcessor.from_pretrained(directory)
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(directory)
    inputs = processor(images=photos(), text=["a photo of", "a"], padding=True, return_tensors="tf")
    ids = model.generate(
        inputs["pixel_values"],
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=6,
        num_beams=2,
    )
    captions = processor.batch_decode(ids, skip_special_tokens=True)

    reference_processor = transformers.BlipProcessor.from_pretrained(directory)
    expected = []
    for photo, text in zip(photos(), ["a photo of", "a"]):  # one by one: no padded prompts
        single = reference_processor(images=photo, text=text, return_tensors="pt")
        with torch.no_grad():
            out = reference.generate(**single, max_new_tokens=6, num_beams=2)
        expected += reference_processor.batch_decode(out, skip_special_tokens=True)
    assert captions == expected
