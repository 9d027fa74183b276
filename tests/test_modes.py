"""Every model runs eagerly, in tf.function, under XLA, and survives a .keras round trip."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import TEXT_CONFIG, VISION_CONFIG, pixel_values, text_inputs, tiny_config_kwargs

import tfblip


def randomized(model, seed=0):
    """Random weights large enough that a wrong variable would change the outputs."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.2, variable.shape).astype("float32"))
    return model


def blip_config():
    # Equal widths so one config serves VQA too.
    return tfblip.BlipConfig(**tiny_config_kwargs(vision={"hidden_size": 32}))


def model_and_inputs(name):
    pixels = tf.constant(pixel_values(batch_size=2))
    ids, mask = text_inputs(batch_size=2)
    ids, mask = tf.constant(ids, tf.int32), tf.constant(mask, tf.int32)
    image_states = tf.constant(np.random.default_rng(1).normal(size=(2, 11, 32)), tf.float32)
    text_config = tfblip.BlipTextConfig(**{**TEXT_CONFIG, "encoder_hidden_size": 32})
    if name == "vision":
        model = tfblip.TFBlipVisionModel(tfblip.BlipVisionConfig(**VISION_CONFIG))
        return model, {"pixel_values": pixels}
    if name == "text":
        model = tfblip.TFBlipTextModel(text_config)
        inputs = {"input_ids": ids, "attention_mask": mask, "encoder_hidden_states": image_states}
        return model, inputs
    if name == "text_lm":
        model = tfblip.TFBlipTextLMHeadModel(text_config)
        inputs = {"input_ids": ids, "encoder_hidden_states": image_states, "labels": ids}
        return model, inputs
    inputs = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
    if name == "features":
        return tfblip.TFBlipModel(blip_config()), {**inputs, "return_loss": True}
    if name == "caption":
        return tfblip.TFBlipForConditionalGeneration(blip_config()), {**inputs, "labels": ids}
    if name == "vqa":
        return tfblip.TFBlipForQuestionAnswering(blip_config()), {**inputs, "labels": ids}
    if name == "retrieval":
        return tfblip.TFBlipForImageTextRetrieval(blip_config()), inputs
    raise AssertionError(name)


MODELS = ["vision", "text", "text_lm", "features", "caption", "vqa", "retrieval"]


def flat_arrays(outputs):
    """Leaf tensors of a (nested) output, keyed by path."""
    return {
        "/".join(map(str, path)): np.asarray(leaf)
        for path, leaf in keras.tree.flatten_with_path(outputs)
    }


def assert_same_outputs(actual, expected, atol):
    actual, expected = flat_arrays(actual), flat_arrays(expected)
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=atol, err_msg=key)


@pytest.mark.parametrize("name", MODELS)
def test_graph_and_xla_match_eager(name):
    model, inputs = model_and_inputs(name)
    randomized(model)
    eager = model(**inputs)
    graph = tf.function(lambda kwargs: model(**kwargs))(inputs)
    xla = tf.function(lambda kwargs: model(**kwargs), jit_compile=True)(inputs)
    assert_same_outputs(graph, eager, atol=1e-5)
    assert_same_outputs(xla, eager, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_keras_file_round_trip(name, tmp_path):
    model, inputs = model_and_inputs(name)
    randomized(model, seed=1)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    assert restored.config == model.config
    assert_same_outputs(restored(**inputs), model(**inputs), atol=0)


def test_keras_file_keeps_generation_defaults(tmp_path):
    model = randomized(tfblip.TFBlipForConditionalGeneration(blip_config()), seed=2)
    model.generation_defaults = {"num_beams": 2, "max_new_tokens": 3}
    model.save_pretrained(tmp_path / "checkpoint")  # generation_config.json holds the defaults
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path / "checkpoint")
    pixels = pixel_values(batch_size=2)
    expected = model.generate(pixels)
    # The defaults matter: without them the captions differ.
    assert expected.shape != model.generate(pixels, num_beams=1, max_new_tokens=20).shape

    model.save(tmp_path / "caption.keras")
    restored = keras.saving.load_model(tmp_path / "caption.keras")
    assert restored.generation_defaults == {"num_beams": 2, "max_new_tokens": 3}
    np.testing.assert_array_equal(restored.generate(pixels), expected)
    with pytest.raises(TypeError, match="'beams'"):
        tfblip.TFBlipForConditionalGeneration(blip_config(), generation_defaults={"beams": 2})


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_keras_file_keeps_the_retrieval_objective(tmp_path):
    model = randomized(tfblip.TFBlipForImageTextRetrieval(blip_config()), seed=3)
    model.objective = "itc"
    model.save(tmp_path / "retrieval.keras")
    restored = keras.saving.load_model(tmp_path / "retrieval.keras")
    assert restored.objective == "itc"

    # fit() trains the contrastive objective: no labels needed, the same losses as before.
    ids, mask = text_inputs(batch_size=4)
    batch = {"pixel_values": pixel_values(batch_size=4), "input_ids": ids, "attention_mask": mask}
    data = tf.data.Dataset.from_tensor_slices(batch).batch(2)
    losses = []
    for trained in (model, restored):
        trained.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1))
        losses.append(trained.fit(data, epochs=2, verbose=0).history["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
    with pytest.raises(ValueError, match="objective must be 'itm' or 'itc'"):
        tfblip.TFBlipForImageTextRetrieval(blip_config(), objective="contrastive")


def test_graph_accepts_dynamic_batch_and_length():
    model, _ = model_and_inputs("caption")
    randomized(model)
    spec = {
        "pixel_values": tf.TensorSpec((None, 3, 30, 30), tf.float32),
        "input_ids": tf.TensorSpec((None, None), tf.int32),
    }
    function = tf.function(lambda kwargs: model(**kwargs).logits, input_signature=[spec])
    for batch, length in ((1, 3), (3, 6)):
        inputs = {
            "pixel_values": tf.constant(pixel_values(batch_size=batch)),
            "input_ids": tf.constant(text_inputs(batch_size=batch, length=length)[0], tf.int32),
        }
        np.testing.assert_allclose(function(inputs), model(**inputs).logits, atol=1e-5)


def test_mixed_bfloat16_policy_runs_close_to_float32():
    model, inputs = model_and_inputs("caption")
    randomized(model, seed=2)
    mixed = tfblip.TFBlipForConditionalGeneration(model.config, dtype="mixed_bfloat16")
    for source, target in zip(model.weights, mixed.weights):
        target.assign(source)
    full, half = model(**inputs), mixed(**inputs)
    assert mixed.weights[0].dtype == "float32"  # variables stay float32
    assert half.logits.dtype == tf.bfloat16
    assert half.loss.dtype == tf.float32  # the loss is computed in float32
    np.testing.assert_allclose(float(half.loss), float(full.loss), rtol=2e-2)
