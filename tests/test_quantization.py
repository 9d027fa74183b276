"""Weight-only int8 (`quantize="int8"`) against transformers running the same rounded weights.

The reference is transformers' PyTorch BLIP whose Linear weights and word embeddings were
rounded the way int8 stores them (one AbsMax scale per output channel, per table row), computed
here in numpy: tfblip's int8 model must give its logits and tokens. A guard checks that the
rounding changed the logits, so the comparison cannot pass with float weights.
"""

import copy

import keras
import numpy as np
import pytest
import torch
from reference import pixel_values, text_inputs, to_torch
from test_generation import Pair, questions

import tfblip
from tfblip.cli.parser import QUANTIZE_CHOICES
from tfblip.modeling.quantization import QUANTIZATION_MODES


def rounded_like_int8(reference):
    """A copy of the transformers model with every Linear weight and word-embedding table
    replaced by its int8 rounding: per row of the PyTorch (out, in) weight, q = round(w *
    127 / absmax) clipped to +-127, then q / that scale (Keras' AbsMaxQuantizer)."""
    rounded = copy.deepcopy(reference)
    with torch.no_grad():
        for name, module in rounded.named_modules():
            is_table = isinstance(module, torch.nn.Embedding) and name.endswith("word_embeddings")
            if isinstance(module, torch.nn.Linear) or is_table:
                weight = module.weight.numpy()
                scale = np.float32(127) / (np.abs(weight).max(axis=1, keepdims=True) + 1e-7)
                quantized = np.clip(np.round(weight * scale), -127, 127)
                module.weight.copy_(torch.from_numpy((quantized / scale).astype(np.float32)))
    return rounded


def quantized_pair(tmp_path_factory, class_name, tf_class, seed, **config):
    """test_generation's peaky Pair, its tfblip model loaded with quantize="int8" and its
    transformers model's rounded twin as `rounded`."""
    pair = Pair(tmp_path_factory, class_name, tf_class, seed, **config)
    pair.model = tf_class.from_pretrained(pair.directory, quantize="int8")
    pair.rounded = rounded_like_int8(pair.reference)
    return pair


@pytest.fixture(scope="module")
def caption(tmp_path_factory):
    return quantized_pair(
        tmp_path_factory, "BlipForConditionalGeneration", tfblip.TFBlipForConditionalGeneration, 2
    )


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    return quantized_pair(
        tmp_path_factory,
        "BlipForQuestionAnswering",
        tfblip.TFBlipForQuestionAnswering,
        9,
        vision={"hidden_size": 32},
    )


def test_every_dense_kernel_and_word_table_is_int8(caption):
    model = caption.model
    dense = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    assert dense and all(layer.quantization_mode == "int8" for layer in dense)
    assert all(layer._kernel.dtype == "int8" for layer in dense)
    assert model.text_decoder.bert.embeddings.word_embeddings.quantization_mode == "int8"
    assert model.quantization == "int8"


def test_caption_logits_match_transformers_with_rounded_weights(caption):
    pixels = pixel_values(batch_size=3, seed=caption.seed)
    ids, mask = text_inputs(batch_size=3, length=6, seed=caption.seed)
    logits = caption.model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        arguments = {
            "pixel_values": to_torch(pixels),
            "input_ids": to_torch(ids),
            "attention_mask": to_torch(mask),
        }
        expected = caption.rounded(**arguments).logits.numpy()
        unrounded = caption.reference(**arguments).logits.numpy()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits.numpy() / scale, expected / scale, atol=2e-5)
    # The rounding matters: these are not the float model's logits.
    assert np.abs(unrounded - expected).max() / scale > 1e-3


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}], ids=["greedy", "beam3"])
def test_caption_tokens_match_transformers_with_rounded_weights(caption, options):
    pixels = pixel_values(batch_size=4, seed=caption.seed)
    tokens = caption.model.generate(pixels, max_new_tokens=8, **options).numpy()
    with torch.no_grad():
        expected = caption.rounded.generate(
            pixel_values=to_torch(pixels), max_new_tokens=8, **options
        ).numpy()
    np.testing.assert_array_equal(tokens, expected)
    assert len({tuple(row) for row in tokens}) > 1  # captions depend on the image


def test_vqa_answers_match_transformers_with_rounded_weights(vqa):
    # Unpadded questions: transformers 5 lets answers attend to padded question positions.
    pixels = pixel_values(batch_size=3, seed=vqa.seed)
    ids = questions(3, 6, seed=vqa.seed)
    mask = np.ones_like(ids)
    tokens = vqa.model.generate(ids, pixels, attention_mask=mask, max_new_tokens=6).numpy()
    with torch.no_grad():
        expected = vqa.rounded.generate(
            input_ids=to_torch(ids),
            pixel_values=to_torch(pixels),
            attention_mask=to_torch(mask),
            max_new_tokens=6,
        ).numpy()
    np.testing.assert_array_equal(tokens, expected)
    assert len({tuple(row) for row in tokens}) > 1


def test_base_size_weights_take_a_quarter_of_float32():
    model = tfblip.TFBlipForConditionalGeneration(tfblip.BlipConfig())
    float_bytes = sum(np.prod(v.shape) * 4 for v in model.weights)
    model.quantize("int8")
    int8_bytes = sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights)
    assert int8_bytes / float_bytes < 0.3


def test_keras_file_keeps_the_int8_weights(caption, tmp_path):
    path = tmp_path / "int8.keras"
    caption.model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.quantization == "int8"
    pixels = pixel_values(batch_size=2, seed=caption.seed)
    np.testing.assert_array_equal(
        loaded.generate(pixels, max_new_tokens=6).numpy(),
        caption.model.generate(pixels, max_new_tokens=6).numpy(),
    )


def test_bad_requests_are_refused(caption, tmp_path):
    with pytest.raises(ValueError, match="Unknown quantization mode 'int4'"):
        tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path / "nowhere", quantize="int4")
    with pytest.raises(ValueError, match="already quantized"):
        caption.model.quantize("int8")
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(caption.directory)
    with pytest.raises(ValueError, match="fixed scheme"):
        model.quantize("int8", filters="vision")
    custom = keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
    with pytest.raises(ValueError, match="fixed scheme"):
        model.quantize(config=custom)
    with pytest.raises(ValueError, match="save the model before quantizing"):
        caption.model.save_pretrained(tmp_path / "out")
    assert model.quantization is None  # the refused calls left it as it was


def test_cli_choices_are_the_modes():
    assert QUANTIZE_CHOICES == QUANTIZATION_MODES
